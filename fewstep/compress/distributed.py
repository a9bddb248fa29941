"""Multi-process data parallel for the one training loop, over `torch.distributed` (gloo on CPU, nccl on GPUs).

Launch with `torchrun --nproc_per_node N -m fewstep.cli distill ...` (or `accelerate launch`, which sets the
same environment). Every rank builds the same *global* batch from (seed, step), keeps its contiguous slice, and
draws its random numbers as the slice of the global draw (`StepRandom`), so N processes with batch B/N train
the same weights as one process with batch B, up to float summation order (tested). Gradients are averaged
with one all-reduce per step, after backward and before clipping.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist


def world() -> tuple[int, int]:
    """(rank, world size) of the running process group, (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_from_env(device: str = "cpu") -> tuple[int, int]:
    """Join the process group torchrun described in the environment (WORLD_SIZE > 1); no-op otherwise."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        if device.startswith("cuda"):  # one GPU per process: plain "cuda" then means this rank's GPU
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return world()


def is_main() -> bool:
    return world()[0] == 0


def barrier() -> None:
    if world()[1] > 1:
        dist.barrier()


def broadcast_module(module: torch.nn.Module) -> None:
    """Rank 0's weights to every rank (initial weights must agree exactly)."""
    if world()[1] > 1:
        for t in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(t.data, 0)


def any_rank(flag: bool) -> bool:
    """True when `flag` is true on any rank (so that all ranks take the same branch)."""
    if world()[1] == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0])
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def all_reduce_grads(params: list[torch.nn.Parameter]) -> None:
    """Average gradients over ranks (one flat buffer: one collective per call)."""
    _, n = world()
    if n == 1:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= n
    i = 0
    for p, g in zip(params, grads, strict=True):
        p.grad = flat[i : i + g.numel()].view_as(g).clone()
        i += g.numel()


def shard_batch(batch: Any, rank: int, n: int) -> Any:
    """This rank's contiguous slice of a global batch (tensors, Conds, tuples of them)."""
    if n == 1:
        return batch
    if isinstance(batch, (tuple, list)):
        return type(batch)(shard_batch(b, rank, n) for b in batch)
    is_tensor = isinstance(batch, torch.Tensor)
    size = batch.shape[0] if is_tensor else batch.batch_size  # a tensor or a Cond
    if size % n:
        raise ValueError(f"global batch {size} does not split over {n} processes; use a multiple of {n}")
    part = slice(rank * size // n, (rank + 1) * size // n)
    return batch[part] if is_tensor else batch.index(part)


class StepRandom:
    """The random draws of one training step, a function of (seed, step) only.

    Per-sample draws (`randn`, `rand`, `randint`: leading dim = the local batch) are taken for the global
    batch and sliced to this rank, so they do not depend on how many processes share the batch. Draws that
    are the same for the whole batch use `generator` directly. Draw in the same order on every rank.
    """

    def __init__(self, seed: int, step: int, rank: int = 0, n: int = 1):
        self.step, self.rank, self.n = step, rank, n
        self.generator = torch.Generator().manual_seed(seed * 1_000_003 + step)

    def _slice(self, full: torch.Tensor, local: int) -> torch.Tensor:
        return full[self.rank * local : (self.rank + 1) * local]

    def randn(self, *shape: int) -> torch.Tensor:
        return self._slice(torch.randn((shape[0] * self.n, *shape[1:]), generator=self.generator), shape[0])

    def rand(self, *shape: int) -> torch.Tensor:
        return self._slice(torch.rand((shape[0] * self.n, *shape[1:]), generator=self.generator), shape[0])

    def randint(self, low: int, high: int, size: int) -> torch.Tensor:
        return self._slice(torch.randint(low, high, (size * self.n,), generator=self.generator), size)
