"""Reflow / k-rectified flow (Liu, Gong & Liu 2023; docs/concepts/methods/reflow.md).

On teacher pairs (eps, x0_hat): x_t = (1 - t) x0_hat + t eps, target eps - x0_hat, L2, t uniform. The
student's paths become straighter, so 1-4 Euler steps lose much less than the teacher's do.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fewstep.compress.distill_config import DistillConfig, PairInput, TimeSampling
from fewstep.compress.distill_session import DistillSession, baked, euler_times
from fewstep.compress.distributed import StepRandom
from fewstep.compress.flow_matching import sample_t
from fewstep.compress.method_registry import Method, register_method
from fewstep.core.flow_math import interpolate


@dataclass
class ReflowLoss:
    t_sampling: str = "uniform"

    def __call__(self, model, batch, rng: StepRandom):
        eps, x0, cond = batch
        t = sample_t(eps.shape[0], self.t_sampling, rng).to(eps.device)
        loss = (model(interpolate(x0, eps, t), t, cond) - (eps - x0)).pow(2).mean()
        return loss, {"loss": loss.item()}


@dataclass(frozen=True)
class ReflowConfig(PairInput, TimeSampling, DistillConfig):
    """Reflow reads the pair cache and draws training times; its student samples with `student_steps` Euler steps."""


def run(s: DistillSession, cfg: ReflowConfig, out: Path, resume: bool, progress: bool) -> Path:
    student, report = s.new_student()
    times = euler_times(cfg.student_steps)

    def spec(step: int) -> dict:
        return s.spec(step, "euler", times, baked(s.pairs_scale()), {"init": report, "train_times": "continuous"})

    s.run_loop(student, ReflowLoss(cfg.t_sampling), s.pair_batch, cfg.loop(), out, spec, resume, progress)
    return out / "model.safetensors"


METHOD = register_method(Method(
    "reflow", ReflowConfig, run, "k-rectified flow on teacher pairs: straighter paths, few Euler steps (needs --pairs)",
    paper="Liu, Gong & Liu 2023, Flow straight and fast", order=10,
))  # fmt: skip
