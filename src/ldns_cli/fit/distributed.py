"""Thin wrapper over torch.distributed for `torchrun` launches (DDP; gloo on CPU, nccl on CUDA).

    torchrun --standalone --nproc_per_node 2 -m ldns_cli fit-ae data.h5

Without torchrun's environment (RANK/WORLD_SIZE unset) everything here is a no-op for a single
process, so library code calls these helpers unconditionally. Only rank 0 writes checkpoints and
shows progress; every rank draws the same trial permutation and takes its own shard of each
global batch (`shard`), so one epoch covers each trial exactly once, whatever the world size.
"""

from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist

# rank offset for per-rank RNG streams (a large prime keeps the streams of nearby seeds apart)
_RANK_SEED_STRIDE = 1_000_003


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def init(device: str = "cpu") -> str:
    """Join the process group when launched by torchrun; return the device this rank should use.

    With CUDA, rank r uses `cuda:LOCAL_RANK` and nccl; otherwise gloo. Idempotent.
    """
    if env_world_size() <= 1 or not dist.is_available():
        return device
    use_cuda = device.startswith("cuda") and torch.cuda.is_available()
    if use_cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    if not dist.is_initialized():
        dist.init_process_group(
            backend="nccl" if use_cuda else "gloo", timeout=datetime.timedelta(minutes=30)
        )
    return device


def shutdown() -> None:
    if is_initialized():
        dist.destroy_process_group()


def rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if is_initialized():
        dist.barrier()


def rank_seed(seed: int) -> int:
    """Seed for this rank's own random stream (e.g. dropout masks); rank 0 keeps `seed`."""
    return seed + _RANK_SEED_STRIDE * rank()


def shard(indices: torch.Tensor) -> torch.Tensor:
    """This rank's contiguous share of a global batch of indices (sizes differ by at most 1).

    May be empty when the batch has fewer items than ranks; callers must still take part in
    collectives (the trainer runs a zero-weighted step).
    """
    n, w, r = len(indices), world_size(), rank()
    bounds = [(n * i) // w for i in range(w + 1)]
    return indices[bounds[r] : bounds[r + 1]]


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over ranks (returns it unchanged for one process)."""
    if is_initialized():
        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def any_rank(flag: bool, device: str | torch.device = "cpu") -> bool:
    """True if `flag` is True on any rank (used so Ctrl-C stops every rank at the same step)."""
    if not is_initialized():
        return flag
    return bool(all_reduce_sum(torch.tensor([float(flag)], device=device)).item() > 0)
