"""Two processes (gloo on CPU) train the same weights as one process with the doubled batch."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import torch
import torch.multiprocessing as mp

STEPS, GLOBAL_BATCH = 8, 32


def _batches(step: int):
    from tests.toys import cond_of, sample_data

    g = torch.Generator().manual_seed(step)
    x0, classes = sample_data(GLOBAL_BATCH, g)
    return torch.randn(x0.shape, generator=g), x0, cond_of(classes)


def _train(out: Path) -> None:
    from fewstep.compress.methods.slimflow import AnnealingReflowLoss
    from fewstep.compress.trainer import LoopConfig, TrainingLoop
    from tests.toys import ToyMLP

    torch.manual_seed(0)
    cfg = LoopConfig(steps=STEPS, batch_size=GLOBAL_BATCH, lr=1e-2, warmup_steps=1, checkpoint_every=4,
                     sample_every=0, log_every=1)  # fmt: skip
    # a loss with per-sample noise, t and step-dependent beta: every random draw must line up across ranks
    loss = AnnealingReflowLoss(anneal_steps=4)
    saved = lambda where, ema, step: torch.save(ema.state_dict(), where / "ema.pt")  # noqa: E731
    TrainingLoop(ToyMLP(width=32), loss, _batches, cfg, out, saved).run(progress=False)


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    from fewstep.compress.distributed import init_from_env

    init_from_env("cpu")
    _train(Path(out))
    torch.distributed.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_processes_equal_one_process_with_the_doubled_batch(tmp_path):
    _train(tmp_path / "one")
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path / "two")), nprocs=2, join=True)
    one = torch.load(tmp_path / "one" / "ema.pt", weights_only=True)
    two = torch.load(tmp_path / "two" / "ema.pt", weights_only=True)
    for k in one:
        torch.testing.assert_close(two[k], one[k], rtol=1e-4, atol=1e-5)
