"""The model files that ship with fewstep (fewstep/weights/), by name: `shapes32-teacher`, the trained students,
the judges. Each is a safetensors checkpoint under 20 MB; the results it reproduces are in benchmarks/results."""

from __future__ import annotations

from pathlib import Path

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
SHIPPED = {
    "shapes32-teacher": WEIGHTS_DIR / "shapes32-teacher.safetensors",
    # the first teacher (10k steps, logit-normal t): shapes32-slimflow and -progressive-4step were distilled from it
    "shapes32-teacher-v1": WEIGHTS_DIR / "shapes32-teacher-v1.safetensors",
    "shapes32-progressive-4step": WEIGHTS_DIR / "shapes32-progressive-4step.safetensors",
    "shapes32-slimflow": WEIGHTS_DIR / "shapes32-slimflow.safetensors",
    # SlimFlow into the 0.25x student-s from the fine-tuned teacher, 3x the v1 recipe's steps: the paper's one-step form
    "shapes32-slimflow-v2": WEIGHTS_DIR / "shapes32-slimflow-v2.safetensors",
    # SlimFlow 0.25x, stage 2 in its 4-step form on 8,192 pairs: beats the teacher at 1, 2 and 4 steps (4 by default)
    "shapes32-slimflow-4step": WEIGHTS_DIR / "shapes32-slimflow-4step.safetensors",
    "shapes32-consistency-4step": WEIGHTS_DIR / "shapes32-consistency-4step.safetensors",
    # consistency into the 0.25x student-s from shapes32-slimflow-v2's run: beats the teacher at 1, 2 and 4 steps
    "shapes32-consistency-s-4step": WEIGHTS_DIR / "shapes32-consistency-s-4step.safetensors",
    "shapes32-judge": WEIGHTS_DIR / "shapes32-judge.safetensors",
    "digits32-judge": WEIGHTS_DIR / "digits32-judge.safetensors",
}
