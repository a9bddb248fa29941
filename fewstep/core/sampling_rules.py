"""What a model's spec says about sampling, in plain Python + numpy (shared by torch pipelines and the runtime).

A spec's `sampler` holds the rule (`euler` on velocity or `consistency` re-noising), its own schedule
(`timesteps`) or `default_steps` (with the time `shift` of SD3-style teachers), the consistency `grid`, and
the guidance mode: `cfg` (two branches), `embedded` (a w input with its trained `range`) or `none` (guidance
baked in at `baked_scale`).
"""

from __future__ import annotations

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


def schedule(sampler: dict, steps: int | None) -> np.ndarray:
    """The model's own schedule (`timesteps`) or `steps` evenly spaced (consistency: on its training grid)."""
    if steps is None:
        if "timesteps" in sampler:
            return np.asarray(sampler["timesteps"], dtype=np.float32)
        steps = int(sampler.get("default_steps", 50))
    if sampler.get("rule") == "consistency":
        return consistency_times(steps, int(sampler.get("grid", 1000)))
    return uniform_times(steps, float(sampler.get("shift", 1.0)))  # SD3-style teachers shift towards noise


def guidance_mode(sampler: dict) -> str:
    return sampler.get("guidance", {"mode": "cfg"}).get("mode", "cfg")


def resolve_guidance(sampler: dict, guidance: float | None) -> float:
    """Check a requested CFG scale against the model's guidance mode; None -> its default."""
    g = sampler.get("guidance", {"mode": "cfg"})
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
