"""Training health: diverging, stalled and clipped runs are named while they train, once each, with advice."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fewstep.compress.health import HealthMonitor, read_health
from fewstep.compress.trainer import LoopConfig, TrainingHealthWarning, TrainingLoop


def _feed(monitor: HealthMonitor, losses, grad_norm: float = 0.5, start: int = 10) -> list:
    found = []
    for i, loss in enumerate(losses):
        found += monitor.observe({"step": start + 10 * i, "loss": loss, "grad_norm": grad_norm})
    return found


def test_a_healthy_run_raises_nothing():
    decreasing = [1.0 / (1 + 0.05 * i) for i in range(100)]
    assert _feed(HealthMonitor(grad_clip=1.0), decreasing) == []


def test_a_diverging_loss_is_named_once():
    losses = [1.0 - 0.01 * i for i in range(15)] + [0.86 * 1.3**i for i in range(20)]
    found = _feed(HealthMonitor(grad_clip=1.0), losses)
    assert [w.kind for w in found] == ["rising"]
    assert "diverging" in found[0].message and "--lr" in found[0].message


def test_a_flat_loss_is_stalled_after_the_warm_up():
    monitor = HealthMonitor(grad_clip=1.0, warmup_steps=100)
    flat = [5.0] * 10 + [3.5 + 0.01 * (i % 3) for i in range(60)]  # the warm-up's fall does not count
    found = _feed(monitor, flat)
    assert [w.kind for w in found] == ["stalled"]
    assert monitor.steps[0] > 100 and "not decreased since step 110" in found[0].message


def test_saturated_clipping_is_named_with_its_ratio():
    found = _feed(HealthMonitor(grad_clip=1.0), [1.0 / (1 + i) for i in range(20)], grad_norm=57.0)
    assert [w.kind for w in found] == ["clipped"]
    assert "57" in found[0].message and "every update is clipped" in found[0].message
    assert _feed(HealthMonitor(grad_clip=0.0), [1.0] * 20, grad_norm=57.0) == []  # no clipping: nothing to say


def test_losses_not_meant_to_decrease_are_checked_for_clipping_only():
    rising = [0.1 * 1.2**i for i in range(60)]
    assert _feed(HealthMonitor(grad_clip=1.0, monitor_loss=False), rising) == []


class _Loss:
    def __init__(self, scale: float):
        self.scale = scale

    def __call__(self, model, batch, rng):
        loss = self.scale * ((model(batch) - 3.0) ** 2).mean()
        return loss, {"loss": float(loss)}


def _loop(out, steps: int, scale: float, lr: float) -> TrainingLoop:
    torch.manual_seed(0)
    cfg = LoopConfig(steps=steps, batch_size=4, lr=lr, warmup_steps=0, log_every=1, checkpoint_every=10,
                     sample_every=0, ema_decay=0.0)  # fmt: skip
    return TrainingLoop(nn.Linear(4, 4), _Loss(scale), lambda s: torch.randn(4, 4), cfg, out,
                        lambda out, model, step: None)  # fmt: skip


def test_the_loop_warns_writes_health_and_a_resume_does_not_repeat_it(tmp_path):
    with pytest.warns(TrainingHealthWarning, match="clipped"):
        _loop(tmp_path, 20, scale=1000.0, lr=1e-6).run(progress=False)
    assert [w.kind for w in read_health(tmp_path)] == ["clipped"]
    # resumed to 60 steps: still clipped, but said once
    _loop(tmp_path, 60, scale=1000.0, lr=1e-6).run(resume=True, progress=False)
    kinds = [w.kind for w in read_health(tmp_path)]
    assert kinds.count("clipped") == 1 and "stalled" in kinds  # lr 1e-6: the loss stays where it started
