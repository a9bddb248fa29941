"""Guidance distillation (Meng et al. 2023, stage 1; METHODS.md 'Guidance distillation').

The student takes the guidance scale w as an input (diffusers `time_cond_proj_dim` + `timestep_cond`) and
learns the teacher's CFG combination v_u + w (v_c - v_u) at random t and w ~ U[w_min, w_max]: one forward
pass per step instead of two. Negative prompts are lost; the checkpoint says guidance mode `embedded`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from fewstep.compress.distributed import StepRandom
from fewstep.compress.flow_matching import sample_t
from fewstep.compress.methods.common import FrozenCopy, cfg_velocity
from fewstep.core.flow_math import interpolate
from fewstep.models.contract import Cond


@dataclass
class GuidanceDistillLoss:
    teacher: torch.nn.Module
    null_cond: Cond  # one row: the empty prompt
    w_min: float = 1.0
    w_max: float = 6.0
    t_sampling: str = "uniform"
    _teacher: FrozenCopy = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not 0 <= self.w_min <= self.w_max:
            raise ValueError(f"need 0 <= w_min <= w_max; got {self.w_min}, {self.w_max}")
        self._teacher = FrozenCopy(self.teacher)

    def to(self, device) -> None:
        self._teacher.to(device)

    def __call__(self, model, batch, rng: StepRandom):
        x0, cond = batch
        b = x0.shape[0]
        eps = rng.randn(*x0.shape).to(x0.device)
        t = sample_t(b, self.t_sampling, rng).to(x0.device)
        w = (self.w_min + (self.w_max - self.w_min) * rng.rand(b)).to(x0.device)
        x_t = interpolate(x0, eps, t)
        target = cfg_velocity(self._teacher, x_t, t, cond, w, self.null_cond)
        loss = (model(x_t, t, cond.with_guidance(w)) - target).pow(2).mean()
        return loss, {"loss": loss.item()}
