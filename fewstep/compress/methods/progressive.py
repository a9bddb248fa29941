"""Progressive distillation (Salimans & Ho 2022), flow form (METHODS.md 'Progressive distillation').

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

import torch

from fewstep.compress.distributed import StepRandom
from fewstep.compress.methods.common import FrozenCopy, cfg_velocity
from fewstep.core.flow_math import interpolate
from fewstep.models.contract import Cond


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
