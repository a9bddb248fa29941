"""What a model's spec says about sampling, in plain Python + numpy (shared by torch pipelines and the runtime).

A spec's `sampler` holds the rule (`euler` on velocity, `consistency` re-noising, or `interval`: Euler steps whose
size h = t - s is the model's scalar input, for average-velocity and shortcut students), its own schedule
(`timesteps`) or `default_steps` (with the time `shift` of SD3-style teachers), the consistency `grid`, and
the guidance mode: `cfg` (two branches), `embedded` (a w input with its trained `range`) or `none` (guidance
baked in at `baked_scale`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

MAX_STEPS = 1000
MAX_GUIDANCE = 30.0
MAX_SEED = 2**63 - 1
MAX_PROMPT_CHARS = 10_000  # far beyond any text encoder's token limit; bounds the tokenizer's work


def uniform_times(steps: int, shift: float = 1.0) -> np.ndarray:
    """`steps + 1` float32 times from 1 to 0; `shift` > 1 spends more steps near noise (SD3's time shift)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1; got {steps}")
    t = np.linspace(1.0, 0.0, steps + 1, dtype=np.float64)
    return (shift * t / (1 + (shift - 1) * t)).astype(np.float32)


def consistency_times(steps: int, grid: int) -> np.ndarray:
    """`steps` consistency sampling times from 1 down, evenly spaced, snapped to the training grid n / grid."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1; got {steps}")
    return np.array([round(grid * (1 - i / steps)) / grid for i in range(steps)], dtype=np.float32)


RULES = ("euler", "consistency", "interval")
# rules whose model takes the step size as its scalar input (the `guidance` port: a time_cond_proj embedding)
STEP_SIZE_RULES = ("interval",)
GUIDANCE_MODES = ("cfg", "embedded", "none")


@dataclass(frozen=True)
class Guidance:
    """How a model is guided: `cfg` (two branches per step, any scale), `embedded` (a w input, scales in its
    trained `range`) or `none` (baked in at `baked_scale`: one pass, no scale to choose)."""

    mode: str = "cfg"
    default_scale: float | None = None
    range: tuple[float, float] | None = None
    baked_scale: float | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mode": self.mode}
        if self.default_scale is not None:
            out["default_scale"] = self.default_scale
        if self.range is not None:
            out["range"] = list(self.range)
        if self.baked_scale is not None:
            out["baked_scale"] = self.baked_scale
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Guidance:
        mode = data.get("mode", "cfg")
        if mode not in GUIDANCE_MODES:
            raise ValueError(f"guidance mode {mode!r} is not one of {', '.join(GUIDANCE_MODES)}")
        rng = data.get("range")
        if rng is not None and (not isinstance(rng, (list, tuple)) or len(rng) != 2):
            raise ValueError(f"guidance range must be [low, high]; got {rng!r}")
        scale, baked = data.get("default_scale"), data.get("baked_scale")
        pair = None if rng is None else (float(rng[0]), float(rng[1]))
        return cls(mode, None if scale is None else float(scale), pair, None if baked is None else float(baked))


@dataclass(frozen=True)
class Sampler:
    """What a model's spec (and a bundle's manifest) says about sampling: the rule, its own schedule or default
    step count (with SD3's `shift`), the consistency `grid`, and the guidance mode."""

    rule: str = "euler"
    timesteps: tuple[float, ...] | None = None
    default_steps: int | None = None
    grid: int | None = None
    shift: float | None = None
    guidance: Guidance = Guidance()
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, sampler: Sampler | Mapping[str, Any]) -> Sampler:
        return sampler if isinstance(sampler, Sampler) else cls.from_dict(sampler)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Sampler:
        rule = data.get("rule", "euler")
        if rule not in RULES:
            raise ValueError(f"sampler rule {rule!r} is not one of {', '.join(RULES)}")
        times = data.get("timesteps")
        if times is not None and not (isinstance(times, (list, tuple)) and all(
                isinstance(t, (int, float)) and not isinstance(t, bool) for t in times)):  # fmt: skip
            raise ValueError(f"sampler timesteps must be a list of numbers; got {times!r}")
        g = data.get("guidance", {"mode": "cfg"})
        if not isinstance(g, Mapping):
            raise ValueError(f"sampler guidance must be an object; got {g!r}")
        known = {"rule", "timesteps", "default_steps", "grid", "shift", "guidance"}
        steps, grid, shift = data.get("default_steps"), data.get("grid"), data.get("shift")
        return cls(rule, None if times is None else tuple(float(t) for t in times),
                   None if steps is None else int(steps), None if grid is None else int(grid),
                   None if shift is None else float(shift), Guidance.from_dict(g),
                   {k: v for k, v in data.items() if k not in known})  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"rule": self.rule}
        if self.timesteps is not None:
            out["timesteps"] = list(self.timesteps)
        for name in ("default_steps", "grid", "shift"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        return {**out, "guidance": self.guidance.to_dict(), **self.extra}

    def schedule(self, steps: int | None) -> np.ndarray:
        """The model's own schedule (`timesteps`) or `steps` evenly spaced (consistency: on its training grid)."""
        if steps is None:
            if self.timesteps is not None:
                return np.asarray(self.timesteps, dtype=np.float32)
            steps = self.default_steps or 50
        if self.rule == "consistency":
            return consistency_times(steps, self.grid or 1000)
        return uniform_times(steps, self.shift or 1.0)  # SD3-style teachers shift towards noise

    def steps(self, steps: int | None = None) -> int:
        """Denoiser steps of `schedule(steps)` (Euler schedules end with t = 0, consistency ones do not)."""
        return len(self.schedule(steps)) - (0 if self.rule == "consistency" else 1)

    def resolve_guidance(self, guidance: float | None) -> float:
        """Check a requested CFG scale against the guidance mode; None -> the default."""
        g = self.guidance
        if g.mode == "none":
            if guidance not in (None, 1.0):
                baked = "?" if g.baked_scale is None else g.baked_scale
                raise ValueError(f"this model has guidance baked in (scale {baked}); it takes no --guidance")
            return 1.0
        w = (g.default_scale if g.default_scale is not None else 1.0) if guidance is None else float(guidance)
        if g.mode == "embedded":
            lo, hi = g.range or (0.0, MAX_GUIDANCE)
            if not lo <= w <= hi:
                raise ValueError(f"this student learned guidance scales in [{lo}, {hi}]; got {w}")
        return w


def schedule(sampler: Sampler | Mapping[str, Any], steps: int | None) -> np.ndarray:
    """The model's own schedule (`timesteps`) or `steps` evenly spaced (consistency: on its training grid)."""
    return Sampler.parse(sampler).schedule(steps)


def guidance_mode(sampler: Sampler | Mapping[str, Any]) -> str:
    return Sampler.parse(sampler).guidance.mode


def resolve_guidance(sampler: Sampler | Mapping[str, Any], guidance: float | None) -> float:
    """Check a requested CFG scale against the model's guidance mode; None -> its default."""
    return Sampler.parse(sampler).resolve_guidance(guidance)


def validate_request(prompts: list[str], seeds: list[int], steps: int, guidance: float) -> None:
    if not prompts:
        raise ValueError("give at least one prompt")
    for i, p in enumerate(prompts, 1):
        if not isinstance(p, str):
            raise ValueError(f"prompt {i} is a {type(p).__name__}, not text")
        if len(p) > MAX_PROMPT_CHARS:
            raise ValueError(f"prompt {i} is {len(p):,} characters; at most {MAX_PROMPT_CHARS:,} (the text encoder "
                             "reads only its first tokens anyway)")  # fmt: skip
    if len(seeds) != len(prompts):
        raise ValueError(f"got {len(prompts)} prompts but {len(seeds)} seeds; give one seed per prompt")
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or not 1 <= steps <= MAX_STEPS:
        raise ValueError(f"steps must be an integer in [1, {MAX_STEPS}]; got {steps!r}")
    if not 0.0 <= guidance <= MAX_GUIDANCE or guidance != guidance:
        raise ValueError(f"guidance must be in [0, {MAX_GUIDANCE}] (1 = off); got {guidance!r}")
    for s in seeds:
        if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or not 0 <= int(s) <= MAX_SEED:
            raise ValueError(f"seeds must be integers in [0, 2^63 - 1]; got {s!r}")
