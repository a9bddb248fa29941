"""Consistency distillation (Song et al. 2023; LCM, Luo et al. 2023; docs/concepts/methods/consistency.md).

f(x_t, t) = x_t - t v(x_t, t) satisfies f(x, 0) = x by construction. On a grid of N teacher steps with skip
k: x_{t_{n+k}} = (1 - t) x0 + t eps, one CFG teacher ODE step (Euler or Heun) to t_n gives x_hat_{t_n}, and
L = d(f_theta(x_{t_{n+k}}), stopgrad f_target(x_hat_{t_n})) with the target an EMA of the student (LCM: 0.95).
Sampling is multistep: x0 = f(x, t_i), re-noise to t_{i+1} with fresh noise, repeat.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from fewstep.compress.distill_config import DistillConfig, ImageInput, Regression, TeacherGuidance
from fewstep.compress.distill_session import DistillSession, baked
from fewstep.compress.distributed import StepRandom
from fewstep.compress.method_registry import Method, register_method
from fewstep.compress.methods.common import FrozenCopy, cfg_velocity, x0_prediction
from fewstep.compress.methods.distance import get_distance
from fewstep.core.config import ConfigError, param
from fewstep.core.flow_math import bcast, interpolate
from fewstep.models.contract import Cond
from fewstep.models.samplers import consistency_timesteps


@dataclass
class ConsistencyLoss:
    teacher: torch.nn.Module
    null_cond: Cond
    guidance: float = 3.0  # teacher CFG scale, baked into the student
    grid: int = 50  # N teacher steps over [0, 1]
    skip: int = 5  # k grid steps per teacher ODE step
    target_decay: float = 0.95  # EMA of the target network
    solver: str = "euler"  # teacher ODE step: euler | heun
    distance: str = "pseudo_huber"
    target: torch.nn.Module | None = field(default=None, repr=False)
    _frozen: set[str] = field(default_factory=set, repr=False)  # the student's frozen parameter names

    def __post_init__(self) -> None:
        if not 1 <= self.skip < self.grid:
            raise ValueError(f"need 1 <= skip < grid; got skip {self.skip}, grid {self.grid}")
        if self.solver not in ("euler", "heun"):
            raise ValueError(f"solver must be euler or heun; got {self.solver!r}")
        self._teacher = FrozenCopy(self.teacher)
        self.d = get_distance(self.distance)

    def init_target(self, student: torch.nn.Module) -> None:
        # frozen weights (a LoRA student's base) never change: the target shares them instead of copying (at SD
        # size a copy is 3.4 GB of memory and of every resume state); they are neither averaged nor saved
        self._frozen = {n for n, p in student.named_parameters() if not p.requires_grad}
        shared = {id(p): p for p in student.parameters() if not p.requires_grad}
        self.target = copy.deepcopy(student, memo=shared).eval().requires_grad_(False)

    def to(self, device) -> None:
        self._teacher.to(device)
        if self.target is not None:
            self.target.to(device)

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {f"target.{k}": v for k, v in self.target.state_dict().items() if k not in self._frozen}

    def load_state_tensors(self, state: dict[str, torch.Tensor]) -> None:
        own = {k[len("target.") :]: v for k, v in state.items() if k.startswith("target.")}
        result = self.target.load_state_dict({k: v for k, v in own.items() if k not in self._frozen}, strict=False)
        missing = [k for k in result.missing_keys if k not in self._frozen]
        if missing or result.unexpected_keys:
            raise ValueError(f"the resume state's consistency target does not match the student "
                             f"(e.g. {(missing or result.unexpected_keys)[0]})")  # fmt: skip

    @torch.no_grad()
    def after_step(self, model: torch.nn.Module) -> None:
        for p_t, p in zip(self.target.parameters(), model.parameters(), strict=True):
            if p_t is not p:  # shared frozen weights are their own average
                p_t.lerp_(p, 1 - self.target_decay)

    @torch.no_grad()
    def _teacher_step(self, x: torch.Tensor, t: torch.Tensor, s: torch.Tensor, cond: Cond) -> torch.Tensor:
        v = cfg_velocity(self._teacher, x, t, cond, self.guidance, self.null_cond)
        x_s = x + bcast(s - t, x) * v
        if self.solver == "heun":
            v2 = cfg_velocity(self._teacher, x_s, s, cond, self.guidance, self.null_cond)
            x_s = x + bcast(s - t, x) * 0.5 * (v + v2)
        return x_s

    def __call__(self, model, batch, rng: StepRandom):
        if self.target is None:
            raise RuntimeError("ConsistencyLoss.init_target(student) must be called before training")
        x0, cond = batch
        b = x0.shape[0]
        eps = rng.randn(*x0.shape).to(x0.device)
        n = rng.randint(0, self.grid - self.skip + 1, b).to(x0.device)
        t_n, t_nk = n.float() / self.grid, (n + self.skip).float() / self.grid
        x_nk = interpolate(x0, eps, t_nk)
        x_n = self._teacher_step(x_nk, t_nk, t_n, cond)
        with torch.no_grad():
            target = x0_prediction(self.target, x_n, t_n, cond)  # f(x, 0) = x where t_n = 0
        loss = self.d(x0_prediction(model, x_nk, t_nk, cond), target)
        return loss, {"loss": loss.item()}


@dataclass(frozen=True)
class ConsistencyConfig(ImageInput, TeacherGuidance, Regression, DistillConfig):
    """LCM-style consistency distillation on a grid of `grid` teacher steps; the student samples `student_steps`
    times on that grid with re-noising."""

    grid: int = param(50, "N: teacher steps over [0, 1]", min=2)
    skip: int = param(5, "k: grid steps per teacher ODE step", min=1)
    target_decay: float = param(0.95, "EMA decay of the target network (LCM: 0.95)", min=0, max=1)
    teacher_solver: Literal["euler", "heun"] = param("euler", "the teacher's ODE step")

    def check(self) -> None:
        super().check()
        if self.skip >= self.grid:
            raise ConfigError(f"need skip < grid; got skip {self.skip}, grid {self.grid}", "skip")


def run(s: DistillSession, cfg: ConsistencyConfig, out: Path, resume: bool, progress: bool) -> Path:
    student, report = s.new_student()
    times = consistency_timesteps(cfg.student_steps, cfg.grid).tolist()

    def spec(step: int) -> dict:
        return s.spec(step, "consistency", times, baked(cfg.guidance),
                      {"init": report, "train_times": f"grid {cfg.grid}", "sampler": {"grid": cfg.grid}})  # fmt: skip

    loss = ConsistencyLoss(s.teacher, s.null, cfg.guidance, cfg.grid, cfg.skip, cfg.target_decay, cfg.teacher_solver,
                           cfg.distance)  # fmt: skip
    loss.init_target(student)
    s.run_loop(student, loss, s.data_batch, cfg.loop(), out, spec, resume, progress)
    return out / "model.safetensors"


METHOD = register_method(Method(
    "consistency", ConsistencyConfig, run, "LCM-style consistency distillation; multistep sampling with re-noising",
    paper="Song et al. 2023, Consistency models; Luo et al. 2023, Latent consistency models", order=50,
))  # fmt: skip
