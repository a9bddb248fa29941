"""SlimFlow (Zhu, Liu & Liu, ECCV 2024; docs/concepts/methods/slimflow.md): smaller one-step students in two stages.

1. `AnnealingReflowLoss`: reflow with a source perturbed by beta(k): eps_b = sqrt(1 - b^2) eps + b eps_fresh,
   x_t = (1 - t) x0_hat + t eps_b, target eps_b - x0_hat. beta = 1 is flow matching on teacher samples,
   beta = 0 pure reflow.
2. `FlowGuidedLoss`: L = d(eps - v_s(eps, 1), x0_hat) on the pairs + d(eps' - v, x0_T) on fresh noise, where
   the frozen stage-1 model finishes the student's straight path from a random tau in [0.2, 0.8].

   `k` > 1 is fewstep's few-step form of stage 2 (the paper trains one step only): the distill term is taken at a
   point of the k-point grid {1, ..., 1/k} on the pair's straight line (InstaFlow's k-step target), and the guide
   term at a grid point t_i that the student itself reaches from fresh noise with its own Euler steps, with
   tau in t_i * [0.2, 0.8]. At k = 1 both terms, and the random draws, are exactly the paper's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

import torch

from fewstep.compress.distill_config import DistillConfig, PairInput, Regression, TimeSampling
from fewstep.compress.distill_session import DistillSession, baked, euler_times
from fewstep.compress.distributed import StepRandom
from fewstep.compress.flow_matching import sample_t
from fewstep.compress.method_registry import Method, register_method
from fewstep.compress.methods.common import FrozenCopy, step_grid, x0_prediction
from fewstep.compress.methods.distance import get_distance
from fewstep.core.config import ConfigError, param
from fewstep.core.flow_math import bcast, interpolate, x0_from_velocity
from fewstep.models.loading import load_model

Schedule = Literal["linear", "exponential", "cosine"]
SCHEDULES: tuple[str, ...] = get_args(Schedule)


def beta_schedule(k: int, total: int, kind: str = "linear") -> float:
    """Weight of the fresh noise at training step k of `total` annealing steps."""
    if total <= 0:
        return 0.0
    if kind == "linear":
        return max(0.0, 1.0 - k / total)
    if kind == "exponential":
        return math.exp(-k / total)
    if kind == "cosine":
        return (1 + math.cos(math.pi * min(1.0, k / total))) / 2
    raise ValueError(f"unknown beta schedule {kind!r}; choose one of {', '.join(SCHEDULES)}")


@dataclass
class AnnealingReflowLoss:
    anneal_steps: int  # K: beta reaches 0 (linear) at step K
    schedule: str = "linear"
    t_sampling: str = "uniform"

    def __call__(self, model, batch, rng: StepRandom):
        eps, x0, cond = batch
        beta = beta_schedule(rng.step, self.anneal_steps, self.schedule)
        fresh = rng.randn(*eps.shape).to(eps.device)
        eps_b = math.sqrt(1 - beta**2) * eps + beta * fresh
        t = sample_t(eps.shape[0], self.t_sampling, rng).to(eps.device)
        loss = (model(interpolate(x0, eps_b, t), t, cond) - (eps_b - x0)).pow(2).mean()
        return loss, {"loss": loss.item(), "beta": beta}


@dataclass
class FlowGuidedLoss:
    guide: torch.nn.Module  # frozen copy of the stage-1 model
    distance: str = "pseudo_huber"
    tau_range: tuple[float, float] = (0.2, 0.8)
    guide_weight: float = 1.0
    k: int = 1  # student steps: 1 is the paper's one-step student
    _guide: FrozenCopy = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError(f"k (student steps) must be >= 1; got {self.k}")
        lo, hi = self.tau_range
        if not 0.0 < lo <= hi < 1.0:
            raise ValueError(f"tau_range must satisfy 0 < tau_min <= tau_max < 1; got {self.tau_range}")
        self._guide = FrozenCopy(self.guide)
        self.d = get_distance(self.distance)
        self.grid = step_grid(self.k)

    def to(self, device) -> None:
        self._guide.to(device)

    def _grid_points(self, n: int, rng: StepRandom) -> torch.Tensor:
        # k = 1 draws nothing, so the one-step loss consumes the paper's random stream unchanged
        return torch.zeros(n, dtype=torch.long) if self.k == 1 else rng.randint(0, self.k, n)

    @torch.no_grad()
    def _walk(self, model, x: torch.Tensor, index: torch.Tensor, cond) -> torch.Tensor:
        """The student's own Euler steps from t = 1 down to grid point `index` (per sample)."""
        index = index.to(x.device)
        for j in range(int(index.max())):
            t, t_next = float(self.grid[j]), float(self.grid[j + 1])
            v = model(x, torch.full((x.shape[0],), t, device=x.device), cond)
            moving = bcast((index > j).to(x.dtype), x)
            x = x - moving * (t - t_next) * v
        return x

    def __call__(self, model, batch, rng: StepRandom):
        eps, x0, cond = batch
        n = eps.shape[0]
        t = self.grid[self._grid_points(n, rng)].to(eps.device)
        l_distill = self.d(x0_prediction(model, interpolate(x0, eps, t), t, cond), x0)
        fresh = rng.randn(*eps.shape).to(eps.device)
        index = self._grid_points(n, rng)
        x_t = self._walk(model, fresh, index, cond)
        t_i = self.grid[index].to(eps.device)
        v = model(x_t, t_i, cond)
        lo, hi = self.tau_range
        tau = t_i * (lo + (hi - lo) * rng.rand(n)).to(eps.device)
        with torch.no_grad():
            x_tau = x_t - bcast(t_i - tau, x_t) * v
            x0_guide = x0_from_velocity(x_tau, tau, self._guide(x_tau, tau, cond))
        l_guide = self.d(x0_from_velocity(x_t, t_i, v), x0_guide)
        loss = l_distill + self.guide_weight * l_guide
        return loss, {"loss": loss.item(), "distill": l_distill.item(), "guide": l_guide.item()}


@dataclass(frozen=True)
class SlimFlowConfig(PairInput, Regression, TimeSampling, DistillConfig):
    """Stage 1 (annealing reflow, `steps` steps) into a small student trained from scratch, then stage 2
    (flow-guided distillation, `stage2_steps`); `student_steps` > 1 is fewstep's few-step form of stage 2."""

    anneal_steps: int = param(
        1000,
        "K of beta(k): the fresh noise's weight falls to 0 at step K (linear, cosine), to 1/e (exponential)",
        min=0,
    )
    anneal_schedule: Schedule = param("linear", "shape of beta(k) over stage 1")
    stage2_steps: int = param(1000, "flow-guided distillation steps (stage 2)", min=1)
    tau_min: float = param(0.2, "lowest tau at which the frozen stage-1 model finishes the student's path", above=0)
    tau_max: float = param(0.8, "highest such tau (< 1)", max=0.999999)

    def check(self) -> None:
        super().check()
        if not 0.0 < self.tau_min <= self.tau_max < 1.0:  # checked here, not after a long stage 1
            raise ConfigError(f"need 0 < tau_min <= tau_max < 1; got tau_min {self.tau_min}, tau_max {self.tau_max}",
                              "tau_min")  # fmt: skip

    def auto_init(self, same_architecture: bool) -> str:
        return "scratch" if self.init == "auto" else self.init  # SlimFlow trains its small student from scratch

    @property
    def multi_stage(self) -> bool:
        return True


def run(s: DistillSession, cfg: SlimFlowConfig, out: Path, resume: bool, progress: bool) -> Path:
    student, report = s.new_student()
    scale = s.pairs_scale()
    times = euler_times(cfg.student_steps)

    def spec1(step: int) -> dict:
        extra = {"init": report, "stage": 1, "anneal_steps": cfg.anneal_steps, "train_times": "continuous"}
        return s.spec(step, "euler", times, baked(scale), extra)

    s1 = out / "stage1"
    loss1 = AnnealingReflowLoss(cfg.anneal_steps, cfg.anneal_schedule, cfg.t_sampling)
    saved = s.run_loop(student, loss1, s.pair_batch, cfg.loop(), s1, spec1, resume, progress)
    del student, loss1
    guide = load_model(saved)[0]
    # stage 2 starts from the stage-1 student (a LoRA student: new adapters on the fused stage-1 network)
    student2, report2 = s.new_student("teacher", guide, s1 / "model.safetensors")
    report2["init"] = f"stage 1 ({report['init']})"

    def spec2(step: int) -> dict:
        return s.spec(step, "euler", times, baked(scale), {"init": report2, "stage": 2, "train_times": times[:-1]})

    # student_steps > 1: stage 2 distils for that many Euler steps (fewstep's few-step form of the loss)
    loss2 = FlowGuidedLoss(guide, cfg.distance, (cfg.tau_min, cfg.tau_max), k=cfg.student_steps)
    s2 = out / "stage2"
    s.run_loop(student2, loss2, s.pair_batch, cfg.loop(steps=cfg.stage2_steps), s2, spec2, resume, progress)
    return s2 / "model.safetensors"


METHOD = register_method(Method(
    "slimflow", SlimFlowConfig, run, "annealing reflow into a small student, then flow-guided distillation "
    "(needs --pairs; 1 step, or --student-steps k: fewstep's k-step form of stage 2)",
    paper="Zhu, Liu & Liu, ECCV 2024, SlimFlow", order=20,
))  # fmt: skip
