"""Copy a finished teacher run into the package as the shipped fp16 model, with its curve and config.

    python scripts/ship_teacher.py runs/shapes32-teacher

Writes fewstep/weights/shapes32-teacher.safetensors (fp16 EMA weights + spec) and copies config.yaml,
metrics.jsonl, training_curve.png and the last sample grid to benchmarks/results/shapes32-teacher/.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import torch

from fewstep.models.loading import SHIPPED, load_model, save_model

RESULTS = Path(__file__).resolve().parent.parent / "benchmarks" / "results" / "shapes32-teacher"


def main(run_dir: str) -> None:
    run = Path(run_dir)
    model, spec = load_model(run / "model.safetensors")
    spec["created_by"] = dict(spec.get("created_by", {}), shipped_from=str(run), dtype="float16")
    save_model(SHIPPED["shapes32-teacher"], model, spec, dtype=torch.float16)
    RESULTS.mkdir(parents=True, exist_ok=True)
    for name in ("config.yaml", "metrics.jsonl", "training_curve.png"):
        shutil.copyfile(run / name, RESULTS / name)
    last = sorted((run / "samples").glob("step_*.png"))[-1]
    shutil.copyfile(last, RESULTS / "training_samples_final.png")
    size = SHIPPED["shapes32-teacher"].stat().st_size / 1e6
    step = spec["training"]["step"]
    print(f"shipped {SHIPPED['shapes32-teacher']} ({size:.2f} MB, step {step}); results in {RESULTS}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/shapes32-teacher")
