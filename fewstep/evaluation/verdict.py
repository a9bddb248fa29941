"""The equal-steps verdict: is a distilled student better than simply running its teacher with as few steps?

Three systems generate the same prompts with the same seeds: the student at its own N steps, the teacher at N
steps and the teacher at its full steps (both with the teacher's default guidance). Every dataset gets the
**teacher gap**: the RMS pixel distance of each image to the teacher's full-step image for the same prompt and
seed (0-255 scale), i.e. how much of the teacher's quality the few-step system keeps. A built-in dataset with a
judge (shapes, digits at 32x32) also gets domain FID against its real images and prompt adherence, and there the
verdict is the benchmark's rule: better = lower FID *and* at least the teacher's adherence.

The teacher gap is a paired distance, not a distribution metric: it rewards reproducing the teacher's images, which
is what ODE-distillation methods (reflow, SlimFlow, InstaFlow, progressive, consistency, MeanFlow, shortcut) aim
for; distribution-matching students (DMD) may be good and still far from the teacher's image for each seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from fewstep.core.sampling_rules import Sampler
from fewstep.evaluation.evaluate import EVAL_PROMPT_SEED, adherence, eval_set
from fewstep.evaluation.quality import ReferenceMetrics, judge_features
from fewstep.evaluation.train_judge import load_judge
from fewstep.models.datasets import make_dataset
from fewstep.models.pipeline import TorchPipeline

JUDGED = ("shapes", "digits")  # datasets with a shipped judge (32x32)


@dataclass(frozen=True)
class VerdictPrompts:
    """What the three systems generate: prompts, their seeds, and for judged datasets the labels and real images."""

    dataset: str
    prompts: list[str]
    source: str  # where the prompts come from, for the record
    labels: list | None = None
    real: np.ndarray | None = None


def verdict_prompts(dataset: str, n: int, data_path: str | None = None, image_size: int = 32) -> VerdictPrompts:
    """Held-out prompts of a built-in dataset (its evaluation split), or `n` captions spread over an image folder."""
    if n < 2:
        raise ValueError(f"the verdict needs at least 2 prompts; got {n} (0 skips it)")
    if dataset in JUDGED:
        items = [eval_set(dataset, n, EVAL_PROMPT_SEED).item(i) for i in range(n)]
        return VerdictPrompts(dataset, [it[1] for it in items], f"{dataset} evaluation split (held out)",
                              [it[2] for it in items], np.stack([it[0] for it in items]))  # fmt: skip
    ds = make_dataset(dataset, image_size=image_size, path=data_path)
    if len(ds) < 2:
        raise ValueError(f"{data_path} has {len(ds)} captioned image(s); the verdict needs at least 2")
    picks = np.linspace(0, len(ds) - 1, min(n, len(ds))).round().astype(int)
    source = f"{len(picks)} captions spread over {data_path} (the training folder: not held out)"
    return VerdictPrompts(dataset, [ds.caption(int(i)) for i in picks], source)


def _gap(images: np.ndarray, reference: np.ndarray) -> float:
    """Mean over images of the RMS pixel difference (0-255) to the same prompt and seed's reference image."""
    diff = images.astype(np.float64) - reference.astype(np.float64)
    return float(np.sqrt((diff**2).reshape(len(diff), -1).mean(1)).mean())


class _Scorer:
    """The metrics of one verdict: the judge and the real images' features are loaded once for its three systems."""

    def __init__(self, p: VerdictPrompts, image_shape: tuple[int, ...]):
        self.p = p
        self.judged = p.real is not None and image_shape == p.real.shape[1:]
        if self.judged:
            assert p.real is not None
            name = f"{p.dataset}32-judge"
            self.judge, _ = load_judge(name)
            self.reference = ReferenceMetrics(p.real, judge_features(name))

    def __call__(self, images: np.ndarray, teacher_full: np.ndarray) -> dict[str, Any]:
        row: dict[str, Any] = {"teacher_gap": round(_gap(images, teacher_full), 3)}
        if self.judged:
            assert self.p.labels is not None
            row["fid"] = round(self.reference.score(images)["fid"], 3)
            row["adherence"] = round(float(np.mean(adherence(self.p.dataset, self.judge, images, self.p.labels))), 4)
        return row


def equal_steps_verdict(student: TorchPipeline, teacher: TorchPipeline, p: VerdictPrompts,
                        steps: int | None = None) -> dict[str, Any]:  # fmt: skip
    """Student at N steps (its own schedule when `steps` is None) vs the teacher at N and at its full steps."""
    seeds = list(range(len(p.prompts)))
    n = Sampler.parse(student.spec["sampler"]).steps(steps)
    full = int(teacher.spec["sampler"].get("default_steps", 50))
    reference = teacher.generate(p.prompts, seeds, full)
    score = _Scorer(p, reference.shape[1:])
    systems = {
        "student": score(student.generate(p.prompts, seeds, steps), reference),
        "teacher_same_steps": score(teacher.generate(p.prompts, seeds, n), reference),
        "teacher_full_steps": score(reference, reference),
    }
    s, t = systems["student"], systems["teacher_same_steps"]
    if "fid" in s:
        better = s["fid"] < t["fid"] and s["adherence"] >= t["adherence"]
        worse = s["fid"] > t["fid"] and s["adherence"] < t["adherence"]
        basis = "domain FID and adherence"
    else:
        better, worse, basis = s["teacher_gap"] < t["teacher_gap"], s["teacher_gap"] > t["teacher_gap"], "teacher gap"
    outcome = "better" if better else "worse" if worse else "mixed"
    return {"outcome": outcome, "basis": basis, "steps": n, "teacher_full_steps": full, "prompts": len(p.prompts),
            "prompt_source": p.source, "guidance": teacher.default_guidance, "systems": systems,
            "line": verdict_line(outcome, n, full, systems)}  # fmt: skip


def verdict_line(outcome: str, n: int, full: int, systems: dict[str, dict[str, Any]]) -> str:
    s, t, f = systems["student"], systems["teacher_same_steps"], systems["teacher_full_steps"]
    word = {"better": "BETTER than", "worse": "WORSE than", "mixed": "neither better nor worse than"}[outcome]
    parts = [f"teacher gap {s['teacher_gap']:.1f} vs {t['teacher_gap']:.1f}"]
    if "fid" in s:
        parts = [f"FID {s['fid']:.2f} vs {t['fid']:.2f}",
                 f"adherence {100 * s['adherence']:.1f}% vs {100 * t['adherence']:.1f}%", *parts]  # fmt: skip
        tail = f"; teacher at {full} steps: FID {f['fid']:.2f}, adherence {100 * f['adherence']:.1f}%"
    else:
        tail = f" (0 = the teacher's {full}-step image; RMS on 0-255)"
    return f"verdict: the student at {n} step{'s' * (n != 1)} is {word} the teacher at {n} ({', '.join(parts)}{tail})"
