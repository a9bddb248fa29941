"""2-D toy problems with a known answer: a Gaussian-mixture data distribution and its analytic flow.

Vectors are stored as (B, 2, 1, 1) images so that every loss and sampler runs unchanged. The condition is
a one-hot class in `cond.text[:, 0]` (all zeros = the null prompt): the conditional field is one Gaussian's,
the unconditional field the whole mixture's, so classifier-free guidance is meaningful.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from fewstep.compress.trainer import LoopConfig, TrainingLoop, read_metrics
from fewstep.models.contract import Cond

MEANS = torch.tensor([[-2.0, 0.0], [2.0, 0.0]])
STD = 0.3


def cond_of(classes: torch.Tensor, n_classes: int = 2) -> Cond:
    """One-hot classes (-1 = null prompt) -> Cond with one 'token'."""
    text = torch.zeros(len(classes), 1, n_classes)
    keep = classes >= 0
    text[keep, 0, classes[keep]] = 1.0
    return Cond(text, torch.ones(len(classes), 1))


class MixtureFlow(nn.Module):
    """Exact velocity E[eps - x0 | x_t] of the mixture (null cond) or of the class's Gaussian (one-hot)."""

    def __init__(self, means: torch.Tensor = MEANS, std: float = STD):
        super().__init__()
        self.register_buffer("means", means)
        self.std = std

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: Cond) -> torch.Tensor:
        x2, tb = x.flatten(1), t.view(-1, 1, 1)
        mu = self.means[None]  # (1, K, 2)
        v_var = (1 - tb) ** 2 * self.std**2 + tb**2  # (B, 1, 1)
        r = x2[:, None] - (1 - tb) * mu  # (B, K, 2)
        e_eps = tb * r / v_var
        e_x0 = mu + (1 - tb) * self.std**2 * r / v_var
        logits = -(r**2).sum(-1) / (2 * v_var[..., 0])  # equal weights and variances
        onehot = cond.text[:, 0, :]
        weights = torch.where(onehot.sum(1, keepdim=True) > 0, onehot, torch.softmax(logits, dim=1))
        v = (weights[..., None] * (e_eps - e_x0)).sum(1)
        return v.view_as(x)


class ToyMLP(nn.Module):
    """v(x, t, class[, w]) for 2-D points; learns any of the toy fields."""

    def __init__(self, n_classes: int = 2, guidance_input: bool = False, width: int = 128):
        super().__init__()
        self.guidance_input = guidance_input
        d_in = 2 + 8 + n_classes + (4 if guidance_input else 0)
        self.net = nn.Sequential(
            nn.Linear(d_in, width), nn.SiLU(), nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width),
            nn.SiLU(), nn.Linear(width, 2),
        )  # fmt: skip

    @staticmethod
    def _fourier(v: torch.Tensor, n: int) -> torch.Tensor:
        f = torch.arange(1, n // 2 + 1, dtype=v.dtype) * math.pi
        return torch.cat([torch.sin(v[:, None] * f), torch.cos(v[:, None] * f)], 1)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: Cond) -> torch.Tensor:
        parts = [x.flatten(1), self._fourier(t, 8), cond.text[:, 0, :]]
        if self.guidance_input:
            parts.append(self._fourier(cond.guidance / 8, 4))
        return self.net(torch.cat(parts, 1)).view_as(x)


def sample_data(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(x0 (n, 2, 1, 1), classes (n,)) from the mixture."""
    classes = torch.randint(0, len(MEANS), (n,), generator=generator)
    x0 = MEANS[classes] + STD * torch.randn(n, 2, generator=generator)
    return x0.view(n, 2, 1, 1), classes


@torch.no_grad()
def ode(model, noise: torch.Tensor, cond: Cond, steps: int = 64, guidance: float = 1.0, null=None) -> torch.Tensor:
    from fewstep.models.samplers import heun, uniform_timesteps

    return heun(model, noise, uniform_timesteps(steps), cond, guidance, null)


def train(model, loss, batch_fn, steps: int, out: Path, lr: float = 2e-3, batch: int = 256, ema: float = 0.99):
    """Train a toy with the real loop; returns (EMA model, [loss per logged window])."""
    cfg = LoopConfig(steps=steps, batch_size=batch, lr=lr, warmup_steps=10, ema_decay=ema, checkpoint_every=10**6,
                     sample_every=0, log_every=10, grad_clip=1.0)  # fmt: skip
    loop = TrainingLoop(model, loss, batch_fn, cfg, out, lambda *a: None)
    ema_model = loop.run(progress=False)
    return ema_model, [m["loss"] for m in read_metrics(out)]


def decreased(losses: list[float]) -> bool:
    q = max(1, len(losses) // 4)
    return sum(losses[-q:]) / q < sum(losses[:q]) / q
