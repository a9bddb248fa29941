"""Prompts + seeds -> images with a torch flow model: the reference every engine is compared against."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from .contract import FlowModel
from .datasets import to_uint8
from .loading import load_model
from .samplers import consistency, consistency_timesteps, get_sampler, seeded_noise, seeded_renoise, uniform_timesteps
from .text_encoders import TextEncoder, load_text_encoder

MAX_STEPS = 1000
MAX_GUIDANCE = 30.0
MAX_SEED = 2**63 - 1


def sampling_times(spec: dict, steps: int | None) -> torch.Tensor:
    """The model's own schedule (spec['sampler']['timesteps']) or `steps` evenly spaced (consistency: on its grid)."""
    sampler = spec["sampler"]
    if steps is None:
        if "timesteps" in sampler:
            return torch.tensor(sampler["timesteps"], dtype=torch.float32)
        steps = int(sampler.get("default_steps", 50))
    if sampler.get("rule") == "consistency":
        return consistency_timesteps(steps, int(sampler.get("grid", 1000)))
    return uniform_timesteps(steps)


def resolve_guidance(spec: dict, guidance: float | None) -> float:
    """Check a requested CFG scale against the model's guidance mode; None -> its default."""
    g = spec["sampler"].get("guidance", {"mode": "cfg"})
    mode = g.get("mode", "cfg")
    if mode == "none":
        if guidance not in (None, 1.0):
            raise ValueError(
                f"this model has guidance baked in (scale {g.get('baked_scale', '?')}); it takes no --guidance"
            )
        return 1.0
    w = float(g.get("default_scale", 1.0)) if guidance is None else float(guidance)
    if mode == "embedded":
        lo, hi = g.get("range", [0.0, MAX_GUIDANCE])
        if not lo <= w <= hi:
            raise ValueError(f"this student learned guidance scales in [{lo}, {hi}]; got {w}")
    return w


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
        return resolve_guidance(self.spec, None)

    @property
    def guidance_mode(self) -> str:
        return self.spec["sampler"].get("guidance", {}).get("mode", "cfg")

    @torch.no_grad()
    def sample(
        self, cond, seeds: list[int], times: torch.Tensor, guidance: float, sampler: str | None = None
    ) -> torch.Tensor:
        """Run the model's sampler rule on encoded prompts -> x0 (B, C, H, W) in [-1, 1]."""
        noise = seeded_noise(seeds, self.shape)
        if self.spec["sampler"].get("rule") == "consistency":
            return consistency(self.model, noise, times, cond, seeded_renoise(seeds, self.shape))
        if self.guidance_mode == "embedded":
            return get_sampler(sampler or "euler")(self.model, noise, times, cond.with_guidance(guidance))
        null = self.encoder.null(len(seeds)) if guidance != 1.0 else None
        return get_sampler(sampler or "euler")(self.model, noise, times, cond, guidance, null)

    @torch.no_grad()
    def generate(
        self,
        prompts: list[str],
        seeds: list[int],
        steps: int | None = None,
        guidance: float | None = None,
        sampler: str | None = None,
        batch_size: int = 64,
        on_batch: Callable[[int], None] | None = None,
    ) -> np.ndarray:
        """-> uint8 (N, H, W, C). `steps` None = the model's own schedule (a student's trained steps)."""
        guidance = resolve_guidance(self.spec, guidance)
        validate_request(prompts, seeds, 1 if steps is None else steps, guidance)
        if sampler is not None:
            get_sampler(sampler)  # unknown names fail before any work
            if self.spec["sampler"].get("rule") == "consistency":
                raise ValueError("a consistency model samples with its own rule; leave --sampler out")
        times = sampling_times(self.spec, steps)
        out = []
        for i in range(0, len(prompts), batch_size):
            p, s = prompts[i : i + batch_size], seeds[i : i + batch_size]
            x = self.sample(self.encoder.encode(p), s, times, guidance, sampler)
            out.append(to_uint8(x.numpy()))
            if on_batch:
                on_batch(len(p))
        return np.concatenate(out)
