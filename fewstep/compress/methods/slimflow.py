"""SlimFlow (Zhu, Liu & Liu, ECCV 2024; METHODS.md 'SlimFlow'): smaller one-step students in two stages.

1. `AnnealingReflowLoss`: reflow with a source perturbed by beta(k): eps_b = sqrt(1 - b^2) eps + b eps_fresh,
   x_t = (1 - t) x0_hat + t eps_b, target eps_b - x0_hat. beta = 1 is flow matching on teacher samples,
   beta = 0 pure reflow.
2. `FlowGuidedLoss`: L = d(eps - v_s(eps, 1), x0_hat) on the pairs + d(eps' - v, x0_T) on fresh noise, where
   the frozen stage-1 model finishes the student's straight path from a random tau in [0.2, 0.8].
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ..distributed import StepRandom
from ..flow_matching import bcast, sample_t
from .common import FrozenCopy, interpolate
from .distance import get_distance

SCHEDULES = ("linear", "exponential", "cosine")


def beta_schedule(k: int, total: int, kind: str = "linear") -> float:
    """Weight of the fresh noise at training step k of `total` annealing steps."""
    if total <= 0:
        return 0.0
    if kind == "linear":
        return max(0.0, 1.0 - k / total)
    if kind == "exponential":
        return math.exp(-k / total)
    if kind == "cosine":
        return (1 + math.cos(math.pi * min(1.0, k / total))) / 2
    raise ValueError(f"unknown beta schedule {kind!r}; choose one of {', '.join(SCHEDULES)}")


@dataclass
class AnnealingReflowLoss:
    anneal_steps: int  # K: beta reaches 0 (linear) at step K
    schedule: str = "linear"
    t_sampling: str = "uniform"

    def __call__(self, model, batch, rng: StepRandom):
        eps, x0, cond = batch
        beta = beta_schedule(rng.step, self.anneal_steps, self.schedule)
        fresh = rng.randn(*eps.shape).to(eps.device)
        eps_b = math.sqrt(1 - beta**2) * eps + beta * fresh
        t = sample_t(eps.shape[0], self.t_sampling, rng).to(eps.device)
        loss = (model(interpolate(x0, eps_b, t), t, cond) - (eps_b - x0)).pow(2).mean()
        return loss, {"loss": loss.item(), "beta": beta}


@dataclass
class FlowGuidedLoss:
    guide: torch.nn.Module  # frozen copy of the stage-1 model
    distance: str = "pseudo_huber"
    tau_range: tuple[float, float] = (0.2, 0.8)
    guide_weight: float = 1.0
    _guide: FrozenCopy = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._guide = FrozenCopy(self.guide)
        self.d = get_distance(self.distance)

    def to(self, device) -> None:
        self._guide.to(device)

    def __call__(self, model, batch, rng: StepRandom):
        eps, x0, cond = batch
        ones = torch.ones(eps.shape[0], device=eps.device)
        l_distill = self.d(eps - model(eps, ones, cond), x0)
        fresh = rng.randn(*eps.shape).to(eps.device)
        v = model(fresh, ones, cond)
        lo, hi = self.tau_range
        tau = (lo + (hi - lo) * rng.rand(eps.shape[0])).to(eps.device)
        with torch.no_grad():
            x_tau = fresh - (1 - bcast(tau, fresh)) * v
            x0_guide = x_tau - bcast(tau, fresh) * self._guide(x_tau, tau, cond)
        l_guide = self.d(fresh - v, x0_guide)
        loss = l_distill + self.guide_weight * l_guide
        return loss, {"loss": loss.item(), "distill": l_distill.item(), "guide": l_guide.item()}


__all__ = ["SCHEDULES", "AnnealingReflowLoss", "FlowGuidedLoss", "beta_schedule", "sample_t"]
