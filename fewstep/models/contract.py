"""The one model contract: `v = model(x, t, cond)` (docs/concepts/flow-contract.md: t = 1 is noise, t = 0 is data).

Every teacher, student, adapter and engine satisfies it; samplers and losses accept nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Protocol, runtime_checkable

import torch


@dataclass(frozen=True)
class Cond:
    """Conditioning for a batch.

    text: (B, L, D) token states of the text encoder; text_mask: (B, L), 1 = real token, 0 = padding;
    pooled: (B, P) pooled text embedding where the model uses one (SDXL-style), else None;
    guidance: (B,) guidance scale for students with an *embedded* guidance input, else None;
    extra_ids: (B, K) SDXL-style micro-conditioning (original size, crop top-left, target size), else None.
    """

    text: torch.Tensor
    text_mask: torch.Tensor | None = None
    pooled: torch.Tensor | None = None
    guidance: torch.Tensor | None = None
    extra_ids: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.text.ndim != 3:
            raise ValueError(f"Cond.text must have shape (B, L, D); got {tuple(self.text.shape)}")
        b, length = self.text.shape[:2]
        if self.text_mask is not None and tuple(self.text_mask.shape) != (b, length):
            raise ValueError(f"Cond.text_mask must have shape {(b, length)}; got {tuple(self.text_mask.shape)}")
        if self.pooled is not None and (self.pooled.ndim != 2 or self.pooled.shape[0] != b):
            raise ValueError(f"Cond.pooled must have shape ({b}, P); got {tuple(self.pooled.shape)}")
        if self.guidance is not None and tuple(self.guidance.shape) != (b,):
            raise ValueError(f"Cond.guidance must have shape ({b},); got {tuple(self.guidance.shape)}")
        if self.extra_ids is not None and (self.extra_ids.ndim != 2 or self.extra_ids.shape[0] != b):
            raise ValueError(f"Cond.extra_ids must have shape ({b}, K); got {tuple(self.extra_ids.shape)}")

    @property
    def batch_size(self) -> int:
        return self.text.shape[0]

    def _map(self, fn) -> Cond:
        return Cond(*(None if f is None else fn(f) for f in self._fields()))

    def _fields(self) -> tuple:
        return self.text, self.text_mask, self.pooled, self.guidance, self.extra_ids

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> Cond:
        moved = self._map(lambda f: f.to(device))
        if dtype is None:
            return moved
        return replace(
            moved, text=moved.text.to(dtype), pooled=None if moved.pooled is None else moved.pooled.to(dtype)
        )

    def index(self, idx: torch.Tensor | slice) -> Cond:
        return self._map(lambda f: f[idx])

    def repeat(self, n: int) -> Cond:
        """Each row repeated n times (row-major), e.g. several seeds per prompt."""
        return self._map(lambda f: f.repeat_interleave(n, dim=0))

    @staticmethod
    def cat(conds: list[Cond]) -> Cond:
        fields = list(zip(*(c._fields() for c in conds), strict=True))
        return Cond(*(None if any(x is None for x in f) else torch.cat(f) for f in fields))

    def with_guidance(self, w: float | torch.Tensor) -> Cond:
        g = torch.as_tensor(w, dtype=torch.float32, device=self.text.device).expand(self.batch_size).clone()
        return replace(self, guidance=g)


@runtime_checkable
class FlowModel(Protocol):
    """`forward(x (B, C, H, W), t (B,) in [0, 1], cond) -> v (B, C, H, W)`, the velocity `eps - x0`."""

    def __call__(self, x: torch.Tensor, t: torch.Tensor, cond: Cond) -> torch.Tensor: ...


def check_inputs(x: torch.Tensor, t: torch.Tensor, cond: Cond, channels: int | None = None) -> None:
    """Shape checks every model runs at its boundary; messages say what was expected."""
    if x.ndim != 4:
        raise ValueError(f"x must have shape (B, C, H, W); got {tuple(x.shape)}")
    if channels is not None and x.shape[1] != channels:
        raise ValueError(f"x must have {channels} channels; got {x.shape[1]} (shape {tuple(x.shape)})")
    if t.ndim != 1 or t.shape[0] != x.shape[0]:
        raise ValueError(f"t must have shape [batch_size] = [{x.shape[0]}]; got {tuple(t.shape)}")
    if cond.batch_size != x.shape[0]:
        raise ValueError(f"cond has batch {cond.batch_size} but x has batch {x.shape[0]}")
