"""Guidance distillation (Meng et al. 2023, stage 1; docs/concepts/methods/guidance.md).

The student takes the guidance scale w as an input (diffusers `time_cond_proj_dim` + `timestep_cond`) and
learns the teacher's CFG combination v_u + w (v_c - v_u) at random t and w ~ U[w_min, w_max]: one forward
pass per step instead of two. Negative prompts are lost; the checkpoint says guidance mode `embedded`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from fewstep.compress.distill_config import DistillConfig, ImageInput, TimeSampling
from fewstep.compress.distill_session import DistillSession, euler_times
from fewstep.compress.distributed import StepRandom
from fewstep.compress.flow_matching import sample_t
from fewstep.compress.method_registry import Method, register_method
from fewstep.compress.methods.common import FrozenCopy, cfg_velocity
from fewstep.compress.methods.progressive import check_halving, progressive_rounds
from fewstep.core.config import ConfigError, param
from fewstep.core.flow_math import interpolate
from fewstep.models.contract import Cond
from fewstep.models.loading import load_model


@dataclass
class GuidanceDistillLoss:
    teacher: torch.nn.Module
    null_cond: Cond  # one row: the empty prompt
    w_min: float = 1.0
    w_max: float = 6.0
    t_sampling: str = "uniform"
    _teacher: FrozenCopy = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not 0 <= self.w_min <= self.w_max:
            raise ValueError(f"need 0 <= w_min <= w_max; got {self.w_min}, {self.w_max}")
        self._teacher = FrozenCopy(self.teacher)

    def to(self, device) -> None:
        self._teacher.to(device)

    def __call__(self, model, batch, rng: StepRandom):
        x0, cond = batch
        b = x0.shape[0]
        eps = rng.randn(*x0.shape).to(x0.device)
        t = sample_t(b, self.t_sampling, rng).to(x0.device)
        w = (self.w_min + (self.w_max - self.w_min) * rng.rand(b)).to(x0.device)
        x_t = interpolate(x0, eps, t)
        target = cfg_velocity(self._teacher, x_t, t, cond, w, self.null_cond)
        loss = (model(x_t, t, cond.with_guidance(w)) - target).pow(2).mean()
        return loss, {"loss": loss.item()}


@dataclass(frozen=True)
class GuidanceConfig(ImageInput, TimeSampling, DistillConfig):
    """The student learns the teacher's CFG at every w in [w_min, w_max]; alone it keeps the teacher's step count
    (or `student_steps` when > 1); with `then_progressive`, w-conditioned progressive rounds follow."""

    w_min: float = param(1.0, "lowest guidance scale the student learns (w ~ U[w_min, w_max])", min=0, max=30)
    w_max: float = param(6.0, "highest guidance scale the student learns", min=0, max=30)
    guidance_dim: int = param(64, "width of the student's sinusoidal w embedding (diffusers time_cond_proj_dim)",
                              min=1)  # fmt: skip
    then_progressive: bool = param(False, "then stage 2 of Meng et al.: w-conditioned progressive rounds from "
                                   "start_steps down to student_steps (`steps` per stage)")  # fmt: skip
    start_steps: int = param(32, "with then_progressive: the first round's teacher steps", min=2)

    def check(self) -> None:
        super().check()
        if self.w_min > self.w_max:
            raise ConfigError(f"need w_min <= w_max; got {self.w_min}, {self.w_max}", "w_min")
        if self.then_progressive:
            check_halving(self.start_steps, self.student_steps)

    @property
    def student_guidance_dim(self) -> int | None:
        return self.guidance_dim

    @property
    def multi_stage(self) -> bool:
        return self.then_progressive


def run(s: DistillSession, cfg: GuidanceConfig, out: Path, resume: bool, progress: bool) -> Path:
    student, report = s.new_student()
    default = float(s.teacher_spec["sampler"]["guidance"].get("default_scale", 3.0))
    mode = {"mode": "embedded", "range": [cfg.w_min, cfg.w_max],
            "default_scale": min(max(default, cfg.w_min), cfg.w_max)}  # fmt: skip
    loss = GuidanceDistillLoss(s.teacher, s.null, cfg.w_min, cfg.w_max, cfg.t_sampling)
    if not cfg.then_progressive:
        # guidance distillation alone keeps the teacher's step count unless asked for fewer
        k = cfg.student_steps if cfg.student_steps > 1 else int(s.teacher_spec["sampler"].get("default_steps", 50))
        times = euler_times(k)

        def spec(step: int) -> dict:
            return s.spec(step, "euler", times, mode, {"init": report, "train_times": "continuous"})

        s.run_loop(student, loss, s.data_batch, cfg.loop(), out, spec, resume, progress)
        return out / "model.safetensors"
    # stage 1 into out/stage1, then w-conditioned progressive rounds from it (Meng et al. 2023, stage 2)
    s1, times1 = out / "stage1", euler_times(cfg.start_steps)

    def spec1(step: int) -> dict:
        return s.spec(step, "euler", times1, mode, {"init": report, "stage": 1, "train_times": "continuous"})

    saved = s.run_loop(student, loss, s.data_batch, cfg.loop(), s1, spec1, resume, progress)
    del student, loss
    stage1 = load_model(saved)[0]
    return progressive_rounds(s, cfg, out, resume, progress, stage1, s1 / "model.safetensors", 1.0, None,
                              "teacher", mode, (cfg.w_min, cfg.w_max))  # fmt: skip


METHOD = register_method(Method(
    "guidance", GuidanceConfig, run, "CFG folded into a w input: one pass per step, guidance mode 'embedded' "
    "(--then-progressive: then w-conditioned progressive rounds down to --student-steps)",
    paper="Meng et al. 2023, On distillation of guided diffusion models", order=40,
))  # fmt: skip
