"""Reflow / k-rectified flow (Liu, Gong & Liu 2023; METHODS.md 'Reflow').

On teacher pairs (eps, x0_hat): x_t = (1 - t) x0_hat + t eps, target eps - x0_hat, L2, t uniform. The
student's paths become straighter, so 1-4 Euler steps lose much less than the teacher's do.
"""

from __future__ import annotations

from dataclasses import dataclass

from fewstep.compress.distributed import StepRandom
from fewstep.compress.flow_matching import sample_t
from fewstep.core.flow_math import interpolate


@dataclass
class ReflowLoss:
    t_sampling: str = "uniform"

    def __call__(self, model, batch, rng: StepRandom):
        eps, x0, cond = batch
        t = sample_t(eps.shape[0], self.t_sampling, rng).to(eps.device)
        loss = (model(interpolate(x0, eps, t), t, cond) - (eps - x0)).pow(2).mean()
        return loss, {"loss": loss.item()}
