"""Small helpers shared by the method losses."""

from __future__ import annotations

import torch

from fewstep.core.flow_math import bcast, cfg_combine, x0_from_velocity
from fewstep.models.contract import Cond


def x0_prediction(model, x_t: torch.Tensor, t: torch.Tensor, cond: Cond) -> torch.Tensor:
    """x0_hat = x_t - t v(x_t, t), the model's own velocity."""
    return x0_from_velocity(x_t, t, model(x_t, t, cond))


def step_grid(k: int) -> torch.Tensor:
    """The times a k-step Euler student starts its steps from: 1, (k-1)/k, ..., 1/k."""
    return torch.arange(k, 0, -1, dtype=torch.float32) / k


@torch.no_grad()
def cfg_velocity(teacher, x: torch.Tensor, t: torch.Tensor, cond: Cond, w, null: Cond | None) -> torch.Tensor:
    """Teacher velocity with classifier-free guidance; `w` a float or a (B,) tensor (per-sample scales)."""
    if null is None or (not torch.is_tensor(w) and w == 1.0):
        return teacher(x, t, cond)
    nulls = null.to(x.device) if null.batch_size == x.shape[0] else null.to(x.device).repeat(x.shape[0])
    v_u, v_c = teacher(torch.cat([x, x]), torch.cat([t, t]), Cond.cat([nulls, cond])).chunk(2)
    w = bcast(torch.as_tensor(w, dtype=x.dtype, device=x.device).expand(x.shape[0]), x)
    return cfg_combine(v_u, v_c, w)


class FrozenCopy:
    """Keeps a frozen network out of `model.parameters()` of the loss while moving with it."""

    def __init__(self, module: torch.nn.Module):
        self.module = module.eval().requires_grad_(False)

    def __call__(self, *args):
        return self.module(*args)

    def to(self, device) -> None:
        self.module.to(device)
