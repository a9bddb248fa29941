"""Distribution Matching Distillation (Yin et al. 2024; DMD2 options, Yin et al. 2024b; docs/concepts/methods/dmd.md).

Generator G(z) = z - v_G(z, 1) (the student). The real score is the frozen teacher with CFG `w_real`; the
fake score starts as a copy of the teacher and follows the generator's distribution by flow matching on
detached generator samples (`fake_updates` per generator step: DMD uses 1, DMD2's two-time-scale rule 5).
For x = G(z): t ~ U[0.02, 0.98], x_t = (1 - t) x + t eps, grad = (x0_fake - x0_real) / mean|x - x0_real|,
L_dm = 0.5 ||x - stopgrad(x - grad)||^2, plus the regression loss d(G(z_pair), y_pair) with weight 0.25
(reg_weight 0 = DMD2), plus optionally the adversarial term of a small discriminator head on the fake
score's middle features (generator softplus(-D), discriminator softplus(D(fake)) + softplus(-D(real)); the
"real" images are the teacher's pair images, or the training images when there are no pairs).

Multi-step (DMD2, Sec. 4.4): with `times` = (1, t_2, ..., t_k) the generator is trained at each of its k sampling
times; its input at t_i comes from backward simulation, i.e. the current generator's own consistency-style
sampling from noise (x0 = x - t v, re-noise to the next time), so training sees what inference will. The
regression loss stays on the one-step map at t = 1, where the pairs live.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from fewstep.compress import distributed as ddp
from fewstep.compress.distill_config import DistillConfig, ImageInput, Regression, TeacherGuidance
from fewstep.compress.distill_session import DistillSession, baked, euler_times
from fewstep.compress.distributed import StepRandom
from fewstep.compress.method_registry import Method, register_method
from fewstep.compress.methods.common import FrozenCopy, cfg_velocity
from fewstep.compress.methods.distance import get_distance
from fewstep.compress.trainer import load_optimizer_tensors, optimizer_tensors
from fewstep.core.config import ConfigError, param
from fewstep.core.flow_math import bcast, interpolate, x0_from_velocity
from fewstep.models.contract import Cond
from fewstep.models.samplers import consistency_timesteps


class MidFeatureHead(nn.Module):
    """Discriminator head: conv + pooled linear on the fake score's mid-block features (captured by a hook)."""

    def __init__(self, channels: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1), nn.SiLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(channels, 1),
        )  # fmt: skip

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features).squeeze(1)


def _mid_block(model: nn.Module) -> nn.Module | None:
    unet = getattr(model, "unet", None)
    return getattr(unet, "mid_block", None) if unet is not None else getattr(model, "mid_block", None)


@dataclass
class DMDLoss:
    # the generator's loss is a distribution-matching surrogate against a fake score that chases it: it is not
    # meant to decrease, so the health monitor checks only gradient clipping
    monitor_loss = False
    teacher: nn.Module  # real score, frozen
    null_cond: Cond
    w_real: float = 3.0
    reg_weight: float = 0.25  # 0 = DMD2 (no regression loss, no pairs needed for it)
    fake_updates: int = 1  # DMD2: 5
    fake_lr: float = 1e-4
    adv_weight: float = 0.0  # > 0 adds the adversarial term (DMD2 / ADD)
    distance: str = "pseudo_huber"
    t_range: tuple[float, float] = (0.02, 0.98)
    times: tuple[float, ...] = (1.0,)  # generator sampling times (DMD2 multi-step when more than one)
    fake: nn.Module | None = field(default=None, repr=False)
    head: nn.Module | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.fake_updates < 1:
            raise ValueError(f"fake_updates must be >= 1; got {self.fake_updates}")
        self.times = tuple(float(t) for t in self.times)
        pairs = zip(self.times, self.times[1:], strict=False)
        if not self.times or self.times[0] != 1.0 or any(b >= a for a, b in pairs) or self.times[-1] <= 0.0:
            raise ValueError(f"generator times must start at 1 and decrease strictly above 0; got {self.times}")
        self._real = FrozenCopy(self.teacher)
        self.fake = self.fake if self.fake is not None else copy.deepcopy(self.teacher)
        self.fake.train().requires_grad_(True)
        params = list(self.fake.parameters())
        self._features: list[torch.Tensor] = []
        if self.adv_weight > 0:
            mid = _mid_block(self.fake)
            if mid is None:
                raise ValueError("the adversarial term needs a fake score with a UNet mid block")
            channels = self.fake.unet.config.block_out_channels[-1]
            self.head = self.head if self.head is not None else MidFeatureHead(channels)
            mid.register_forward_hook(lambda _m, _i, out: self._features.append(out))
            params += list(self.head.parameters())
        self.fake_params = params
        self.fake_opt = torch.optim.AdamW(
            params, lr=self.fake_lr, betas=(0.0, 0.99) if self.adv_weight else (0.9, 0.999)
        )
        self.d = get_distance(self.distance)

    def to(self, device) -> None:
        self._real.to(device)
        self.fake.to(device)
        if self.head is not None:
            self.head.to(device)

    # ---- exact resume of the fake score, its head and optimizer ------------------------------
    def state_tensors(self) -> dict[str, torch.Tensor]:
        out = {f"fake.{k}": v for k, v in self.fake.state_dict().items()}
        if self.head is not None:
            out.update({f"head.{k}": v for k, v in self.head.state_dict().items()})
        out.update(optimizer_tensors(self.fake_opt, "opt."))
        return out

    def load_state_tensors(self, state: dict[str, torch.Tensor]) -> None:
        pick = lambda p: {k[len(p) :]: v for k, v in state.items() if k.startswith(p)}  # noqa: E731
        self.fake.load_state_dict(pick("fake."))
        if self.head is not None:
            self.head.load_state_dict(pick("head."))
        load_optimizer_tensors(self.fake_opt, pick("opt."), self.fake_opt.state_dict()["param_groups"])

    # ---- pieces ------------------------------------------------------------------------------
    def _t(self, b: int, rng: StepRandom, device) -> torch.Tensor:
        lo, hi = self.t_range
        return (lo + (hi - lo) * rng.rand(b)).to(device)

    def _disc(self, x_t: torch.Tensor, t: torch.Tensor, cond: Cond) -> torch.Tensor:
        self._features.clear()
        self.fake(x_t, t, cond)
        return self.head(self._features[-1])

    def _update_fake(self, x: torch.Tensor, real: torch.Tensor, cond: Cond, rng: StepRandom) -> dict[str, float]:
        b = x.shape[0]
        logs = {}
        for _ in range(self.fake_updates):
            t, eps = self._t(b, rng, x.device), rng.randn(*x.shape).to(x.device)
            loss = (self.fake(interpolate(x, eps, t), t, cond) - (eps - x)).pow(2).mean()
            logs["fake_loss"] = loss.item()
            if self.adv_weight > 0:
                t2, eps2 = self._t(b, rng, x.device), rng.randn(*x.shape).to(x.device)
                d_fake = self._disc(interpolate(x, eps2, t2), t2, cond)
                d_real = self._disc(interpolate(real, eps2, t2), t2, cond)
                l_d = F.softplus(d_fake).mean() + F.softplus(-d_real).mean()
                loss = loss + self.adv_weight * l_d
                logs["disc_loss"] = l_d.item()
            self.fake_opt.zero_grad(set_to_none=True)
            loss.backward()
            ddp.all_reduce_grads(self.fake_params)
            torch.nn.utils.clip_grad_norm_(self.fake_params, 1.0)
            self.fake_opt.step()
        return logs

    @torch.no_grad()
    def _backward_simulation(self, model, z: torch.Tensor, cond: Cond, steps: int, rng: StepRandom) -> torch.Tensor:
        """The generator's own sample after `steps` of its k steps: its input at times[steps]."""
        x = z
        for t_now, t_next in zip(self.times[:steps], self.times[1 : steps + 1], strict=True):
            tt = torch.full((x.shape[0],), t_now, device=x.device)
            x0 = x0_from_velocity(x, t_now, model(x, tt, cond))
            x = interpolate(x0, rng.randn(*x.shape).to(x.device), torch.full_like(tt, t_next))
        return x

    def __call__(self, model, batch, rng: StepRandom):
        z_pair, y_pair, cond = batch
        b = z_pair.shape[0]
        ones = torch.ones(b, device=z_pair.device)
        z = rng.randn(*z_pair.shape).to(z_pair.device)
        # one generator step for the whole batch (same on every rank: drawn from the shared generator); one-step
        # DMD draws nothing here, so its random stream, and the resume of its runs, is what it was
        i = int(torch.randint(0, len(self.times), (1,), generator=rng.generator)) if len(self.times) > 1 else 0
        x_in = self._backward_simulation(model, z, cond, i, rng)
        t_in = self.times[i]
        x = x0_from_velocity(x_in, t_in, model(x_in, torch.full_like(ones, t_in), cond))
        logs = self._update_fake(x.detach(), y_pair, cond, rng)
        # distribution matching gradient, both scores at the same noisy point
        t, eps = self._t(b, rng, x.device), rng.randn(*x.shape).to(x.device)
        with torch.no_grad():
            x_t = interpolate(x.detach(), eps, t)
            x0_real = x0_from_velocity(x_t, t, cfg_velocity(self._real, x_t, t, cond, self.w_real, self.null_cond))
            self.fake.eval()
            x0_fake = x0_from_velocity(x_t, t, self.fake(x_t, t, cond))
            self.fake.train()
            norm = (x.detach() - x0_real).abs().flatten(1).mean(1).clamp_min(1e-8)
            grad = (x0_fake - x0_real) / bcast(norm, x)
        l_dm = 0.5 * F.mse_loss(x, (x - grad).detach())
        loss = l_dm
        logs["dm_loss"] = l_dm.item()
        if self.reg_weight > 0:
            l_reg = self.d(z_pair - model(z_pair, ones, cond), y_pair)
            loss = loss + self.reg_weight * l_reg
            logs["reg_loss"] = l_reg.item()
        if self.adv_weight > 0:
            t2, eps2 = self._t(b, rng, x.device), rng.randn(*x.shape).to(x.device)
            self.fake.requires_grad_(False)
            l_g = F.softplus(-self._disc(interpolate(x, eps2, t2), t2, cond)).mean()
            self.fake.requires_grad_(True)
            loss = loss + self.adv_weight * l_g
            logs["gen_adv_loss"] = l_g.item()
        logs["loss"] = loss.item()
        if len(self.times) > 1:
            logs["gen_step"] = float(i)
        return loss, logs


@dataclass(frozen=True)
class DMDConfig(ImageInput, TeacherGuidance, Regression, DistillConfig):
    """DMD with regression on pairs, or DMD2 (`reg_weight 0`, `fake_updates 5`, optionally `adv_weight`):
    then no pairs are needed and conditions come from the dataset. `student_steps` > 1 trains DMD2's multi-step
    generator on the consistency grid (`grid`) by backward simulation."""

    pairs: str | None = param(None, "trajectory-pair cache for the regression loss (`fewstep pairs`); not needed "
                              "with reg_weight 0", path="dir")  # fmt: skip
    reg_weight: float = param(0.25, "weight of the regression loss on pairs (0 = DMD2)", min=0)
    fake_updates: int = param(1, "fake-score updates per generator update (DMD2: 5)", min=1)
    fake_lr: float = param(1e-4, "the fake score's learning rate", above=0, max=1)
    adv_weight: float = param(0.0, "weight of the adversarial term (0 = off)", min=0)
    grid: int = param(50, "multi-step generators: the consistency grid their sampling times are snapped to", min=2)

    def check_ready(self) -> None:
        if not self.pairs and self.reg_weight > 0:
            raise ConfigError("dmd's regression loss learns from trajectory pairs: pass --pairs DIR (made by "
                              "`fewstep pairs`), or --reg-weight 0 for DMD2 without pairs", "pairs")  # fmt: skip
        super().check_ready()


def run(s: DistillSession, cfg: DMDConfig, out: Path, resume: bool, progress: bool) -> Path:
    student, report = s.new_student()
    if cfg.pairs:
        batch_fn = s.pair_batch
    else:  # DMD2 without regression: conditions come from the dataset, the pair slots stay empty

        def batch_fn(step: int):  # type: ignore[no-untyped-def]
            x0, cond = s.data_batch(step)
            return torch.randn(x0.shape, generator=torch.Generator().manual_seed(cfg.seed * 7919 + step)), x0, cond

    # k > 1: DMD2's multi-step generator, sampled with re-noising on the consistency grid
    multi = cfg.student_steps > 1
    gen_times = consistency_timesteps(cfg.student_steps, cfg.grid).tolist() if multi else [1.0]
    rule, times, sampler = ("consistency", gen_times, {"grid": cfg.grid}) if multi else ("euler", euler_times(1), {})

    def spec(step: int) -> dict:
        extra = {"init": report, "train_times": gen_times, "sampler": sampler}
        return s.spec(step, rule, times, baked(cfg.guidance), extra)

    loss = DMDLoss(s.teacher, s.null, cfg.guidance, cfg.reg_weight, cfg.fake_updates, cfg.fake_lr, cfg.adv_weight,
                   cfg.distance, times=tuple(gen_times))  # fmt: skip
    s.run_loop(student, loss, batch_fn, cfg.loop(), out, spec, resume, progress)
    return out / "model.safetensors"


METHOD = register_method(Method(
    "dmd", DMDConfig, run, "distribution matching with a fake score (+ regression on pairs; DMD2: --reg-weight 0 "
    "--fake-updates 5 [--adv-weight 0.1]; --student-steps 4: DMD2's multi-step generator)",
    paper="Yin et al. 2024, One-step diffusion with distribution matching distillation; DMD2", order=70,
))  # fmt: skip
