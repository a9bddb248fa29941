"""Seeded initial noise shared by the torch pipeline and the torch-free runtime (numpy only).

Noise comes from numpy's PCG64 generator, one stream per seed, so the same (prompt, seed) gives the same
image in torch, ONNX Runtime or any other backend, and does not depend on the batch it was drawn in.
"""

from __future__ import annotations

import numpy as np


def seeded_noise_np(seeds: list[int], shape: tuple[int, ...]) -> np.ndarray:
    """float32 (len(seeds), *shape), N(0, I), one independent stream per seed."""
    return np.stack([np.random.default_rng(int(s)).standard_normal(shape, dtype=np.float32) for s in seeds])


def renoise_np(seeds: list[int], shape: tuple[int, ...], step: int) -> np.ndarray:
    """Fresh noise for re-noising step `step` (>= 0) of a multistep consistency sampler; never the initial noise."""
    return np.stack([np.random.default_rng([int(s), step + 1]).standard_normal(shape, dtype=np.float32) for s in seeds])
