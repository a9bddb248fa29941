"""Samplers on analytic velocity fields with known solutions, in torch and in the numpy runtime."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fewstep.models.contract import Cond
from fewstep.models.samplers import euler, heun, seeded_noise, uniform_timesteps
from fewstep.runtime import euler_np, seeded_noise_np

MU, S = 0.7, 0.3  # data x0 ~ N(MU, S^2 I)


def gaussian_velocity(x: torch.Tensor, t: torch.Tensor, mu: float = MU, s: float = S) -> torch.Tensor:
    """Exact E[eps - x0 | x_t] for Gaussian data: its ODE maps eps at t = 1 to mu + s * eps at t = 0."""
    t = t.view(-1, 1, 1, 1).double()
    var = (1 - t) ** 2 * s**2 + t**2
    return (-mu + (t - (1 - t) * s**2) / var * (x.double() - (1 - t) * mu)).to(x.dtype)


class GaussianFlow:
    def __call__(self, x, t, cond):
        return gaussian_velocity(x, t)


class TwoClassFlow:
    """Condition selects the data mean: text[..., 0] = +1 -> mean +1, -1 -> mean -1, 0 (null) -> mean 0."""

    def __call__(self, x, t, cond):
        mu = cond.text[:, 0, 0].view(-1, 1, 1, 1)
        return torch.cat([gaussian_velocity(x[i : i + 1], t[i : i + 1], float(mu[i]), S) for i in range(len(x))])


def _cond(b: int, value: float = 1.0) -> Cond:
    return Cond(torch.full((b, 1, 1), value))


def _exact(noise: torch.Tensor) -> torch.Tensor:
    return MU + S * noise


def test_euler_and_heun_converge_to_the_exact_solution():
    noise = seeded_noise(list(range(4)), (1, 4, 4)).double()
    errs = {}
    for name, solver in (("euler", euler), ("heun", heun)):
        errs[name] = [
            float((solver(GaussianFlow(), noise, uniform_timesteps(n).double(), _cond(4)) - _exact(noise)).abs().max())
            for n in (4, 8, 16, 32)
        ]
    # Euler is first order (error halves as steps double), Heun second order (quarters)
    assert all(0.35 < b / a < 0.65 for a, b in zip(errs["euler"], errs["euler"][1:], strict=False))
    assert all(0.15 < b / a < 0.35 for a, b in zip(errs["heun"][1:], errs["heun"][2:], strict=False))
    assert errs["heun"][-1] < errs["euler"][-1] / 10


def test_one_step_on_a_straight_field_is_exact():
    """For a point mass (s = 0) the flow is straight, so one Euler step lands exactly on the data."""
    noise = seeded_noise([0, 1], (1, 4, 4)).double()

    def point(x, t, c):
        return gaussian_velocity(x, t, MU, 0.0)

    out = euler(point, noise, uniform_timesteps(1).double(), _cond(2))
    torch.testing.assert_close(out, torch.full_like(out, MU))


def test_cfg_combines_branches_in_the_diffusers_convention():
    noise = seeded_noise([3], (1, 2, 2))
    ts = uniform_timesteps(1)
    cond, null = _cond(1, 1.0), _cond(1, 0.0)
    v_c = TwoClassFlow()(noise, ts[:1], cond)
    v_u = TwoClassFlow()(noise, ts[:1], null)
    for w in (0.0, 1.0, 3.0):
        out = euler(TwoClassFlow(), noise, ts, cond, guidance=w, null_cond=null)
        torch.testing.assert_close(out, noise - (v_u + w * (v_c - v_u)))
    with pytest.raises(ValueError, match="needs null_cond"):
        euler(TwoClassFlow(), noise, ts, cond, guidance=3.0)


def test_timesteps_are_validated():
    noise = torch.zeros(1, 1, 2, 2)
    for bad in (torch.tensor([0.0, 1.0]), torch.tensor([1.0]), torch.tensor([1.5, 0.0])):
        with pytest.raises(ValueError, match="timesteps"):
            euler(GaussianFlow(), noise, bad, _cond(1))
    with pytest.raises(ValueError, match="steps must be >= 1"):
        uniform_timesteps(0)


def test_same_seed_same_noise_in_any_batch_and_in_numpy():
    a = seeded_noise([5, 6, 7], (3, 8, 8))
    b = seeded_noise([7], (3, 8, 8))
    torch.testing.assert_close(a[2:], b, atol=0, rtol=0)
    np.testing.assert_array_equal(a.numpy(), seeded_noise_np([5, 6, 7], (3, 8, 8)))
    assert not torch.allclose(a[0], a[1])


def test_numpy_euler_matches_torch_euler_with_cfg():
    noise = seeded_noise([1, 2], (1, 4, 4))
    ts = uniform_timesteps(4)
    cond, null = _cond(2, 1.0), _cond(2, 0.0)
    ref = euler(TwoClassFlow(), noise, ts, cond, guidance=2.5, null_cond=null)

    def velocity(x, t, c):
        return TwoClassFlow()(torch.from_numpy(x), torch.from_numpy(t), Cond(torch.from_numpy(c["text"]))).numpy()

    out = euler_np(velocity, noise.numpy(), ts.numpy(), {"text": cond.text.numpy()}, 2.5, {"text": null.text.numpy()})
    np.testing.assert_allclose(out, ref.numpy(), atol=1e-6)


def test_numpy_consistency_sampler_matches_torch_and_renoises_per_seed():
    from fewstep.models.samplers import consistency, seeded_renoise
    from fewstep.runtime import consistency_np, renoise_np

    seeds, shape = [3, 4], (1, 4, 4)
    times = torch.tensor([1.0, 0.6, 0.3])
    cond = _cond(2, 1.0)
    ref = consistency(TwoClassFlow(), seeded_noise(seeds, shape), times, cond, seeded_renoise(seeds, shape))

    def velocity(x, t, c):
        return TwoClassFlow()(torch.from_numpy(x), torch.from_numpy(t), Cond(torch.from_numpy(c["text"]))).numpy()

    out = consistency_np(velocity, seeded_noise_np(seeds, shape), times.numpy(), {"text": cond.text.numpy()},
                         lambda i: renoise_np(seeds, shape, i))  # fmt: skip
    np.testing.assert_allclose(out, ref.numpy(), atol=1e-6)
    # re-noising draws differ from the initial noise and between steps, and do not depend on the batch
    assert not np.allclose(renoise_np([3], shape, 0), seeded_noise_np([3], shape))
    assert not np.allclose(renoise_np([3], shape, 0), renoise_np([3], shape, 1))
    np.testing.assert_array_equal(renoise_np([4], shape, 1)[0], renoise_np(seeds, shape, 1)[1])
    # one step = the consistency function at t = 1
    one = consistency(TwoClassFlow(), seeded_noise(seeds, shape), times[:1], cond, seeded_renoise(seeds, shape))
    x = seeded_noise(seeds, shape)
    torch.testing.assert_close(one, x - TwoClassFlow()(x, torch.ones(2), cond))
