"""A whole distillation method in one file (the recipe in docs/architecture.md): velocity distillation with the
guidance baked in. The student regresses the teacher's classifier-free-guided velocity at random times on
training images, L = ||v_s(x_t, t) - v_w(x_t, t)||^2 with v_w = v_u + w (v_c - v_u): one pass per step at the
teacher's step count (guidance distillation without the w input).

It shows the three parts a method declares: its config (the shared DistillConfig, the inputs it reads, its own
fields, each documented), its loss, and how it runs. Importing this module registers it as
`fewstep distill velocity-kd`; `unregister_method("velocity-kd")` removes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fewstep.compress.distill_config import DistillConfig, ImageInput, TeacherGuidance, TimeSampling
from fewstep.compress.distill_session import DistillSession, baked, euler_times
from fewstep.compress.distributed import StepRandom
from fewstep.compress.flow_matching import sample_t
from fewstep.compress.method_registry import Method, register_method
from fewstep.compress.methods.common import FrozenCopy, cfg_velocity
from fewstep.core.config import param
from fewstep.core.flow_math import interpolate
from fewstep.models.contract import Cond


@dataclass(frozen=True)
class VelocityKDConfig(ImageInput, TeacherGuidance, TimeSampling, DistillConfig):
    """The student learns the teacher's guided velocity field; it samples with `sample_steps` Euler steps."""

    sample_steps: int = param(50, "Euler steps the student samples with (the teacher's, by default)", min=1)


class VelocityKDLoss:
    def __init__(self, teacher: torch.nn.Module, null: Cond, guidance: float, t_sampling: str):
        self._teacher, self.null, self.guidance, self.t_sampling = FrozenCopy(teacher), null, guidance, t_sampling

    def to(self, device: Any) -> None:
        self._teacher.to(device)

    def __call__(self, model: Any, batch: Any, rng: StepRandom) -> tuple[torch.Tensor, dict[str, float]]:
        x0, cond = batch
        eps = rng.randn(*x0.shape).to(x0.device)
        t = sample_t(x0.shape[0], self.t_sampling, rng).to(x0.device)
        x_t = interpolate(x0, eps, t)
        target = cfg_velocity(self._teacher, x_t, t, cond, self.guidance, self.null)
        loss = (model(x_t, t, cond) - target).pow(2).mean()
        return loss, {"loss": loss.item()}


def run(s: DistillSession, cfg: VelocityKDConfig, out: Path, resume: bool, progress: bool) -> Path:
    student, report = s.new_student()
    times = euler_times(cfg.sample_steps)

    def spec(step: int) -> dict[str, Any]:
        return s.spec(step, "euler", times, baked(cfg.guidance), {"init": report, "train_times": "continuous"})

    loss = VelocityKDLoss(s.teacher, s.null, cfg.guidance, cfg.t_sampling)
    s.run_loop(student, loss, s.data_batch, cfg.loop(), out, spec, resume, progress)
    return out / "model.safetensors"


METHOD = register_method(Method(
    "velocity-kd", VelocityKDConfig, run, "regress the teacher's guided velocity: CFG baked in, one pass per step",
    paper="Hinton et al. 2015 (knowledge distillation), applied to a flow's guided velocity", order=1000,
))  # fmt: skip
