"""The update half of a GRPO step: log-probs of a rollout's completions, the loss, and its backward pass.

:class:`stonklib.grpo.trainer.GRPOTrainer` samples and scores; :class:`PolicyUpdate` turns one optimizer
step's slice of the rollout into gradients on the LoRA weights:

- the reference log-probs (the same model with its adapter switched off, no copy) and the policy's, with
  grad, from the pass :func:`stonklib.update.pick.pick_logprobs` chooses for the model (the shared-prefix
  dense pass for Llama/Qwen2, the full forward otherwise);
- :func:`stonklib.grpo.loss.grpo_loss` with the config's variant, the old log-probs (``None``: on-policy,
  mu = 1) and the sampler's log-probs (the gap stats and ``tis_cap``);
- the backward pass, over ``grad_accum_steps`` micro-batches of whole groups, or replayed from a CUDA graph
  (:class:`stonklib.update.graphs.GraphedUpdate`) on one device with one micro-batch.

It also computes pi_old (:meth:`PolicyUpdate.old_logprobs`) for several optimizer steps per rollout. The
trainer clips the gradient norm and steps the optimizer.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from functools import partial

import torch

from stonklib import config as cfglib
from stonklib.grpo import distributed as D
from stonklib.grpo.loss import grpo_loss
from stonklib.models import adapters_off
from stonklib.sampling.rollout import Rollout
from stonklib.update.graphs import GraphedUpdate
from stonklib.update.pick import pick_logprobs


class _PolicyLogprobs(torch.nn.Module):
    """Wraps the policy so DDP sees a forward call: returns completion log-probs."""

    def __init__(self, policy, fn: Callable[..., torch.Tensor]):
        super().__init__()
        self.policy, self.fn = policy, fn

    def forward(self, input_ids, attention_mask, n_completion: int, temperature: float):
        return self.fn(self.policy, input_ids, attention_mask, n_completion, temperature)


class PolicyUpdate:
    """Log-probs, loss and backward for one optimizer step (see the module docstring).

    ``logprobs`` (the pass) and ``forward.fn`` (the same pass, as DDP calls it) are attributes, so a benchmark
    can wrap them with timers.
    """

    def __init__(self, cfg: cfglib.TrainConfig, policy, params: list[torch.nn.Parameter], dist: D.Dist,
                 sampler_weights=None):
        self.cfg, self.policy, self.params, self.dist = cfg, policy, params, dist
        device = next(p for p in policy.parameters()).device
        self.logprobs = pick_logprobs(policy, shared_prefix=cfg.shared_prefix_logprobs, dense=cfg.dense_update,
                                      sampler_weights=sampler_weights, lora_matmul_dtype=cfg.lora_matmul_dtype,
                                      kernels=cfglib.kernels_arg(cfg), ref_graphs=cfg.update_graphs)
        self.forward = _PolicyLogprobs(policy, self.logprobs)
        self.loss = partial(grpo_loss, beta=cfg.kl_coef, epsilon=cfg.epsilon, epsilon_high=cfg.epsilon_high,
                            loss_type=cfg.loss_type, max_completion_length=cfg.max_new_tokens,
                            kl_bias_correction=cfg.kl_bias_correction, entropy_coef=cfg.entropy_coef,
                            importance_sampling_level=cfg.importance_sampling_level, tis_cap=cfg.tis_cap,
                            stats_as_tensors=True)
        self.graphed = None  # the update's passes and backward from CUDA graphs, where they apply
        self.graph_losses = self._graph_losses()
        if GraphedUpdate.usable(self.logprobs, device, micro_batches=cfg.grad_accum_steps, distributed=dist.enabled,
                                graphs=cfg.update_graphs):
            self.graphed = GraphedUpdate(self.logprobs, params)
        if dist.enabled:
            ids = [device.index] if device.type == "cuda" else None
            # Every LoRA weight is used in every forward (no find_unused_parameters), which also
            # makes non-reentrant gradient checkpointing safe. The only buffers (rotary tables)
            # are constant, so they are not re-broadcast at every forward.
            self.forward = torch.nn.parallel.DistributedDataParallel(self.forward, device_ids=ids,
                                                                     broadcast_buffers=False)

    def passes(self, roll: Rollout, advantages: torch.Tensor, loss_mask: torch.Tensor,
               old_logp: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
        """(loss, stats) with the backward pass run: from a replay of the update's CUDA graph where one applies,
        else eagerly. ``old_logp`` None: on-policy (mu = 1), the policy's own detached log-probs."""
        out = self.graphed_passes(roll, advantages, loss_mask, old_logp) if self.graphed else None
        return out or self.eager_passes(roll, advantages, loss_mask, old_logp)

    def graphed_passes(self, roll: Rollout, advantages: torch.Tensor, loss_mask: torch.Tensor,
                       old_logp: torch.Tensor | None):
        """(loss, stats) from a replay of the update's CUDA graph, or None when this batch runs eagerly.

        One micro-batch on one process (:meth:`GraphedUpdate.usable`); the graph's loss counts its own
        mask for DAPO, the same number as the eager path's token count, without its host sync. The old
        and the sampler's log-probs, where given, are static inputs like the mask.
        """
        extras = (advantages, loss_mask.float(), *(t for t in (old_logp, roll.sampler_logp) if t is not None))
        loss_fn = self.graph_losses[(old_logp is not None, roll.sampler_logp is not None)]
        return self.graphed(self.policy, roll.input_ids, roll.attention_mask, roll.completion_ids.shape[1],
                            self.cfg.temperature, extras, loss_fn, with_ref=self.cfg.kl_coef > 0)

    def _graph_losses(self) -> dict[tuple[bool, bool], Callable]:
        """The graph's loss functions, keyed by (old log-probs given, sampler log-probs given); one object each,
        so a graph captured for one is replayed for it. Their arguments: ``(logp, ref, advantages, mask,
        [old], [sampler])``."""
        def make(has_old: bool, has_sampler: bool):
            def loss_fn(logp, ref, adv, cmask, *rest):
                old = rest[0] if has_old else logp.detach()
                return self.loss(logp, old, ref, adv, cmask, sampler_logp=rest[-1] if has_sampler else None)
            return loss_fn
        return {(a, b): make(a, b) for a in (False, True) for b in (False, True)}

    def eager_passes(self, roll: Rollout, advantages: torch.Tensor, loss_mask: torch.Tensor,
                     old_logp: torch.Tensor | None):
        """(loss, stats) of the eager passes, backward run, over ``grad_accum_steps`` micro-batches of whole groups."""
        cfg, n_mb = self.cfg, self.cfg.grad_accum_steps
        rows = roll.completion_ids.shape[0] // n_mb  # whole groups per micro-batch (config guarantees it)
        C = roll.completion_ids.shape[1]
        input_ids, attention_mask = roll.input_ids, roll.attention_mask  # concatenated once, sliced per micro-batch
        # DAPO normalises by the tokens of the whole step (all micro-batches, all ranks); DDP then
        # averages the ranks' gradients, hence the factor world.
        num_items = None
        if cfg.loss_type == "dapo":
            tokens = D.all_reduce_sum(loss_mask.sum().double().cpu(), self.dist)
            num_items = float(tokens) / (n_mb * self.dist.world)
        total_loss, stats_acc = 0.0, {}
        for m in range(n_mb):
            sl = slice(m * rows, (m + 1) * rows)
            ids, attn, cmask = input_ids[sl], attention_mask[sl], loss_mask[sl]
            ref_logp = None
            if cfg.kl_coef > 0:
                with torch.no_grad(), adapters_off(self.policy):
                    ref_logp = self.logprobs(self.policy, ids, attn, C, cfg.temperature)
            sync = m == n_mb - 1 or not self.dist.enabled
            with self.forward.no_sync() if not sync else contextlib.nullcontext():
                logp = self.forward(ids, attn, C, cfg.temperature)
                old = logp.detach() if old_logp is None else old_logp[sl]
                sampler_logp = None if roll.sampler_logp is None else roll.sampler_logp[sl]
                loss, stats = self.loss(logp, old, ref_logp, advantages[sl], cmask.float(), num_items=num_items,
                                        sampler_logp=sampler_logp)
                (loss / n_mb).backward()
            total_loss = total_loss + loss.detach().float() / n_mb
            for k, v in stats.items():
                stats_acc[k] = stats_acc.get(k, 0.0) + v / n_mb
        return total_loss, stats_acc

    @torch.no_grad()
    def old_logprobs(self, roll: Rollout) -> torch.Tensor:
        """pi_old: the policy's log-probs of the rollout's tokens before its first update, LoRA dropout off,
        in micro-batches of whole groups (the update's)."""
        cfg = self.cfg
        rows = cfg.batch_size * cfg.num_generations // cfg.grad_accum_steps
        C = roll.completion_ids.shape[1]
        ids, attn = roll.input_ids, roll.attention_mask
        self.policy.eval()
        try:
            parts = [self.logprobs(self.policy, ids[i:i + rows], attn[i:i + rows], C, cfg.temperature)
                     for i in range(0, ids.shape[0], rows)]
        finally:
            self.policy.train()
        return torch.cat(parts).float()
