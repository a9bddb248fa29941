"""Samplers in numpy for engines: the same arithmetic as `fewstep.models.samplers`, in float32."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np

from fewstep.core.flow_math import cfg_combine, x0_from_velocity

# velocity(x (B, C, H, W), t (B,), cond rows) -> v; `cond` is whatever the engine takes, batched along axis 0
Velocity = Callable[[np.ndarray, np.ndarray, dict[str, np.ndarray]], np.ndarray]


def _cat(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([a[k], b[k]]) for k in a}


def euler_np(
    velocity: Velocity,
    noise: np.ndarray,
    timesteps: np.ndarray,
    cond: dict[str, np.ndarray],
    guidance: float = 1.0,
    null_cond: dict[str, np.ndarray] | None = None,
) -> np.ndarray:
    """Euler in flow time with classifier-free guidance (both branches in one batched call)."""
    ts = np.asarray(timesteps, dtype=np.float32)
    if ts.ndim != 1 or len(ts) < 2 or not np.all(np.diff(ts) < 0):
        raise ValueError(f"timesteps must be a strictly decreasing 1-D array of >= 2 times; got {ts.tolist()}")
    if guidance != 1.0 and null_cond is None:
        raise ValueError("classifier-free guidance != 1 needs null_cond")
    x = noise.astype(np.float32)
    b = x.shape[0]
    for t, s in itertools.pairwise(ts):
        if guidance == 1.0:
            v = velocity(x, np.full(b, t, np.float32), cond)
        else:
            assert null_cond is not None
            both = velocity(np.concatenate([x, x]), np.full(2 * b, t, np.float32), _cat(null_cond, cond))
            v_uncond, v_cond = both[:b], both[b:]
            v = cfg_combine(v_uncond, v_cond, np.float32(guidance))
        x = x + (s - t) * v
    return x


def consistency_np(
    velocity: Velocity,
    noise: np.ndarray,
    times: np.ndarray,
    cond: dict[str, np.ndarray],
    renoise: Callable[[int], np.ndarray],
) -> np.ndarray:
    """Multistep consistency sampling: x0 = x - t v(x, t), then re-noise to the next time with `renoise(i)`."""
    ts = np.asarray(times, dtype=np.float32)
    if ts.ndim != 1 or len(ts) < 1 or not np.all(np.diff(ts) < 0) or ts.min() <= 0 or ts.max() > 1:
        raise ValueError(f"consistency times must be a decreasing 1-D array in (0, 1]; got {ts.tolist()}")
    x = noise.astype(np.float32)
    b = x.shape[0]
    for i, t in enumerate(ts):
        x0: np.ndarray = x0_from_velocity(x, t, velocity(x, np.full(b, t, np.float32), cond))
        if i + 1 < len(ts):
            s = ts[i + 1]
            x = (1 - s) * x0 + s * renoise(i).astype(np.float32)
    return x0


def interval_np(
    velocity: Velocity, noise: np.ndarray, timesteps: np.ndarray, cond: dict[str, np.ndarray]
) -> np.ndarray:
    """Steps of a model that takes its step size: x_s = x_t - h u(x_t, t, h), h = t - s fed as `guidance`."""
    ts = np.asarray(timesteps, dtype=np.float32)
    if ts.ndim != 1 or len(ts) < 2 or not np.all(np.diff(ts) < 0):
        raise ValueError(f"timesteps must be a strictly decreasing 1-D array of >= 2 times; got {ts.tolist()}")
    x = noise.astype(np.float32)
    b = x.shape[0]
    for t, s in itertools.pairwise(ts):
        h = np.float32(t - s)
        x = x - h * velocity(x, np.full(b, t, np.float32), {**cond, "guidance": np.full(b, h, np.float32)})
    return x
