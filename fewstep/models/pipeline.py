"""Prompts + seeds -> images with a torch flow model: the reference every engine is compared against."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from .contract import FlowModel
from .datasets import to_uint8
from .loading import load_model
from .samplers import get_sampler, seeded_noise, uniform_timesteps
from .text_encoders import TextEncoder, load_text_encoder

MAX_STEPS = 1000
MAX_GUIDANCE = 30.0
MAX_SEED = 2**63 - 1


def validate_request(prompts: list[str], seeds: list[int], steps: int, guidance: float) -> None:
    if not prompts:
        raise ValueError("give at least one prompt")
    if len(seeds) != len(prompts):
        raise ValueError(f"got {len(prompts)} prompts but {len(seeds)} seeds; give one seed per prompt")
    if not isinstance(steps, int) or not 1 <= steps <= MAX_STEPS:
        raise ValueError(f"steps must be an integer in [1, {MAX_STEPS}]; got {steps!r}")
    if not 0.0 <= guidance <= MAX_GUIDANCE or guidance != guidance:
        raise ValueError(f"guidance must be in [0, {MAX_GUIDANCE}] (1 = off); got {guidance!r}")
    for s in seeds:
        if not isinstance(s, (int, np.integer)) or not 0 <= int(s) <= MAX_SEED:
            raise ValueError(f"seeds must be integers in [0, 2^63 - 1]; got {s!r}")


class TorchPipeline:
    """A flow model, its text encoder and its spec; `generate` is deterministic per (prompt, seed)."""

    def __init__(self, model: FlowModel, spec: dict, encoder: TextEncoder):
        self.model, self.spec, self.encoder = model, spec, encoder
        img = spec["image"]
        self.shape = (img["channels"], img["height"], img["width"])

    @classmethod
    def from_checkpoint(cls, name_or_path: str | Path) -> TorchPipeline:
        model, spec = load_model(name_or_path)
        return cls(model, spec, load_text_encoder(spec["text_encoder"]))

    @property
    def default_guidance(self) -> float:
        return float(self.spec["sampler"]["guidance"].get("default_scale", 1.0))

    @torch.no_grad()
    def generate(
        self,
        prompts: list[str],
        seeds: list[int],
        steps: int = 50,
        guidance: float | None = None,
        sampler: str = "euler",
        batch_size: int = 64,
        on_batch: Callable[[int], None] | None = None,
    ) -> np.ndarray:
        """-> uint8 (N, H, W, C)."""
        guidance = self.default_guidance if guidance is None else float(guidance)
        validate_request(prompts, seeds, steps, guidance)
        solve = get_sampler(sampler)
        timesteps = uniform_timesteps(steps)
        out = []
        for i in range(0, len(prompts), batch_size):
            p, s = prompts[i : i + batch_size], seeds[i : i + batch_size]
            cond = self.encoder.encode(p)
            null = self.encoder.null(len(p)) if guidance != 1.0 else None
            x = solve(self.model, seeded_noise(s, self.shape), timesteps, cond, guidance, null)
            out.append(to_uint8(x.numpy()))
            if on_batch:
                on_batch(len(p))
        return np.concatenate(out)
