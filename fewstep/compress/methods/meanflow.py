"""MeanFlow distillation (Geng et al. 2025, Mean flows for one-step generative modeling;
docs/concepts/methods/meanflow.md).

The student learns the average velocity u(z_t, r, t) = 1/(t - r) int_r^t v(z_s, s) ds over [r, t], so one step
z_r = z_t - (t - r) u(z_t, r, t) follows the teacher's whole ODE segment. The MeanFlow identity (differentiate
(t - r) u = int_r^t v in t) gives the regression target without integrating:

    u_tgt = v(z_t, t) - (t - r) (v(z_t, t) d_z u + d_t u)

where v is the teacher's CFG velocity (the marginal field, so guidance is baked in) and the total derivative
along the path is one forward-mode JVP of the student with tangents (v, 0, 1) on (z, r, t). The network sees
(z, t, h = t - r), h through its scalar input (time_cond_proj), so the tangent of h is 1. L = w ||u - stopgrad(
u_tgt)||^2 with the paper's adaptive weight w = stopgrad(1 / (||u - u_tgt||^2 + c)^p). r = t on a share of the
batch (plain flow matching onto v); (t, r) are two draws, t the larger. Sampling: the `interval` rule.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from fewstep.compress.distill_config import DistillConfig, ImageInput, StepSizeInput, TeacherGuidance, TimeSampling
from fewstep.compress.distill_session import DistillSession, baked, euler_times
from fewstep.compress.distributed import StepRandom
from fewstep.compress.flow_matching import sample_t
from fewstep.compress.method_registry import Method, register_method
from fewstep.compress.methods.common import FrozenCopy, cfg_velocity
from fewstep.core.config import ConfigError, param
from fewstep.core.flow_math import bcast, interpolate
from fewstep.models.contract import Cond


def interval_times(b: int, t_sampling: str, interval_fraction: float, rng: StepRandom) -> tuple[torch.Tensor, ...]:
    """(t, r) per sample: two draws, t the larger; r = t except on `interval_fraction` of the batch."""
    a, c = sample_t(b, t_sampling, rng), sample_t(b, t_sampling, rng)
    t, r = torch.maximum(a, c), torch.minimum(a, c)
    keep = rng.rand(b) < interval_fraction
    return t, torch.where(keep, r, t)


def adaptive_weighted(sq_error: torch.Tensor, power: float, c: float = 1e-3) -> torch.Tensor:
    """MeanFlow's adaptive loss: mean of sg(1 / (e + c)^p) * e over per-sample squared errors e (p = 0: plain)."""
    weight = 1.0 / (sq_error.detach() + c).pow(power)
    return (weight * sq_error).mean()


@dataclass
class MeanFlowLoss:
    # the target is built from the student's own JVP, so the raw loss need not fall: it rose 1.7x over the shapes
    # benchmark run while one-step FID improved. The health monitor checks only gradient clipping
    monitor_loss = False
    teacher: torch.nn.Module
    null_cond: Cond | None
    guidance: float = 3.0  # teacher CFG scale, baked into the student
    interval_fraction: float = 0.25  # share of the batch with r < t (the paper's best: 25%)
    t_sampling: str = "logit_normal"
    adaptive_power: float = 1.0  # p of the adaptive weight (the paper's best: 1)
    _teacher: FrozenCopy = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not 0 <= self.interval_fraction <= 1:
            raise ValueError(f"interval_fraction must be in [0, 1]; got {self.interval_fraction}")
        self._teacher = FrozenCopy(self.teacher)

    def to(self, device) -> None:
        self._teacher.to(device)

    def target(self, model, z: torch.Tensor, t: torch.Tensor, r: torch.Tensor, cond: Cond,
               v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        """-> (u_theta(z, r, t) with its graph, stopgrad(u_tgt)) by one JVP with tangents (v, t: 1, h: 1)."""

        def u_of(z_: torch.Tensor, t_: torch.Tensor, h_: torch.Tensor) -> torch.Tensor:
            return model(z_, t_, cond.with_guidance(h_))

        ones = torch.ones_like(t)
        # forward-mode GroupNorm views its tangent: channels-last batches (the image cache's) must be made dense
        z, v = z.contiguous(), v.contiguous()
        # forward-mode AD has no fused attention kernel on CPU: the math kernel computes the same attention
        with sdpa_kernel(SDPBackend.MATH):
            u, du_dt = torch.func.jvp(u_of, (z, t, t - r), (v, ones, ones))
        return u, (v - bcast(t - r, v) * du_dt).detach()

    def __call__(self, model, batch, rng: StepRandom):
        x0, cond = batch
        b = x0.shape[0]
        eps = rng.randn(*x0.shape).to(x0.device)
        t, r = (x.to(x0.device) for x in interval_times(b, self.t_sampling, self.interval_fraction, rng))
        z = interpolate(x0, eps, t)
        v = cfg_velocity(self._teacher, z, t, cond, self.guidance, self.null_cond)
        u, u_tgt = self.target(model, z, t, r, cond, v)
        sq = (u - u_tgt).pow(2).flatten(1).sum(1)
        loss = adaptive_weighted(sq, self.adaptive_power)
        return loss, {"loss": float(sq.detach().mean()) / x0[0].numel(), "weighted_loss": loss.item()}


@dataclass(frozen=True)
class MeanFlowConfig(StepSizeInput, ImageInput, TeacherGuidance, TimeSampling, DistillConfig):
    """MeanFlow: the student learns the teacher's average velocity over intervals and samples `student_steps`
    interval steps (1 = one-step generation)."""

    t_sampling: Literal["uniform", "logit_normal"] = param("logit_normal", "how t and r are drawn (the paper: "
                                                           "logit-normal)")  # fmt: skip
    interval_fraction: float = param(0.25, "share of the batch trained on r < t (the rest on r = t, flow matching)",
                                     min=0, max=1)  # fmt: skip
    adaptive_power: float = param(1.0, "p of the adaptive loss weight 1 / (||error||^2 + 1e-3)^p (0 = plain L2)",
                                  min=0, max=2)  # fmt: skip

    def check(self) -> None:
        super().check()
        if self.gradient_checkpointing:
            raise ConfigError("MeanFlow's JVP runs the student in forward mode, which activation checkpointing "
                              "cannot replay; leave --gradient-checkpointing off (use LoRA or a smaller batch)",
                              "gradient_checkpointing")  # fmt: skip


def run(s: DistillSession, cfg: MeanFlowConfig, out: Path, resume: bool, progress: bool) -> Path:
    student, report = s.new_student()
    times = euler_times(cfg.student_steps)

    def spec(step: int) -> dict:
        return s.spec(step, "interval", times, baked(cfg.guidance), {"init": report, "train_times": "intervals"})

    loss = MeanFlowLoss(s.teacher, s.null, cfg.guidance, cfg.interval_fraction, cfg.t_sampling, cfg.adaptive_power)
    s.run_loop(student, loss, s.data_batch, cfg.loop(), out, spec, resume, progress)
    return out / "model.safetensors"


METHOD = register_method(Method(
    "meanflow", MeanFlowConfig, run, "MeanFlow: the teacher's average velocity over intervals, one-step sampling",
    paper="Geng et al. 2025, Mean flows for one-step generative modeling", order=70,
))  # fmt: skip
