"""Shortcut-model distillation (Frans et al. 2025, One step diffusion via shortcut models;
docs/concepts/methods/shortcut.md).

The student s(x_t, t, d) takes the step size d as an input (its scalar input, time_cond_proj) and steps
x_{t-d} = x_t - d s(x_t, t, d). Two losses share each batch:

- flow matching at d = 0: s(x_t, t, 0) -> the teacher's CFG velocity v(x_t, t) (guidance baked in);
- self-consistency on the rest (`bootstrap_fraction`): one step of 2d equals two steps of d,
  s(x_t, t, 2d) -> stopgrad((s_1 + s_2) / 2), s_1 = s(x_t, t, d), s_2 = s(x_t - d s_1, t - d, d),
  with 2d = 2^-k, k uniform in {0, ..., log2(max_steps) - 1}, t a multiple of 2d, and the smallest d queried at
  d = 0 (the flow-matching field), which grounds the chain of step sizes.

Sampling: the `interval` rule with `student_steps` uniform steps (a power of two, one of the trained sizes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from fewstep.compress.distill_config import DistillConfig, ImageInput, StepSizeInput, TeacherGuidance, TimeSampling
from fewstep.compress.distill_session import DistillSession, baked, euler_times
from fewstep.compress.distributed import StepRandom
from fewstep.compress.flow_matching import sample_t
from fewstep.compress.method_registry import Method, register_method
from fewstep.compress.methods.common import FrozenCopy, cfg_velocity
from fewstep.core.config import ConfigError, param
from fewstep.core.flow_math import bcast, interpolate
from fewstep.models.contract import Cond


def is_power_of_two(n: int) -> bool:
    return n >= 1 and n & (n - 1) == 0


def bootstrap_steps(b: int, max_steps: int, rng: StepRandom) -> tuple[torch.Tensor, torch.Tensor]:
    """(t, 2d) per sample: 2d = 2^-k for k uniform in {0, ..., log2(max_steps) - 1}, t = j 2d with j in
    {1, ..., 1 / 2d}, so both half steps stay in [0, 1]."""
    levels = int(math.log2(max_steps))
    k = rng.randint(0, levels, b)
    big = torch.pow(2.0, -k.float())
    j = torch.floor(rng.rand(b) * torch.pow(2.0, k.float())) + 1  # 1 .. 2^k
    return j * big, big


@dataclass
class ShortcutLoss:
    teacher: torch.nn.Module
    null_cond: Cond | None
    guidance: float = 3.0  # teacher CFG scale, baked into the student
    bootstrap_fraction: float = 0.25  # share of the batch on self-consistency targets (the paper: 1/4)
    max_steps: int = 128  # the smallest step size is 1 / max_steps
    t_sampling: str = "uniform"  # the flow-matching part's times
    _teacher: FrozenCopy = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not 0 <= self.bootstrap_fraction <= 1:
            raise ValueError(f"bootstrap_fraction must be in [0, 1]; got {self.bootstrap_fraction}")
        if not is_power_of_two(self.max_steps) or self.max_steps < 2:
            raise ValueError(f"max_steps must be a power of two >= 2; got {self.max_steps}")
        self._teacher = FrozenCopy(self.teacher)

    def to(self, device) -> None:
        self._teacher.to(device)

    @torch.no_grad()
    def bootstrap_target(self, model, x: torch.Tensor, t: torch.Tensor, big: torch.Tensor,
                         cond: Cond) -> torch.Tensor:  # fmt: skip
        """stopgrad((s(x, t, d) + s(x - d s(x, t, d), t - d, d)) / 2) with d = big / 2 (0 at the smallest)."""
        d = big / 2
        d_in = torch.where(d <= 1.0 / self.max_steps, torch.zeros_like(d), d)  # the finest level asks d = 0
        s1 = model(x, t, cond.with_guidance(d_in))
        x_mid = x - bcast(d, x) * s1
        s2 = model(x_mid, t - d, cond.with_guidance(d_in))
        return (s1 + s2) / 2

    def __call__(self, model, batch, rng: StepRandom):
        x0, cond = batch
        b = x0.shape[0]
        eps = rng.randn(*x0.shape).to(x0.device)
        n_boot = round(b * self.bootstrap_fraction)
        t_fm = sample_t(b, self.t_sampling, rng)
        t_bs, big = bootstrap_steps(b, self.max_steps, rng)
        boot = torch.arange(b) < n_boot  # the first rows bootstrap, the rest flow-match
        t = torch.where(boot, t_bs, t_fm).to(x0.device)
        d = torch.where(boot, big, torch.zeros(b)).to(x0.device)
        x_t = interpolate(x0, eps, t)
        target = torch.empty_like(x0)
        fm, bs = ~boot.to(x0.device), boot.to(x0.device)
        if fm.any():
            target[fm] = cfg_velocity(self._teacher, x_t[fm], t[fm], cond.index(fm), self.guidance, self.null_cond)
        if bs.any():
            target[bs] = self.bootstrap_target(model, x_t[bs], t[bs], d[bs], cond.index(bs))
        sq = (model(x_t, t, cond.with_guidance(d)) - target).pow(2)
        loss = sq.mean()
        logs = {"loss": loss.item()}
        if fm.any():
            logs["flow_matching_loss"] = float(sq[fm].mean())
        if bs.any():
            logs["self_consistency_loss"] = float(sq[bs].mean())
        return loss, logs


@dataclass(frozen=True)
class ShortcutConfig(StepSizeInput, ImageInput, TeacherGuidance, TimeSampling, DistillConfig):
    """Shortcut models: the student learns steps of every size 2^-k from the teacher's flow plus self-consistency,
    and samples `student_steps` (a power of two) steps of size 1 / student_steps."""

    bootstrap_fraction: float = param(0.25, "share of the batch trained on self-consistency targets (the rest: "
                                      "flow matching onto the teacher at d = 0)", min=0, max=1)  # fmt: skip
    max_steps: int = param(128, "the finest step size is 1 / max_steps (a power of two)", min=2, max=1024)

    def check(self) -> None:
        super().check()
        if not is_power_of_two(self.max_steps):
            raise ConfigError(f"max_steps must be a power of two; got {self.max_steps}", "max_steps")
        if not is_power_of_two(self.student_steps) or self.student_steps > self.max_steps:
            raise ConfigError(f"a shortcut student samples with a trained step size 2^-k: student_steps must be a "
                              f"power of two <= max_steps ({self.max_steps}); got {self.student_steps}",
                              "student_steps")  # fmt: skip


def run(s: DistillSession, cfg: ShortcutConfig, out: Path, resume: bool, progress: bool) -> Path:
    student, report = s.new_student()
    times = euler_times(cfg.student_steps)

    def spec(step: int) -> dict:
        return s.spec(step, "interval", times, baked(cfg.guidance),
                      {"init": report, "train_times": f"step sizes 2^-k down to 1/{cfg.max_steps}"})  # fmt: skip

    loss = ShortcutLoss(s.teacher, s.null, cfg.guidance, cfg.bootstrap_fraction, cfg.max_steps, cfg.t_sampling)
    s.run_loop(student, loss, s.data_batch, cfg.loop(), out, spec, resume, progress)
    return out / "model.safetensors"


METHOD = register_method(Method(
    "shortcut", ShortcutConfig, run, "shortcut models: steps of every size 2^-k by self-consistency, 1-8 steps",
    paper="Frans et al. 2025, One step diffusion via shortcut models", order=75,
))  # fmt: skip
