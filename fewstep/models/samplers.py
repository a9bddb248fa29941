"""Stateless ODE samplers on the flow contract; timesteps are data (a decreasing 1-D tensor ending at 0).

`sample(model, noise, timesteps, cond, guidance=w, null_cond=...) -> x0`. Classifier-free guidance in the
diffusers convention: `v_w = v_uncond + w (v_cond - v_uncond)`, both branches in one batched call.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from fewstep.core.flow_math import bcast, cfg_combine, x0_from_velocity
from fewstep.core.noise import renoise_np, seeded_noise_np
from fewstep.core.sampling_rules import consistency_times, uniform_times
from fewstep.models.contract import Cond, FlowModel

Callback = Callable[[int, int], None]  # (step index, number of steps)


def uniform_timesteps(steps: int, shift: float = 1.0) -> torch.Tensor:
    """`steps + 1` times from 1 to 0; `shift` > 1 spends more steps near noise (SD3's time shift)."""
    return torch.from_numpy(uniform_times(steps, shift))


def consistency_timesteps(steps: int, grid: int) -> torch.Tensor:
    """`steps` consistency sampling times from 1 down, evenly spaced, snapped to the training grid n / grid."""
    return torch.from_numpy(consistency_times(steps, grid))


def check_timesteps(timesteps: torch.Tensor) -> None:
    if timesteps.ndim != 1 or timesteps.numel() < 2:
        raise ValueError(f"timesteps must be a 1-D tensor of >= 2 times; got shape {tuple(timesteps.shape)}")
    if not bool((timesteps[1:] < timesteps[:-1]).all()):
        raise ValueError(f"timesteps must decrease strictly (noise -> data); got {timesteps.tolist()}")
    if float(timesteps.max()) > 1.0 or float(timesteps.min()) < 0.0:
        raise ValueError(f"timesteps must lie in [0, 1]; got {timesteps.tolist()}")


def guided_velocity(
    model: FlowModel,
    x: torch.Tensor,
    t: float | torch.Tensor,
    cond: Cond,
    guidance: float = 1.0,
    null_cond: Cond | None = None,
) -> torch.Tensor:
    """Velocity at (x, t) with classifier-free guidance `guidance` (1 = off; needs `null_cond` otherwise)."""
    tb = torch.as_tensor(t, dtype=x.dtype, device=x.device).expand(x.shape[0])
    if guidance == 1.0:
        return model(x, tb, cond)
    if null_cond is None:
        raise ValueError("classifier-free guidance != 1 needs null_cond (the empty-prompt condition)")
    v_uncond, v_cond = model(torch.cat([x, x]), torch.cat([tb, tb]), Cond.cat([null_cond, cond])).chunk(2)
    return cfg_combine(v_uncond, v_cond, guidance)


@torch.no_grad()
def euler(
    model: FlowModel,
    noise: torch.Tensor,
    timesteps: torch.Tensor,
    cond: Cond,
    guidance: float = 1.0,
    null_cond: Cond | None = None,
    callback: Callback | None = None,
) -> torch.Tensor:
    """Euler in flow time: x_s = x_t + (s - t) v(x_t, t)."""
    check_timesteps(timesteps)
    x = noise
    n = len(timesteps) - 1
    for i in range(n):
        t, s = timesteps[i], timesteps[i + 1]
        x = x + (s - t) * guided_velocity(model, x, t, cond, guidance, null_cond)
        if callback:
            callback(i, n)
    return x


@torch.no_grad()
def heun(
    model: FlowModel,
    noise: torch.Tensor,
    timesteps: torch.Tensor,
    cond: Cond,
    guidance: float = 1.0,
    null_cond: Cond | None = None,
    callback: Callback | None = None,
) -> torch.Tensor:
    """Heun's 2nd-order method (EDM Alg. 1); the last step to t = 0 is an Euler step."""
    check_timesteps(timesteps)
    x = noise
    n = len(timesteps) - 1
    for i in range(n):
        t, s = timesteps[i], timesteps[i + 1]
        v = guided_velocity(model, x, t, cond, guidance, null_cond)
        x_euler = x + (s - t) * v
        if s > 0:
            v2 = guided_velocity(model, x_euler, s, cond, guidance, null_cond)
            x = x + (s - t) * 0.5 * (v + v2)
        else:
            x = x_euler
        if callback:
            callback(i, n)
    return x


@torch.no_grad()
def consistency(
    model: FlowModel,
    noise: torch.Tensor,
    times: torch.Tensor,
    cond: Cond,
    renoise: Callable[[int], torch.Tensor],
    callback: Callback | None = None,
) -> torch.Tensor:
    """Multistep consistency sampling: x0 = f(x, t_i) = x - t_i v(x, t_i), then x = (1 - t_{i+1}) x0 +
    t_{i+1} renoise(i) with fresh noise, for the decreasing `times` (no trailing 0)."""
    if times.ndim != 1 or times.numel() < 1 or not bool((times[1:] < times[:-1]).all()):
        raise ValueError(f"consistency times must be a decreasing 1-D tensor; got {times.tolist()}")
    if float(times.min()) <= 0.0 or float(times.max()) > 1.0:
        raise ValueError(f"consistency times must lie in (0, 1]; got {times.tolist()}")
    x = noise
    for i, t in enumerate(times):
        tb = t.to(x.dtype).expand(x.shape[0])
        x0 = x0_from_velocity(x, t, model(x, tb, cond))
        if i + 1 < len(times):
            s = times[i + 1]
            x = (1 - s) * x0 + s * renoise(i).to(x)
        if callback:
            callback(i, len(times))
    return x0


@torch.no_grad()
def interval(
    model: FlowModel, noise: torch.Tensor, timesteps: torch.Tensor, cond: Cond, callback: Callback | None = None
) -> torch.Tensor:
    """Steps of a model that takes its step size: from t to s, x_s = x_t - h u(x_t, t, h) with h = t - s given
    as the scalar input (`cond.guidance`): MeanFlow's average velocity, a shortcut model's shortcut."""
    check_timesteps(timesteps)
    x, n = noise, len(timesteps) - 1
    for i in range(n):
        t, s = timesteps[i].to(x.dtype), timesteps[i + 1].to(x.dtype)
        h = (t - s).expand(x.shape[0])
        x = x - bcast(h, x) * model(x, t.expand(x.shape[0]), cond.with_guidance(h))
        if callback:
            callback(i, n)
    return x


def seeded_renoise(seeds: list[int], shape: tuple[int, int, int]) -> Callable[[int], torch.Tensor]:
    """Re-noising draws of the consistency sampler, identical to the runtime's."""
    return lambda step: torch.from_numpy(renoise_np(seeds, shape, step))


SAMPLERS: dict[str, Callable[..., torch.Tensor]] = {"euler": euler, "heun": heun}


def get_sampler(name: str) -> Callable[..., torch.Tensor]:
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")
    return SAMPLERS[name]


def seeded_noise(seeds: list[int], shape: tuple[int, int, int]) -> torch.Tensor:
    """One independent N(0, I) image per seed, identical to the runtime's (numpy PCG64, see fewstep.core.noise)."""
    return torch.from_numpy(seeded_noise_np(seeds, shape))
