"""Two processes (gloo on CPU) train the same weights as one process with the doubled batch."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

STEPS, GLOBAL_BATCH = 8, 32


def _batches(step: int):
    from tests.toys import cond_of, sample_data

    g = torch.Generator().manual_seed(step)
    x0, classes = sample_data(GLOBAL_BATCH, g)
    return torch.randn(x0.shape, generator=g), x0, cond_of(classes)


def _loss(name: str):
    from fewstep.compress.methods.dmd import DMDLoss
    from fewstep.compress.methods.slimflow import AnnealingReflowLoss
    from tests.toys import MixtureFlow, ToyMLP, cond_of

    if name == "annealing_reflow":
        # per-sample noise, t and step-dependent beta: every random draw must line up across ranks
        return AnnealingReflowLoss(anneal_steps=4)
    # DMD2 multi-step: a whole-batch step index, backward simulation and a fake score with its own optimizer
    return DMDLoss(MixtureFlow(), cond_of(torch.tensor([-1])), w_real=1.0, fake_updates=2, fake_lr=1e-3,
                   fake=ToyMLP(width=32), times=(1.0, 0.6, 0.3))  # fmt: skip


def _train(out: Path, loss_name: str = "annealing_reflow") -> None:
    from fewstep.compress.trainer import LoopConfig, TrainingLoop
    from tests.toys import ToyMLP

    torch.manual_seed(0)
    cfg = LoopConfig(steps=STEPS, batch_size=GLOBAL_BATCH, lr=1e-2, warmup_steps=1, checkpoint_every=4,
                     sample_every=0, log_every=1)  # fmt: skip
    loss = _loss(loss_name)
    saved = lambda where, ema, step: torch.save(ema.state_dict(), where / "ema.pt")  # noqa: E731
    TrainingLoop(ToyMLP(width=32), loss, _batches, cfg, out, saved).run(progress=False)


def _worker(rank: int, world: int, port: int, out: str, loss_name: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    from fewstep.compress.distributed import init_from_env

    init_from_env("cpu")
    _train(Path(out), loss_name)
    torch.distributed.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("loss_name", ["annealing_reflow", "dmd_multistep"])
def test_two_gloo_processes_equal_one_process_with_the_doubled_batch(tmp_path, loss_name):
    _train(tmp_path / "one", loss_name)
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path / "two"), loss_name), nprocs=2, join=True)
    one = torch.load(tmp_path / "one" / "ema.pt", weights_only=True)
    two = torch.load(tmp_path / "two" / "ema.pt", weights_only=True)
    for k in one:
        torch.testing.assert_close(two[k], one[k], rtol=1e-4, atol=1e-5)
