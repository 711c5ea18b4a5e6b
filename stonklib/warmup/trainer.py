"""The warm-up loop: supervised LoRA fine-tuning on the targets of :mod:`stonklib.warmup.targets`.

One optimizer step: ``batch_size`` examples from a per-epoch seeded order, each with its targets (two
for the default coin, one face each); the chat-rendered prompts left-padded as the GRPO trainer pads
them, each target (plus the tokenizer's EOS, so the model learns to stop) right-padded after them. The
loss is the negative log-likelihood of the target tokens only (the prompt never enters it), summed
with the day-1 direction word weighing ``direction_weight`` and every other token 1, over the number of
target tokens (so the extra weight adds to the direction word's gradient without shrinking the rest).
With the coin and ``coin_balance: batch`` the direction word is not trained by its likelihood: its term
is, per example, ``-log(p(up) + p(down))`` (answer one of the two words) plus ``½·ō²``, where ``ō`` is the
batch's mean of ``log p(up) - log p(down)`` (the two faces' rows give both at the same position), both
weighed ``direction_weight`` (with ``coin_spread``, also a term that widens those log-odds to that many nats:
:func:`batch_balance_loss`). That pulls the batch's mean lean to zero and leaves each prompt its own,
so greedy answers split both ways instead of following one shared leftover offset. Every step logs
that mean and the spread of the log-odds (``direction/log_odds_mean``, ``direction/log_odds_std``) in
either mode. The loss is computed by the
GRPO update's own passes (:func:`stonklib.update.pick.pick_logprobs`: each prompt once for its targets,
the chunked LM head, no ``[B, T, vocab]`` tensor); AdamW on the LoRA weights with the run's LR schedule
and gradient clipping. Before the first step (``eval_at_start``),
every ``eval_steps`` and at the end, the policy answers the validation prompts greedily and the answers
are scored with the five-part reward (:mod:`stonklib.grpo.validation`).

Why this loop and not TRL's ``SFTTrainer`` or transformers' ``Trainer`` with a prompt-masking collator:
``Trainer`` writes ``checkpoint-N/`` in place, so a crash while saving leaves a checkpoint that its own
resume picks up and fails on, and it knows nothing of this project's logs. Here the warm-up keeps the
guarantees ``stonk train`` gives, with the same code: atomic checkpoints with optimizer, scheduler, RNG
and data position (:mod:`stonklib.grpo.checkpoint`), ``--resume`` at the same step that cuts the logs
back to the checkpoint (:mod:`stonklib.grpo.runlog`), the same per-step random seed
(:func:`stonklib.grpo.distributed.step_seed`), a progress bar and ``training.log``. The loop itself is
the textbook one and short. It runs in one process.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from stonklib.config import kernels_arg
from stonklib.data.records import Example
from stonklib.grpo import distributed as D
from stonklib.grpo.checkpoint import restore, resume_point, save_and_prune
from stonklib.grpo.runlog import RunLog
from stonklib.grpo.schedule import batch_indices, guarded_step, make_scheduler, steps_per_epoch
from stonklib.grpo.validation import val_scalars, validate
from stonklib.prompts import fit_prompt
from stonklib.rewards import score
from stonklib.sampling.rollout import encode_prompts
from stonklib.update.pick import pick_logprobs
from stonklib.warmup.targets import Target

#: Validation prompts per sampling call.
EVAL_BATCH = 16


def day1_log_probs(logp: torch.Tensor, word: torch.Tensor, examples: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Per example, ``log p(up)`` and ``log p(down)`` of the day-1 word, read from its two coin-face rows (up,
    then down: :func:`stonklib.warmup.targets.targets_for`); None unless the rows are such pairs.

    ``logp`` is ``[2·examples, C]`` (each target token's log-prob), ``word`` marks the day-1 word's tokens;
    a word of several tokens gets their sum.
    """
    if logp.shape[0] != 2 * examples:
        return None
    w = (logp * word).sum(1)
    return w[0::2], w[1::2]


def batch_balance_loss(up: torch.Tensor, down: torch.Tensor, weight: float, spread: float = 0.0) -> torch.Tensor:
    """``coin_balance: batch``'s day-1 term, summed over the examples, times ``weight``: for each example
    ``-log(p(up) + p(down))`` (answer one of the two words), plus ``½·ō²`` each, ``ō`` the batch's mean
    ``log p(up) - log p(down)``; with ``spread`` > 0 also ``½·(σ - spread)²`` each, ``σ`` the batch's standard
    deviation of those log-odds.

    The centring's gradient on one example's log-odds is the batch mean ``ō``, whatever that example's own
    lean: the shared offset goes, each prompt's difference from the others stays. The spread term pushes
    those differences apart (or together) until they are ``spread`` nats wide, in whichever direction each
    prompt already leans: it asks for answers that differ from prompt to prompt, never for any particular
    prompt's direction, so it stays label-free. (The faces' loss, ``prompt``, pulls every prompt's odds to
    even instead, so only a shared leftover offset decides its greedy answers.)
    """
    odds = up - down
    loss = -torch.logaddexp(up, down).sum() + 0.5 * len(up) * odds.mean() ** 2
    if spread > 0 and len(up) > 1:
        sigma = (odds.var(unbiased=False) + 1e-6).sqrt()
        loss = loss + 0.5 * len(up) * (sigma - spread) ** 2
    return weight * loss


class WarmupTrainer:
    """Supervised fine-tuning of ``policy``'s LoRA on (example, target) pairs; see the module docstring."""

    def __init__(self, cfg, policy, tokenizer, pairs: list[tuple[Example, list[Target]]], val: list[Example],
                 runlog: RunLog, sampler):
        if not pairs:
            raise ValueError("the warm-up has no example with targets to train on: raise max_train_samples, "
                             "or check that the justification's values exist in the data.")
        self.cfg, self.policy, self.tok, self.pairs, self.val_set = cfg, policy, tokenizer, pairs, val
        # Each prompt once for its targets (they share it): the GRPO update's shared-prefix pass, module path.
        self.logprobs = pick_logprobs(policy, shared_prefix=True, dense=False, kernels=kernels_arg(cfg))
        self.log, self.sampler = runlog, sampler
        self.device = next(p for p in policy.parameters()).device
        self.params = [p for p in policy.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.steps_per_epoch = steps_per_epoch(len(pairs), cfg.batch_size)
        self.total_steps = cfg.max_steps or cfg.epochs * self.steps_per_epoch
        self.scheduler = make_scheduler(cfg, self.optimizer, self.total_steps)
        self.step_num, self.skipped_updates = 0, 0
        self.last_validation: dict[str, float | None] | None = None
        self.eos = tokenizer.eos_token_id

    # ------------------------------------------------------------------ data
    def encode(self, examples: list[Example]) -> tuple[torch.Tensor, torch.Tensor]:
        texts = [fit_prompt(ex, self.tok, self.cfg.max_prompt_tokens, self.cfg.prompt_version).text for ex in examples]
        return encode_prompts(self.tok, texts, self.device)

    def tensors(self, pairs: list[tuple[Example, list[Target]]]) -> tuple[torch.Tensor, ...]:
        """``input_ids``, ``attention_mask`` (prompt + target), the target tokens' mask, their loss weights, the
        weights' normaliser (the same without the direction word's extra weight) and the day-1 direction
        word's tokens (1.0 there), each ``[N, C]``.

        One row per target, a prompt's targets in consecutive rows (so the shared-prefix pass runs it once).
        """
        examples = [ex for ex, ts in pairs for _ in ts]
        targets = [t for _, ts in pairs for t in ts]
        p_ids, p_mask = self.encode(examples)
        enc = self.tok([t.text for t in targets], add_special_tokens=False, return_offsets_mapping=True)
        C = max(len(ids) for ids in enc["input_ids"]) + 1
        c_ids = torch.full((len(targets), C), self.tok.pad_token_id, dtype=torch.long)
        c_mask = torch.zeros((len(targets), C), dtype=torch.long)
        weight = torch.zeros((len(targets), C), dtype=torch.float32)
        norm = torch.zeros((len(targets), C), dtype=torch.float32)
        word = torch.zeros((len(targets), C), dtype=torch.float32)
        by_batch = self.batch_balance
        for i, (ids, offsets, t) in enumerate(zip(enc["input_ids"], enc["offset_mapping"], targets, strict=True)):
            n = len(ids) + 1  # the target and EOS
            c_ids[i, :n] = torch.tensor([*ids, self.eos])
            c_mask[i, :n] = 1
            weight[i, :n] = t.weight  # a coin face's half: the two faces' shared tokens weigh 1 together
            norm[i, :n] = t.weight
            lo, hi = t.direction_span
            for j, (a, b) in enumerate(offsets):
                if a < hi and b > lo:  # the token(s) of the day-1 direction word
                    weight[i, j] = 0.0 if by_batch else t.weight * self.cfg.direction_weight
                    word[i, j] = 1.0
        c_ids, c_mask = c_ids.to(self.device), c_mask.to(self.device)
        return (torch.cat([p_ids, c_ids], 1), torch.cat([p_mask, c_mask], 1), c_mask, weight.to(self.device),
                norm.to(self.device), word.to(self.device))

    @property
    def batch_balance(self) -> bool:
        """Whether day 1's word is trained by :func:`batch_balance_loss` (the coin, ``coin_balance: batch``)."""
        return self.cfg.direction_source == "coin" and self.cfg.coin_balance == "batch"

    def batch(self, step: int) -> list[tuple[Example, list[Target]]]:
        return [self.pairs[i] for i in batch_indices(len(self.pairs), step, self.cfg.batch_size, self.cfg.seed)]

    # ------------------------------------------------------------------ one step
    def step(self, pairs: list[tuple[Example, list[Target]]]) -> dict[str, float]:
        """One optimizer step; the target tokens' weighted mean negative log-likelihood and the step's numbers."""
        cfg, n_mb = self.cfg, self.cfg.grad_accum_steps
        self.policy.train()
        per_mb = len(pairs) // n_mb  # whole examples (with all their targets) per micro-batch
        batches = [self.tensors(pairs[m * per_mb:(m + 1) * per_mb]) for m in range(n_mb)]
        denominator = sum(float(b[4].sum()) for b in batches)  # target tokens, each example's once
        total, tokens, odds = 0.0, 0.0, []
        for ids, attn, cmask, weight, _, word in batches:  # one normaliser for the whole step, whatever the split
            logp = self.logprobs(self.policy, ids, attn, cmask.shape[1])
            loss = -(logp * weight).sum()
            faces = day1_log_probs(logp, word, per_mb)
            if faces is not None:
                odds.append((faces[0] - faces[1]).detach())
                if self.batch_balance:
                    loss = loss + batch_balance_loss(*faces, cfg.direction_weight, cfg.coin_spread)
            loss = loss / denominator
            loss.backward()
            total += float(loss.detach())
            tokens += float(cmask.sum())
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, cfg.max_grad_norm))
        self.skipped_updates += guarded_step(self.optimizer, self.scheduler, total, grad_norm)
        stats = {"loss": total, "grad_norm": grad_norm, "target_tokens": tokens, "skipped_updates": self.skipped_updates}
        if odds:
            o = torch.cat(odds).float()
            stats |= {"direction/log_odds_mean": float(o.mean()),
                      "direction/log_odds_std": float(o.std()) if len(o) > 1 else 0.0}
        return stats

    # ------------------------------------------------------------------ loop
    def train(self, progress: bool = True) -> dict[str, Any]:
        cfg = self.cfg
        if cfg.resume:
            self._resume()
        if cfg.eval_at_start and self.step_num == 0:
            self.evaluate()
        bar = tqdm(total=self.total_steps, initial=self.step_num, desc="format warm-up", unit="step", disable=not progress)
        while self.step_num < self.total_steps:
            step = self.step_num
            torch.manual_seed(D.step_seed(cfg.seed, step, D.Dist()))
            t0 = time.perf_counter()
            stats = self.step(self.batch(step))
            self.step_num = step + 1
            stats |= {"lr": self.scheduler.get_last_lr()[0], "step_s": time.perf_counter() - t0,
                      "epoch": step / self.steps_per_epoch}
            if step % cfg.logging_steps == 0:
                self.log.scalars(self.step_num, stats)
            bar.update(1)
            bar.set_postfix(loss=f"{stats['loss']:.3f}")
            last = self.step_num == self.total_steps
            if self.step_num % cfg.eval_steps == 0 or last:
                self.evaluate()
            if self.step_num % cfg.save_steps == 0 or self.step_num % self.steps_per_epoch == 0 or last:
                self.save()
        bar.close()
        summary = {"steps": self.step_num, "skipped_updates": self.skipped_updates, "train_pairs": len(self.pairs),
                   "train_targets": sum(len(ts) for _, ts in self.pairs),
                   "validation": self.last_validation}
        self.log.info("done %s", summary)
        return summary

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Greedy answers to the validation prompts, scored and logged (``val/*`` scalars, one JSONL row each)."""
        if not self.val_set:
            return {}
        self.sampler.refresh(self.policy)
        texts, scores, stats = validate(self.sampler, self.tok, self.val_set, self.encode, score, batch=EVAL_BATCH,
                                        max_new_tokens=self.cfg.max_new_tokens)
        self.log.scalars(self.step_num, val_scalars(stats))
        self.log.completions([{"step": self.step_num, "prompt_id": f"{ex.ticker}@{ex.date}", "ticker": ex.ticker,
                               "date": ex.date, "completion": t, "predicted_direction": s.prediction.direction,
                               "actual_direction": ex.direction_1, "rewards": s.components, "reward_total": s.total}
                              for t, ex, s in zip(texts, self.val_set, scores, strict=True)])
        self.log.info("step %d validation %s", self.step_num, stats)
        self.last_validation = stats
        return stats

    # ------------------------------------------------------------------ save / resume
    def state(self) -> dict[str, Any]:
        return {"step": self.step_num, "epoch": self.step_num // self.steps_per_epoch,
                "data_position": self.step_num % self.steps_per_epoch, "skipped_updates": self.skipped_updates,
                "log_offsets": self.log.offsets(), "total_steps": self.total_steps, "world_size": 1,
                "global_batch": self.cfg.batch_size, "validation": self.last_validation}

    def save(self, folder: Path | None = None) -> None:
        save_and_prune(folder or Path(self.cfg.output_dir) / f"checkpoint-{self.step_num}", log=self.log,
                       output_dir=self.cfg.output_dir, keep=self.cfg.save_total_limit, model=self.policy,
                       tokenizer=self.tok, optimizer=self.optimizer, scheduler=self.scheduler, state=self.state())

    def _resume(self) -> None:
        ckpt = resume_point(self.cfg.output_dir, self.log)
        if ckpt is None:
            return
        state = restore(ckpt, model=self.policy, optimizer=self.optimizer, scheduler=self.scheduler, log=self.log)
        self.step_num, self.skipped_updates = state["step"], state["skipped_updates"]
        self.last_validation = state.get("validation")
        self.log.info("resumed from %s at step %d", ckpt, self.step_num)
