"""Small helpers shared by the method losses."""

from __future__ import annotations

import torch

from ...models.contract import Cond
from ..flow_matching import bcast


def x0_prediction(model, x_t: torch.Tensor, t: torch.Tensor, cond: Cond) -> torch.Tensor:
    """x0_hat = x_t - t v(x_t, t)."""
    return x_t - bcast(t, x_t) * model(x_t, t, cond)


def step_grid(k: int) -> torch.Tensor:
    """The times a k-step Euler student starts its steps from: 1, (k-1)/k, ..., 1/k."""
    return torch.arange(k, 0, -1, dtype=torch.float32) / k


def interpolate(x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x_t = (1 - t) x0 + t eps."""
    tb = bcast(t, x0)
    return (1 - tb) * x0 + tb * eps


@torch.no_grad()
def cfg_velocity(teacher, x: torch.Tensor, t: torch.Tensor, cond: Cond, w, null: Cond | None) -> torch.Tensor:
    """Teacher velocity with classifier-free guidance; `w` a float or a (B,) tensor (per-sample scales)."""
    if null is None or (not torch.is_tensor(w) and w == 1.0):
        return teacher(x, t, cond)
    nulls = null.to(x.device) if null.batch_size == x.shape[0] else null.to(x.device).repeat(x.shape[0])
    v_u, v_c = teacher(torch.cat([x, x]), torch.cat([t, t]), Cond.cat([nulls, cond])).chunk(2)
    w = bcast(torch.as_tensor(w, dtype=x.dtype, device=x.device).expand(x.shape[0]), x)
    return v_u + w * (v_c - v_u)


class FrozenCopy:
    """Keeps a frozen network out of `model.parameters()` of the loss while moving with it."""

    def __init__(self, module: torch.nn.Module):
        self.module = module.eval().requires_grad_(False)

    def __call__(self, *args):
        return self.module(*args)

    def to(self, device) -> None:
        self.module.to(device)
