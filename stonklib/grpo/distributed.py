"""Data-parallel plumbing for ``accelerate launch`` / ``torchrun`` (one process per device).

Run (``docs/scaling.md``)::

    accelerate launch --multi_gpu --num_processes 4 -m stonklib.cli train --config configs/stage2.yaml
    torchrun --nproc_per_node 4 -m stonklib.cli train --config configs/stage2.yaml

The launcher sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and ``MASTER_ADDR``/``PORT``;
:func:`init` joins the process group: on GPUs NCCL for CUDA tensors (bound to
``cuda:LOCAL_RANK``) plus gloo for the CPU-side metrics and objects; gloo alone on CPU.
With one process every helper is a no-op, so the trainer reads the same either way.

On CPU, ``accelerate launch --cpu --num_processes N`` starts *one* process (accelerate's
multi-CPU mode expects ``mpirun``); use ``--multi_gpu`` (which is plain torchrun underneath)
or ``torchrun``: the backend follows the device, so CPU ranks talk over gloo.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


#: Each run's seed spans this many sampling seeds (a prime), so neighbouring run seeds never share a step's seed.
SEED_STRIDE = 1_000_003


def step_seed(seed: int, step: int, d: Dist) -> int:
    """torch's seed for ``step`` on this rank: ``seed * SEED_STRIDE + step * world + rank``.

    Every (step, rank) samples with its own seed, so ranks draw different completions and a
    resumed run draws the same ones as an uninterrupted run.
    """
    return seed * SEED_STRIDE + step * d.world + d.rank


def init(device_type: str) -> Dist:
    """Join the launcher's process group; ``Dist()`` (one process) when there is none."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        if device_type == "cuda":
            # Gradients (CUDA tensors) go over NCCL; the small CPU-side reductions (rewards, market
            # counts, loss stats) and the pickled completion rows go over gloo, with no GPU round
            # trip. Bound to its GPU first, so no collective ever lands on cuda:0.
            torch.cuda.set_device(local_rank)
            dist.init_process_group(backend="cpu:gloo,cuda:nccl", device_id=torch.device("cuda", local_rank))
        else:
            dist.init_process_group(backend="gloo")
    return Dist(rank=dist.get_rank(), world=dist.get_world_size(), local_rank=local_rank)


def all_reduce_sum(t: torch.Tensor, d: Dist) -> torch.Tensor:
    """Sum a tensor over ranks (returns a new tensor; the input is untouched)."""
    out = t.clone()
    if d.enabled:
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def mean_over_ranks(values: Mapping[str, float], d: Dist) -> dict[str, float]:
    """Each value averaged over ranks (every rank must pass the same keys)."""
    if not d.enabled:
        return dict(values)
    keys = sorted(values)
    total = all_reduce_sum(torch.tensor([float(values[k]) for k in keys], dtype=torch.float64), d)
    return {k: float(v) / d.world for k, v in zip(keys, total.tolist(), strict=True)}


def gather_to_main(obj: Any, d: Dist) -> list[Any]:
    """Every rank's ``obj`` on rank 0 (in rank order); other ranks get []."""
    if not d.enabled:
        return [obj]
    out = [None] * d.world if d.is_main else None
    dist.gather_object(obj, out, dst=0)
    return out if d.is_main else []


def all_gather(obj: Any, d: Dist) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank."""
    if not d.enabled:
        return [obj]
    out = [None] * d.world
    dist.all_gather_object(out, obj)
    return out


def broadcast(obj: Any, d: Dist) -> Any:
    """Rank 0's ``obj`` on every rank (use it wherever all ranks must take the same decision)."""
    if not d.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(d: Dist) -> None:
    if d.enabled:
        dist.barrier()


@contextmanager
def main_process_first(d: Dist) -> Iterator[None]:
    """Rank 0 runs the block first (it may build data or merge an adapter on disk); the rest follow."""
    if not d.is_main:
        barrier(d)
    yield
    if d.is_main:
        barrier(d)


def fingerprint(tensors: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over the names, dtypes, shapes and exact bytes of ``tensors`` (order-independent)."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def check_replicas(tensors: Mapping[str, torch.Tensor], d: Dist, what: str = "") -> list[str]:
    """Every rank's :func:`fingerprint` of ``tensors``; raises on every rank if they differ.

    DDP keeps replicas equal by construction (same init, all-reduced gradients, same optimizer);
    this catches the silent ways that can break (a rank that skips an update, non-deterministic
    kernels feeding the optimizer, a hand-edited checkpoint), before a diverged model is saved.
    """
    prints = all_gather(fingerprint(tensors), d)
    if len(set(prints)) > 1:
        raise RuntimeError(f"DDP replicas diverged{what}: trainable-parameter fingerprints per rank {prints}. "
                           "This is a bug in the data-parallel path: please report it with the run's training.log.")
    return prints


def shutdown(d: Dist) -> None:
    if d.enabled and dist.is_initialized():
        dist.destroy_process_group()
