"""InstaFlow-style one-step / k-step distillation (Liu et al. 2024; docs/concepts/methods/instaflow.md).

On pairs (eps, x0_hat) of a (reflowed) teacher: t from the k-point grid {1, (k-1)/k, ..., 1/k},
x_t = (1 - t) x0_hat + t eps on the straight path, and the student's x0 prediction x_t - t v_s(x_t, t) is
regressed onto the teacher's ODE endpoint x0_hat with d. k = 1 is exactly d(eps - v_s(eps, 1), x0_hat).
With these targets k Euler steps of the student walk the pair's straight line.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fewstep.compress.distill_config import DistillConfig, PairInput, Regression
from fewstep.compress.distill_session import DistillSession, baked, euler_times
from fewstep.compress.distributed import StepRandom
from fewstep.compress.method_registry import Method, register_method
from fewstep.compress.methods.common import step_grid, x0_prediction
from fewstep.compress.methods.distance import get_distance
from fewstep.core.flow_math import interpolate


@dataclass
class InstaFlowLoss:
    k: int = 1
    distance: str = "pseudo_huber"

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError(f"k (student steps) must be >= 1; got {self.k}")
        self.d = get_distance(self.distance)

    def __call__(self, model, batch, rng: StepRandom):
        eps, x0, cond = batch
        t = step_grid(self.k)[rng.randint(0, self.k, eps.shape[0])].to(eps.device)
        loss = self.d(x0_prediction(model, interpolate(x0, eps, t), t, cond), x0)
        return loss, {"loss": loss.item()}


@dataclass(frozen=True)
class InstaFlowConfig(PairInput, Regression, DistillConfig):
    """InstaFlow reads a (reflowed) teacher's pairs; `student_steps` is its k."""


def run(s: DistillSession, cfg: InstaFlowConfig, out: Path, resume: bool, progress: bool) -> Path:
    student, report = s.new_student()
    times = euler_times(cfg.student_steps)

    def spec(step: int) -> dict:
        return s.spec(step, "euler", times, baked(s.pairs_scale()), {"init": report, "train_times": times[:-1]})

    loss = InstaFlowLoss(cfg.student_steps, cfg.distance)
    s.run_loop(student, loss, s.pair_batch, cfg.loop(), out, spec, resume, progress)
    return out / "model.safetensors"


METHOD = register_method(Method(
    "instaflow", InstaFlowConfig, run, "one-step / k-step regression onto the (reflowed) teacher's pair images "
    "(needs --pairs; they may come from a reflowed teacher)", paper="Liu et al. 2024, InstaFlow", order=30,
))  # fmt: skip
