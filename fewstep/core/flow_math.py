"""The flow-matching identities, in one place for torch tensors and numpy arrays alike (docs/concepts/flow-contract.md).

t = 1 is noise, t = 0 is data; the straight path is x_t = (1 - t) x0 + t eps, its velocity v = eps - x0, so
x0 = x_t - t v. Classifier-free guidance in the diffusers convention: v_w = v_uncond + w (v_cond - v_uncond).
Plain arithmetic only: the same function serves the torch samplers and losses and the numpy runtime.
"""

from __future__ import annotations

from typing import Any

# torch.Tensor or numpy.ndarray: the identities are plain arithmetic on either (typed Any: neither library is
# a dependency of this module)
Array = Any


def bcast(t: Any, like: Any) -> Any:
    """A per-sample (B,) value reshaped to (B, 1, 1, ...) to broadcast against `like` (images or toy vectors)."""
    return t.reshape(-1, *([1] * (like.ndim - 1)))


def _per_sample(t: Any, like: Any) -> Any:
    # a scalar time (python float or 0-d) broadcasts as it is; a (B,) time is spread over the other axes
    return t if getattr(t, "ndim", 0) == 0 else bcast(t, like)


def interpolate(x0: Array, eps: Array, t: Any) -> Array:
    """x_t = (1 - t) x0 + t eps: the point at time t on the straight path from data x0 to noise eps."""
    tb = _per_sample(t, x0)
    return (1 - tb) * x0 + tb * eps


def x0_from_velocity(x_t: Array, t: Any, v: Array) -> Array:
    """x0_hat = x_t - t v: where the velocity at (x_t, t) lands at t = 0 (a one-step Euler jump)."""
    return x_t - _per_sample(t, x_t) * v


def cfg_combine(v_uncond: Array, v_cond: Array, w: Any) -> Array:
    """Classifier-free guidance v_uncond + w (v_cond - v_uncond); `w` a scalar or already broadcastable."""
    return v_uncond + w * (v_cond - v_uncond)
