"""The GRPO training loop for Stage I and Stage II (``stonk train``).

One rollout, as in DeepSeekMath's GRPO (arXiv 2402.03300); by default one optimizer step per rollout
(mu = 1, ``num_iterations = steps_per_generation = 1``):

1. take ``batch_size x steps_per_generation`` prompts (natural market mix for Stage II, balanced for Stage I);
2. sample ``num_generations`` = G completions for each, all in one batched call; the sampler also
   returns the log-prob of each token it drew (the sampler/trainer gap, ``tis_cap``);
3. score every completion with the five-part reward (:func:`stonklib.rewards.score`), plus DAPO's
   overlong penalty when ``overlong_buffer`` is set (:mod:`stonklib.grpo.lengths`);
4. normalise rewards within each group of G (:func:`stonklib.grpo.loss.group_advantages`; the std of
   the group, of the whole batch, or none);
5. with more than one optimizer step per rollout (or ``tis_cap``), compute pi_old once, dropout off;
6. make ``num_iterations x steps_per_generation`` optimizer steps on it, each on ``batch_size`` of its
   groups: reference and policy log-probs, :func:`stonklib.grpo.loss.grpo_loss` and its backward
   (:class:`stonklib.grpo.policy_update.PolicyUpdate`, from a CUDA graph where one applies), clip the
   norm, AdamW, LR schedule. At mu = 1 the "old" log-probs are the current ones detached, so the ratio
   is 1 in value but carries the gradient.

Non-finite losses or gradients skip the update and are counted. Every step writes its metrics row; a
rollout's completions go to the JSONL once, flushed; checkpoints are atomic and fall on rollout
boundaries; ``--resume`` continues at the same step, data position and RNG state.

Under ``accelerate launch``/``torchrun`` (N ranks) each rank takes a disjoint slice of
``batch_size`` prompts from each step's global batch of ``batch_size × N`` and samples its G
completions per prompt with its own seed, so groups never straddle ranks. DDP all-reduces
(averages) the LoRA gradients; rewards, market counts, loss and its stats are reduced over ranks
before logging; rank 0 writes the logs, TensorBoard and checkpoints; every checkpoint records
a fingerprint of each rank's adapter, and saving stops if they differ. Resume needs the same
global batch (data position is counted in global-batch steps), not the same N.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from stonklib import config as cfglib
from stonklib.data.records import Example
from stonklib.grpo import distributed as D
from stonklib.grpo.checkpoint import (
    check_global_batch,
    check_rollout_shape,
    restore,
    resume_point,
    save_and_prune,
)
from stonklib.grpo.collapse import CollapseMonitor, step_counts
from stonklib.grpo.dynamic import RESAMPLE_SALT, Groups, refill
from stonklib.grpo.lengths import CLIPPED_WARNING, overlong_penalty, truncated
from stonklib.grpo.loss import batch_reward_std, group_advantages
from stonklib.grpo.market import MarketStats
from stonklib.grpo.policy_update import PolicyUpdate
from stonklib.grpo.runlog import RunLog
from stonklib.grpo.schedule import batch_indices, guarded_step, make_scheduler, steps_per_epoch
from stonklib.grpo.steplog import StepResult, completion_rows, step_scalars
from stonklib.grpo.validation import sampled_stats, sampled_up_counts, val_scalars, validate
from stonklib.prompts import fit_prompt
from stonklib.rewards import score
from stonklib.sampling.rollout import HFSampler, Rollout, encode_prompts, eos_ids, rollout


class GRPOTrainer:
    def __init__(self, cfg: cfglib.TrainConfig, policy, tokenizer, train: list[Example], val: list[Example],
                 dist: D.Dist | None = None, runlog: RunLog | None = None, sampler=None, reward_fn=None):
        self.cfg, self.policy, self.tok, self.train_set, self.val_set = cfg, policy, tokenizer, train, val
        self.dist = dist = dist or D.Dist()
        self.device = next(p for p in policy.parameters()).device
        self.log = runlog or RunLog(cfg.output_dir, cfg.stage, is_main=dist.is_main, tensorboard=cfg.tensorboard)
        self.params = [p for p in policy.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.steps_per_epoch = steps_per_epoch(len(train), cfg.batch_size * dist.world)  # of data (global batches)
        self.per_rollout = cfg.num_iterations * cfg.steps_per_generation  # optimizer steps per rollout
        rollouts = math.ceil(cfg.epochs * self.steps_per_epoch / cfg.steps_per_generation)
        self.total_steps = cfg.max_steps or rollouts * self.per_rollout
        self.scheduler = make_scheduler(cfg, self.optimizer, self.total_steps)
        self.sampler = sampler or HFSampler(policy, tokenizer)
        self.update = PolicyUpdate(cfg, policy, self.params, dist, sampler_weights=getattr(self.sampler, "weights", None))
        self.reward_fn = reward_fn or self._five_part_reward
        self.market = MarketStats()
        self.collapse = CollapseMonitor()
        self.step_num, self.best_val, self.skipped_updates = 0, -math.inf, 0
        self.best_key = (-math.inf, -math.inf)  # (best_metric, val/reward) of best/
        self.eos_ids = eos_ids(tokenizer)
        self._sampler_stale = False  # optimizer steps since the sampler last followed the policy (inside a rollout)
        self._warned_clipped = False

    # ------------------------------------------------------------------ data
    def batch_examples(self, data_step: int) -> list[Example]:
        """This rank's prompts for data step ``data_step``: its slice of that global batch (a per-epoch seeded
        permutation). At one optimizer step per rollout data steps are optimizer steps (:meth:`data_step`)."""
        idx = batch_indices(len(self.train_set), data_step, self.cfg.batch_size * self.dist.world, self.cfg.seed)
        mine = idx[self.dist.rank * self.cfg.batch_size:(self.dist.rank + 1) * self.cfg.batch_size]
        return [self.train_set[i] for i in mine]

    def data_step(self, step: int) -> int:
        """The global batch optimizer step ``step`` updates on: rollouts advance ``steps_per_generation`` batches
        each, and every pass over a rollout (``num_iterations``) reads the same ones."""
        k = self.cfg.steps_per_generation
        return step // self.per_rollout * k + step % k

    def rollout_examples(self, step: int) -> list[Example]:
        """The prompts of the rollout that starts at optimizer step ``step``: ``steps_per_generation`` batches."""
        first = self.data_step(step)
        return [ex for d in range(first, first + self.cfg.steps_per_generation) for ex in self.batch_examples(d)]

    def encode(self, examples: list[Example]) -> tuple[torch.Tensor, torch.Tensor]:
        texts = [fit_prompt(ex, self.tok, self.cfg.max_prompt_tokens, self.cfg.prompt_version).text for ex in examples]
        return encode_prompts(self.tok, texts, self.device)

    # ------------------------------------------------------------------ one rollout
    def train_step(self, examples: list[Example]) -> StepResult:
        return self.step(*self.encode(examples), examples)

    def step(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, examples: list[Example]) -> StepResult:
        """One rollout of these prompts and all its optimizer steps; the last step's result (at mu = 1 the only one)."""
        *_, last = self.rollout_steps(prompt_ids, prompt_mask, examples)
        return last

    def rollout_steps(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                      examples: list[Example]) -> Iterator[StepResult]:
        """Sample and score ``examples`` (``batch_size x steps_per_generation`` prompts) once, then yield the
        result of each of the rollout's ``num_iterations x steps_per_generation`` optimizer steps.

        Pass ``i`` of ``num_iterations`` runs the ``steps_per_generation`` slices in order, each one optimizer
        step on ``batch_size`` of the groups. With more than one step per rollout the old log-probs are the
        policy's as sampled (no LoRA dropout, before the first update), computed once.
        """
        cfg, G, t = self.cfg, self.cfg.num_generations, {}
        t0 = time.perf_counter()
        groups = self._sample(prompt_ids, prompt_mask, examples)
        t["sample_s"] = time.perf_counter() - t0
        first, dyn = groups, {}
        if cfg.dynamic_sampling:
            t0 = time.perf_counter()
            groups, dyn = refill(first, self._resample, cfg.max_resample_rounds, self.tok.pad_token_id)
            t["resample_s"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        roll, scored = groups.rollout, groups.scores
        rewards = torch.tensor([s.total for s in scored], dtype=torch.float32)
        components = {k: torch.tensor([s.components[k] for s in scored]) for k in cfglib.REWARD_PARTS}
        lengths = roll.completion_mask.sum(1).cpu()
        cut = truncated(roll.completion_ids, roll.completion_mask, self.eos_ids).cpu()
        if cfg.overlong_buffer:  # DAPO's soft overlong punishment, on top of the five parts
            components["overlong"] = overlong_penalty(lengths, cfg.max_new_tokens, cfg.overlong_buffer,
                                                      cfg.overlong_penalty)
            rewards = rewards + components["overlong"]
        advantages = group_advantages(rewards, G, scale=cfg.scale_rewards, batch_std=self._batch_std(rewards))
        loss_mask = roll.completion_mask
        if cfg.mask_truncated_completions:  # out of the loss; the attention still sees their tokens
            loss_mask = loss_mask * (~cut).to(loss_mask.device, loss_mask.dtype).unsqueeze(1)
        t["score_s"] = time.perf_counter() - t0
        old_logp = None
        if self.per_rollout > 1 or cfg.tis_cap is not None:
            t0 = time.perf_counter()
            old_logp = self.update.old_logprobs(roll)
            t["old_logprobs_s"] = time.perf_counter() - t0

        predictions = [s.prediction.direction for s in scored]
        first_predictions = [s.prediction.direction for s in first.scores]
        first_rewards = torch.tensor([s.total for s in first.scores])
        n = len(examples) // cfg.steps_per_generation * G  # completions per optimizer step
        for it in range(cfg.num_iterations):
            for k in range(cfg.steps_per_generation):
                rows, grp = slice(k * n, (k + 1) * n), slice(k * n // G, (k + 1) * n // G)
                part = roll.rows(list(range(rows.start, rows.stop))) if self.per_rollout > 1 else roll
                t0 = time.perf_counter()
                loss, stats, skipped = self._update(part, advantages[rows].to(self.device), loss_mask[rows],
                                                    None if old_logp is None else old_logp[rows])
                last = it == cfg.num_iterations - 1 and k == cfg.steps_per_generation - 1
                self._sampler_stale = True
                if last:
                    self.sampler.refresh(self.policy)
                    self._sampler_stale = False
                step_t = (t if it == 0 and k == 0 else {}) | {"update_s": time.perf_counter() - t0}
                group_examples = [ex for ex in groups.examples[grp] for _ in range(G)]
                delta = MarketStats()
                if it == 0:  # each sampled answer counts once, however often its rollout is reused
                    delta.update([ex.direction_1 for ex in group_examples], predictions[rows])
                # The collapse signals describe the policy's own sampling: the first draw, before any refill.
                counts = step_counts(first_rewards[rows], G, first.rollout.texts[rows], first_predictions[rows],
                                     [ex.direction_1 for ex in first.examples[grp] for _ in range(G)])
                yield StepResult(part, rewards[rows], {c: v[rows] for c, v in components.items()}, advantages[rows],
                                 predictions[rows], list(groups.examples[grp]), delta, loss, stats, skipped, step_t,
                                 counts, dyn if it == 0 and k == 0 else {}, iteration=it,
                                 lengths=lengths[rows].tolist(), truncated=cut[rows].tolist())

    def _batch_std(self, rewards: torch.Tensor) -> float | None:
        """The reward std over the whole batch, every rank's completions (``scale_rewards="batch"`` only)."""
        if self.cfg.scale_rewards != "batch":
            return None
        r = rewards.double()
        sums = D.all_reduce_sum(torch.stack([torch.tensor(float(r.numel()), dtype=torch.float64), r.sum(),
                                             (r * r).sum()]), self.dist)
        return batch_reward_std(*sums.tolist())

    def _sample(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, examples: list[Example]) -> Groups:
        """G completions for each prompt, in one batched call, scored."""
        cfg, G = self.cfg, self.cfg.num_generations
        roll = rollout(self.sampler, self.tok, prompt_ids, prompt_mask, G, max_new_tokens=cfg.max_new_tokens,
                       temperature=cfg.temperature, top_p=cfg.top_p)
        group_examples = [ex for ex in examples for _ in range(G)]
        scores = [self.reward_fn(c, ex) for c, ex in zip(roll.texts, group_examples, strict=True)]
        return Groups(roll, scores, list(examples), G)

    def _resample(self, round_: int) -> Groups:
        """Dynamic sampling's extra groups for this step's round ``round_``: prompts from their own seeded order."""
        per_step = self.cfg.batch_size * self.dist.world
        idx = batch_indices(len(self.train_set), self.step_num, per_step, self.cfg.seed + (round_ + 1) * RESAMPLE_SALT)
        mine = [self.train_set[i] for i in idx[self.dist.rank * self.cfg.batch_size:(self.dist.rank + 1) * self.cfg.batch_size]]
        return self._sample(*self.encode(mine), mine)

    def _five_part_reward(self, completion: str, example: Example):
        class_freq = self.market.class_freq() if self.cfg.bias_adaptation else None
        return score(completion, example, self.cfg.reward_weights, multi_horizon=self.cfg.multi_horizon,
                     class_freq=class_freq)

    def _update(self, roll: Rollout, advantages: torch.Tensor, loss_mask: torch.Tensor | None = None,
                old_logp: torch.Tensor | None = None) -> tuple[float, dict[str, float], bool]:
        """Reference and policy log-probs, loss, backward (:class:`PolicyUpdate`), clip, AdamW.

        ``old_logp`` None: on-policy (mu = 1), the policy's own detached log-probs. ``loss_mask`` is the
        completion mask (the default), less the truncated completions under ``mask_truncated_completions``.
        """
        cfg = self.cfg
        self.policy.train()
        loss_mask = roll.completion_mask if loss_mask is None else loss_mask
        loss, stats = self.update.passes(roll, advantages, loss_mask, old_logp)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, cfg.max_grad_norm)  # of the all-reduced grads
        # One device sync for loss, stats and grad norm, after backward: a sync between forward and
        # backward would stop the host queueing the backward while the GPU still runs the forward.
        keys = ["loss", *stats, "grad_norm"]
        values = torch.stack([torch.as_tensor(v, dtype=torch.float32, device=grad_norm.device)
                              for v in (loss, *stats.values(), grad_norm)]).tolist()
        # Means over ranks, so every rank logs the same numbers and takes the same skip decision.
        stats = D.mean_over_ranks(dict(zip(keys, values, strict=True)), self.dist)
        total_loss = stats.pop("loss")
        skipped = guarded_step(self.optimizer, self.scheduler, total_loss, stats["grad_norm"])
        self.skipped_updates += skipped
        return total_loss, stats, skipped

    # ------------------------------------------------------------------ loop
    def train(self, progress: bool = True) -> dict[str, Any]:
        cfg = self.cfg
        if cfg.resume:
            self._resume()
        self.log.info("sampling with %s; update log-probs with %s", type(self.sampler).__name__,
                      self.update.logprobs.__name__)
        if cfg.eval_at_start and self.step_num == 0:
            self._evaluate_and_keep_best()
        bar = tqdm(total=self.total_steps, initial=self.step_num, desc=f"GRPO stage {cfg.stage}",
                   disable=not (progress and self.dist.is_main), unit="step")
        while self.step_num < self.total_steps:
            start = self.step_num
            torch.manual_seed(D.step_seed(cfg.seed, start, self.dist))
            examples = self.rollout_examples(start)
            save_due, t0 = False, time.perf_counter()
            for res in self.rollout_steps(*self.encode(examples), examples):
                step = self.step_num
                self.step_num = step + 1
                scalars = self._log_step(step, res, time.perf_counter() - t0)
                bar.update(1)
                bar.set_postfix(reward=f"{scalars['reward/total']:.2f}", kl=f"{scalars.get('kl', 0.0):.4f}")
                if self.step_num % cfg.eval_steps == 0 or self.step_num == self.total_steps:
                    self._evaluate_and_keep_best()
                save_due |= self.step_num % cfg.save_steps == 0 or self.step_num == self.total_steps
                t0 = time.perf_counter()
            # Checkpoints fall on rollout boundaries: a rollout's samples are not saved, so one cut in the middle
            # could not resume it. A save that falls due inside a rollout (or an epoch that ends there) waits for its end.
            first = self.data_step(start)
            epoch_end = first // self.steps_per_epoch < (first + cfg.steps_per_generation) // self.steps_per_epoch
            if save_due or epoch_end:
                self.save()
        bar.close()
        summary = {"steps": self.step_num, "best_metric": self.cfg.best_metric, "best_val": self.best_val,
                   "skipped_updates": self.skipped_updates, "collapse_warnings": self.collapse.warnings,
                   "market": self.market.to_dict()}
        self.log.info("done %s", summary)
        return summary

    def _log_step(self, step: int, res: StepResult, seconds: float) -> dict[str, float]:
        """Aggregate over ranks, write the JSONL rows and the scalars (rank 0), and watch for collapse."""
        self.market = self.market + res.market.summed_over_ranks(self.dist)
        scalars = step_scalars(res, self.dist, self.market, seconds) | {
            "lr": self.scheduler.get_last_lr()[0], "epoch": self.data_step(step) / self.steps_per_epoch,
            "skipped_updates": self.skipped_updates}
        warning = self.collapse.update(step + 1, scalars)
        # A rollout's completions are written once, with its first pass (later passes reuse them).
        mine = completion_rows(res, step + 1, self.data_step(step) // self.steps_per_epoch, self.dist.rank, self.cfg.num_generations)
        rows = D.gather_to_main(mine if res.iteration == 0 else [], self.dist)
        if self.dist.is_main:
            self.log.completions([r for rank_rows in rows for r in rank_rows])
            if step % self.cfg.logging_steps == 0:
                self.log.scalars(step + 1, scalars)
            self.market.save(Path(self.cfg.output_dir) / "market_stats.json")
            if warning:
                self.log.warning(warning)
            clipped = scalars.get("completions/clipped_ratio", 0.0)
            if clipped >= CLIPPED_WARNING and not self._warned_clipped:
                self._warned_clipped = True
                self.log.warning(f"step {step + 1}: {clipped:.0%} of the completions reached max_new_tokens="
                                 f"{self.cfg.max_new_tokens} before their end-of-sequence token, so their answers may be "
                                 "cut off: raise max_new_tokens, or set mask_truncated_completions or overlong_buffer.")
        return scalars

    # ------------------------------------------------------------------ eval / save / resume
    @torch.no_grad()
    def validation_reward(self) -> dict[str, float]:
        """Greedy answers to the first ``max_eval_samples`` val examples (split over ranks), scored.

        ``val/*`` keys of :func:`stonklib.grpo.validation.answer_stats`. A predicted-up rate of 0 or 1 means
        one answer for every prompt: the market-bias failure to watch. With ``eval_samples``, also the
        up-rate of that many sampled answers per prompt (:func:`~stonklib.grpo.validation.sampled_up_counts`).
        """
        cfg = self.cfg
        exs = self.val_set[: cfg.max_eval_samples][self.dist.rank::self.dist.world]
        batch = cfg.batch_size * cfg.num_generations
        _, _, stats = validate(self.sampler, self.tok, exs, self.encode, self.reward_fn, dist=self.dist,
                               batch=batch, max_new_tokens=cfg.max_new_tokens)
        if cfg.eval_samples:
            counts = sampled_up_counts(self.sampler, self.tok, exs, self.encode, samples=cfg.eval_samples, batch=batch,
                                       max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p)
            summed = D.all_reduce_sum(torch.tensor(list(counts.values()), dtype=torch.float64), self.dist).tolist()
            stats |= sampled_stats(dict(zip(counts, summed, strict=True)))
        return val_scalars(stats)

    def _evaluate_and_keep_best(self) -> None:
        if not self.val_set:
            return
        if self._sampler_stale:  # inside a rollout: the sampler has not followed the last update yet
            self.sampler.refresh(self.policy)
            self._sampler_stale = False
        metrics = D.broadcast(self.validation_reward(), self.dist)  # one best/ decision for all ranks
        if self.dist.is_main:
            self.log.scalars(self.step_num, metrics)
            self.log.info("step %d validation %s", self.step_num, metrics)
        # The best metric first; undefined (NaN: no parsed answer yet) ranks lowest, the validation reward breaks ties.
        value = metrics[self.cfg.best_metric]
        key = (value if math.isfinite(value) else -math.inf, metrics["val/reward"])
        if key > self.best_key:
            self.best_key, self.best_val = key, value
            self.save(Path(self.cfg.output_dir) / "best")

    def state(self) -> dict[str, Any]:
        data = self.data_step(self.step_num)  # a rollout boundary: the next rollout's first batch
        return {"step": self.step_num, "epoch": data // self.steps_per_epoch,
                "data_position": data % self.steps_per_epoch, "best_metric": self.cfg.best_metric,
                "num_iterations": self.cfg.num_iterations, "steps_per_generation": self.cfg.steps_per_generation,
                "best_val": self.best_val, "best_key": list(self.best_key), "collapse": self.collapse.to_dict(),
                "skipped_updates": self.skipped_updates, "market": self.market.to_dict(),
                "log_offsets": self.log.offsets(), "world_size": self.dist.world, "total_steps": self.total_steps,
                "global_batch": self.cfg.batch_size * self.dist.world}

    def save(self, folder: Path | None = None) -> None:
        folder = folder or Path(self.cfg.output_dir) / f"checkpoint-{self.step_num}"
        state = None
        if self.dist.enabled:  # the all-gather is also the barrier before rank 0 writes
            from peft import get_peft_model_state_dict

            prints = D.check_replicas(get_peft_model_state_dict(self.policy), self.dist, f" at step {self.step_num}")
            state = {"replica_fingerprints": prints}
        if self.dist.is_main:
            save_and_prune(folder, log=self.log, output_dir=self.cfg.output_dir, keep=self.cfg.save_total_limit,
                           model=self.policy, tokenizer=self.tok, optimizer=self.optimizer, scheduler=self.scheduler,
                           state=self.state() | (state or {}))
        D.barrier(self.dist)

    def _resume(self) -> None:
        ckpt = D.broadcast(resume_point(self.cfg.output_dir, self.log), self.dist)  # rank 0's view decides
        if ckpt is None:
            return
        if not ckpt.is_dir():
            raise FileNotFoundError(f"rank {self.dist.rank} cannot see {ckpt}, the checkpoint rank 0 resumes from: "
                                    "with several nodes, output_dir must be on a filesystem that every node mounts.")
        saved = json.loads((ckpt / "trainer_state.json").read_text())
        check_global_batch(saved, self.cfg, self.dist, ckpt)
        check_rollout_shape(saved, self.cfg, ckpt)
        state = restore(ckpt, model=self.policy, optimizer=self.optimizer, scheduler=self.scheduler, log=self.log)
        self.step_num, self.best_val = state["step"], state.get("best_val", -math.inf)
        self.best_key = tuple(state.get("best_key", (-math.inf, -math.inf)))
        if state.get("best_metric") != self.cfg.best_metric:  # another metric now picks best/: start its record afresh
            self.best_val, self.best_key = -math.inf, (-math.inf, -math.inf)
        self.collapse = CollapseMonitor.from_dict(state.get("collapse"))
        self.skipped_updates = state["skipped_updates"]
        self.market = MarketStats.from_dict(state["market"])
        self.sampler.refresh(self.policy)
        self.log.info("resumed from %s at step %d", ckpt, self.step_num)

