"""Copy a finished run into the package as a shipped fp16 model, with its curves, config and samples.

    python scripts/ship_model.py runs/shapes32-teacher shapes32-teacher
    python scripts/ship_model.py runs/bench/slimflow shapes32-slimflow

Writes fewstep/weights/NAME.safetensors (fp16 EMA weights + spec; NAME must be listed in
fewstep.models.loading.SHIPPED) and copies config.yaml, metrics.jsonl, training_curve.png and the last sample
grid of the run (of each stage or round for multi-stage methods) to benchmarks/results/NAME/.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import torch

from fewstep.models.loading import SHIPPED, load_model, save_model

RESULTS = Path(__file__).resolve().parent.parent / "benchmarks" / "results"


def _copy_run_files(run: Path, dest: Path, prefix: str = "") -> None:
    for name in ("config.yaml", "metrics.jsonl", "training_curve.png"):
        if (run / name).is_file():
            shutil.copyfile(run / name, dest / f"{prefix}{name}")
    grids = sorted((run / "samples").glob("step_*.png"))
    if grids:
        shutil.copyfile(grids[-1], dest / f"{prefix}training_samples_final.png")


def main(run_dir: str, name: str) -> None:
    if name not in SHIPPED:
        raise SystemExit(f"{name!r} is not a shipped name; add it to fewstep.models.loading.SHIPPED first")
    run = Path(run_dir)
    model, spec = load_model(run / "model.safetensors")
    spec["name"] = name
    spec["created_by"] = dict(spec.get("created_by", {}), shipped_from=str(run), dtype="float16")
    save_model(SHIPPED[name], model, spec, dtype=torch.float16)
    dest = RESULTS / name
    dest.mkdir(parents=True, exist_ok=True)
    _copy_run_files(run, dest)
    for stage in sorted(p for p in run.iterdir() if p.is_dir() and (p / "model.safetensors").is_file()):
        _copy_run_files(stage, dest, prefix=f"{stage.name}_")
    size = SHIPPED[name].stat().st_size / 1e6
    print(f"shipped {SHIPPED[name]} ({size:.2f} MB, step {spec['training']['step']}); results in {dest}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    main(sys.argv[1], sys.argv[2])
