"""Flow-matching loss for teachers (1-rectified flow): ||v(x_t, t, c) - (eps - x0)||^2 with CFG dropout."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fewstep.compress.distributed import StepRandom
from fewstep.core.flow_math import interpolate
from fewstep.models.contract import Cond, FlowModel


def sample_t(n: int, how: str, rng: StepRandom) -> torch.Tensor:
    """Training times in (0, 1): `uniform`, or `logit_normal` (SD3: sigmoid of N(0, 1), more mass mid-path)."""
    if how == "uniform":
        return rng.rand(n)
    if how == "logit_normal":
        return torch.sigmoid(rng.randn(n))
    raise ValueError(f"unknown t sampling {how!r}; use 'uniform' or 'logit_normal'")


def drop_condition(cond: Cond, null: Cond, p: float, rng: StepRandom) -> Cond:
    """Replace each row's text by the null (empty-prompt) condition with probability p, for CFG."""
    if p <= 0:
        return cond
    drop = (rng.rand(cond.batch_size) < p).to(cond.text.device)
    null = null.to(cond.text.device)
    text = torch.where(drop[:, None, None], null.text.expand_as(cond.text), cond.text)
    mask = (
        None
        if cond.text_mask is None
        else torch.where(drop[:, None], null.text_mask.expand_as(cond.text_mask), cond.text_mask)
    )
    pooled = (
        None if cond.pooled is None else torch.where(drop[:, None], null.pooled.expand_as(cond.pooled), cond.pooled)
    )
    return Cond(text, mask, pooled, cond.guidance)


@dataclass
class FlowMatchingLoss:
    """docs/concepts/methods/teacher.md: x_t = (1 - t) x0 + t eps, target eps - x0, L2; condition dropped with p."""

    null_cond: Cond  # one row: the empty prompt
    cond_dropout: float = 0.1
    t_sampling: str = "logit_normal"

    def __call__(self, model: FlowModel, batch: tuple[torch.Tensor, Cond], rng: StepRandom):
        x0, cond = batch
        # random draws come from the CPU generator of (seed, step), then move: identical on every device
        eps = rng.randn(*x0.shape).to(x0.device)
        t = sample_t(x0.shape[0], self.t_sampling, rng).to(x0.device)
        x_t = interpolate(x0, eps, t)
        cond = drop_condition(cond, self.null_cond, self.cond_dropout, rng)
        loss = (model(x_t, t, cond) - (eps - x0)).pow(2).mean()
        return loss, {"loss": loss.item()}
