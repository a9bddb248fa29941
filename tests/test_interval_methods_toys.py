"""MeanFlow and shortcut models on toys with a known answer: the exact average velocity of a Gaussian's flow
makes both losses' targets exact, and trained toy students reach the teacher's ODE map in one step."""

from __future__ import annotations

import torch

from fewstep.compress.distributed import StepRandom
from fewstep.compress.methods.meanflow import MeanFlowLoss, adaptive_weighted, interval_times
from fewstep.compress.methods.shortcut import ShortcutLoss, bootstrap_steps
from fewstep.models.samplers import euler, interval, uniform_timesteps
from tests.toys import MixtureFlow, ToyMLP, cond_of, decreased, ode, sample_data, train

MU, S = torch.tensor([1.5, -0.5]), 0.4  # one Gaussian: its flow's trajectories are known in closed form
NULL = cond_of(torch.tensor([-1]), n_classes=1)  # the one-Gaussian field has one class


def _sigma(t: torch.Tensor) -> torch.Tensor:
    return ((1 - t) ** 2 * S**2 + t**2).sqrt()


class ExactGaussianAverageVelocity(torch.nn.Module):
    """u(z_t, t, h) for x0 ~ N(MU, S^2): the ODE path is z_t = (1 - t) MU + sigma(t) n with n fixed, so
    u = (z_t - z_{t-h}) / h = -MU + (sigma(t) - sigma(t - h)) / h n, and sigma'(t) n - MU at h = 0."""

    def forward(self, z: torch.Tensor, t: torch.Tensor, cond) -> torch.Tensor:
        h = cond.guidance
        tb, hb = t.view(-1, 1, 1, 1), h.view(-1, 1, 1, 1)
        mu = MU.view(1, 2, 1, 1)
        n = (z - (1 - tb) * mu) / _sigma(tb)
        small = hb < 1e-4
        safe = torch.where(small, torch.ones_like(hb), hb)
        slope = torch.where(small, (tb - (1 - tb) * S**2) / _sigma(tb), (_sigma(tb) - _sigma(tb - safe)) / safe)
        return -mu + slope * n


def _gaussian_batch(b: int = 512, seed: int = 0):
    x0 = MU.view(1, 2, 1, 1) + S * torch.randn(b, 2, 1, 1, generator=torch.Generator().manual_seed(seed))
    return x0, NULL.repeat(b)


def test_exact_average_velocity_is_the_fixed_point_of_the_meanflow_target():
    teacher, exact = MixtureFlow(MU[None], S), ExactGaussianAverageVelocity()
    x0, cond = _gaussian_batch()
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
    t, r = interval_times(len(x0), "uniform", 1.0, StepRandom(0, 0))
    z = (1 - t.view(-1, 1, 1, 1)) * x0 + t.view(-1, 1, 1, 1) * eps
    v = teacher(z, t, cond)
    loss = MeanFlowLoss(teacher, None, guidance=1.0)
    u, u_tgt = loss.target(exact, z, t, r, cond, v)
    assert float((t - r).min()) >= 0 and float((t - r).mean()) > 0.2  # real intervals, not r = t
    assert torch.allclose(u, u_tgt, atol=2e-3), float((u - u_tgt).abs().max())
    # the instantaneous velocity used as u is wrong for h > 0: the identity's correction term says so
    u_wrong, tgt_wrong = loss.target(lambda z_, t_, c: teacher(z_, t_, c), z, t, r, cond, v)
    assert float((u_wrong - tgt_wrong).pow(2).mean()) > 100 * float((u - u_tgt).pow(2).mean())
    # one step of the exact u is the exact ODE map
    one = interval(exact, eps, uniform_timesteps(1), cond)
    assert torch.allclose(one, ode(teacher, eps, cond, steps=256), atol=1e-3)


def test_exact_average_velocity_is_the_fixed_point_of_the_shortcut_target():
    teacher, exact = MixtureFlow(MU[None], S), ExactGaussianAverageVelocity()
    x0, cond = _gaussian_batch()
    t, big = bootstrap_steps(len(x0), 128, StepRandom(0, 0))
    assert set((1 / big).round().int().tolist()) == {1, 2, 4, 8, 16, 32, 64}
    assert bool(((t - big) >= -1e-6).all()) and bool((t <= 1).all())  # both half steps stay in [0, 1]
    z = (1 - t.view(-1, 1, 1, 1)) * x0 + t.view(-1, 1, 1, 1) * torch.randn_like(x0)
    loss = ShortcutLoss(teacher, None, guidance=1.0, max_steps=128)
    target = loss.bootstrap_target(exact, z, t, big, cond)
    coarse = big >= 1 / 32  # at the finest levels the half steps ask d = 0 and the two-step Euler error is ~d^2
    assert torch.allclose(exact(z, t, cond.with_guidance(big))[coarse], target[coarse], atol=2e-3)


def test_adaptive_weight_turns_squared_errors_into_a_bounded_loss():
    sq = torch.tensor([0.0, 1.0, 100.0])
    assert torch.allclose(adaptive_weighted(sq, 0.0), sq.mean())
    assert float(adaptive_weighted(sq, 1.0)) < 1.0  # each term e / (e + c) < 1


def _mixture_batches(b: int = 256):
    """The two-mode mixture, unconditional: one Euler step of its flow lands between the modes."""

    def fn(step: int):
        x0, classes = sample_data(b, torch.Generator().manual_seed(10_000 + step))
        return x0, cond_of(torch.full_like(classes, -1))

    return fn


def _one_step_errors(student, teacher, n: int = 1024):
    eps = torch.randn(n, 2, 1, 1, generator=torch.Generator().manual_seed(99))
    cond = cond_of(torch.full((n,), -1))
    ref = ode(teacher, eps, cond)
    one = uniform_timesteps(1)
    err = lambda x: float((x - ref).flatten(1).pow(2).sum(1).mean())  # noqa: E731
    return err(interval(student, eps, one, cond)), err(euler(teacher, eps, one, cond))


def test_meanflow_student_reaches_the_teachers_ode_map_in_one_step(tmp_path):
    teacher = MixtureFlow()
    torch.manual_seed(0)
    # plain L2 (p = 0) on a share of 3/4 intervals: the toy MLP learns faster so than with the images' defaults
    loss = MeanFlowLoss(teacher, None, 1.0, interval_fraction=0.75, t_sampling="uniform", adaptive_power=0.0)
    student, losses = train(ToyMLP(guidance_input=True), loss, _mixture_batches(), 800, tmp_path)
    err_student, err_teacher = _one_step_errors(student, teacher)
    assert decreased(losses)
    assert err_student < 0.15 * err_teacher, (err_student, err_teacher)


def test_shortcut_student_reaches_the_teachers_ode_map_in_one_step(tmp_path):
    teacher = MixtureFlow()
    torch.manual_seed(0)
    loss = ShortcutLoss(teacher, None, guidance=1.0, bootstrap_fraction=0.5, max_steps=16)
    student, losses = train(ToyMLP(guidance_input=True), loss, _mixture_batches(), 800, tmp_path)
    err_student, err_teacher = _one_step_errors(student, teacher)
    assert decreased(losses)
    assert err_student < 0.15 * err_teacher, (err_student, err_teacher)
