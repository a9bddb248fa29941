"""Progressive distillation (Salimans & Ho 2022), flow form (docs/concepts/methods/progressive.md).

A student with N/2 steps matches two Euler steps of an N-step teacher: from x_t on the student's grid the
teacher goes t -> t - D -> t - 2D (D = 1/N) and the student's velocity is regressed onto
(x_t - x_{t-2D}) / (2D). Each round's student is the next round's teacher (`fewstep distill progressive`
runs the rounds, e.g. 32 -> 16 -> 8 -> 4 -> 2).

With `w_range` the teacher is a guidance-distilled (w-conditioned) model and so is the student: each sample
draws w ~ U[w_range] and both see it as their guidance input (Meng et al. 2023, stage 2: `fewstep distill
guidance --then-progressive`), so the few-step student keeps a guidance scale chosen at sampling time.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fewstep.compress.distill_config import DistillConfig, ImageInput, TeacherGuidance
from fewstep.compress.distill_session import DistillSession, baked, euler_times
from fewstep.compress.distributed import StepRandom
from fewstep.compress.method_registry import Method, register_method
from fewstep.compress.methods.common import FrozenCopy, cfg_velocity
from fewstep.core.config import ConfigError, param
from fewstep.core.flow_math import interpolate
from fewstep.models.contract import Cond
from fewstep.models.loading import load_model


@dataclass
class ProgressiveLoss:
    teacher: torch.nn.Module
    null_cond: Cond | None
    teacher_steps: int  # N; the student learns N / 2
    guidance: float = 1.0  # the first round bakes the original teacher's CFG in; later rounds use 1
    w_range: tuple[float, float] | None = None  # w-conditioned teacher and student: w ~ U[w_range] per sample

    def __post_init__(self) -> None:
        if self.teacher_steps < 2 or self.teacher_steps % 2:
            raise ValueError(f"teacher_steps must be even and >= 2; got {self.teacher_steps}")
        if self.w_range is not None and (self.guidance != 1.0 or not 0 <= self.w_range[0] <= self.w_range[1]):
            raise ValueError(f"w_range needs a w-conditioned teacher (guidance 1, not CFG) and 0 <= w_min <= w_max; "
                             f"got guidance {self.guidance}, w_range {self.w_range}")  # fmt: skip
        self._teacher = FrozenCopy(self.teacher)

    def to(self, device) -> None:
        self._teacher.to(device)

    def __call__(self, model, batch, rng: StepRandom):
        x0, cond = batch
        b = x0.shape[0]
        half = self.teacher_steps // 2
        d = 1.0 / self.teacher_steps
        eps = rng.randn(*x0.shape).to(x0.device)
        t = (rng.randint(1, half + 1, b).float() / half).to(x0.device)  # the student's grid points
        x_t = interpolate(x0, eps, t)
        if self.w_range is not None:  # drawn after eps and t: the plain rounds keep their random stream
            lo, hi = self.w_range
            cond = cond.with_guidance((lo + (hi - lo) * rng.rand(b)).to(x0.device))
        with torch.no_grad():
            v1 = cfg_velocity(self._teacher, x_t, t, cond, self.guidance, self.null_cond)
            x_mid = x_t - d * v1
            v2 = cfg_velocity(self._teacher, x_mid, t - d, cond, self.guidance, self.null_cond)
            target = (v1 + v2) / 2  # = (x_t - x_{t-2D}) / (2D) for two Euler steps
        loss = (model(x_t, t, cond) - target).pow(2).mean()
        return loss, {"loss": loss.item()}


def check_halving(start_steps: int, student_steps: int) -> None:
    """Rounds halve `start_steps` down to `student_steps`: both must be powers of two apart."""
    n = start_steps
    while n > student_steps:
        n //= 2
    if n != student_steps or start_steps <= student_steps:
        raise ConfigError(f"progressive halves start_steps ({start_steps}) down to student_steps ({student_steps}): "
                          "use powers of two, e.g. 32 -> 2", "start_steps")  # fmt: skip


@dataclass(frozen=True)
class ProgressiveConfig(ImageInput, TeacherGuidance, DistillConfig):
    """Rounds of halving from `start_steps` down to `student_steps`, `steps` optimizer steps each."""

    start_steps: int = param(32, "the first round's teacher steps; rounds halve down to student_steps", min=2)

    def check(self) -> None:
        super().check()
        check_halving(self.start_steps, self.student_steps)

    @property
    def multi_stage(self) -> bool:
        return True


def progressive_rounds(s: DistillSession, cfg: ProgressiveConfig | Any, out: Path, resume: bool, progress: bool,
                       teacher: torch.nn.Module, teacher_path: Path, guidance: float, null: Cond | None, init: str,
                       mode: dict, w_range: tuple[float, float] | None) -> Path:  # fmt: skip
    """Halve start_steps down to student_steps, each round's student the next round's teacher.

    `guidance`/`null`: CFG of the first teacher (baked into the first student); `w_range`: a w-conditioned
    teacher and student (guidance mode `embedded`, `mode` then names its range)."""
    n, r = cfg.start_steps, 1
    source, source_path = teacher, teacher_path
    stage = {"stage": 2} if w_range is not None else {}
    while n > cfg.student_steps:
        half = n // 2
        where = out / f"round{r}_{n}to{half}"
        student, report = s.new_student(init, source, source_path)
        times = euler_times(half)

        def spec(step: int, times: list[float] = times, report: dict = report, n: int = n, r: int = r) -> dict:
            extra = {"init": report, **stage, "round": r, "teacher_steps": n, "train_times": times[:-1]}
            return s.spec(step, "euler", times, mode, extra)

        loss = ProgressiveLoss(teacher, null, n, guidance, w_range)
        saved = s.run_loop(student, loss, s.data_batch, cfg.loop(), where, spec, resume, progress)
        del student, loss, teacher, source  # before the next round's networks are loaded
        last = load_model(saved)[0]
        # the student is the next teacher; CFG is baked in after the first round
        teacher, guidance, null, source, init = last, 1.0, None, last, "teacher"
        source_path = where / "model.safetensors"
        n, r = half, r + 1
    return where / "model.safetensors"


def run(s: DistillSession, cfg: ProgressiveConfig, out: Path, resume: bool, progress: bool) -> Path:
    return progressive_rounds(s, cfg, out, resume, progress, s.teacher, s.teacher_path, cfg.guidance, s.null,
                              s.init, baked(cfg.guidance), None)  # fmt: skip


METHOD = register_method(Method(
    "progressive", ProgressiveConfig, run, "repeated halving of steps, each round's student the next teacher",
    paper="Salimans & Ho 2022, Progressive distillation", order=60,
))  # fmt: skip
