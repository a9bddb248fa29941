"""fewstep demo: the built-in default end to end (at this stage: the shipped teacher's samples and a summary)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

HELP = "run the built-in demo: samples of the shipped shapes teacher at 50 and at 1-4 steps, and a summary"
DEMO_PROMPTS = (
    "a red circle to the left of a blue square",
    "a small yellow triangle above a large green cross",
    "a purple square in the top right corner on a white background",
    "a cyan cross on the left",
    "two shapes: a blue circle below a red triangle",
    "a large green circle in the center on a black background",
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help=HELP, description=HELP)
    p.add_argument("--out", default="out/demo", help="output directory (default out/demo)")
    p.add_argument("--model", default="shapes32-teacher", help="teacher to use (default: the shipped one)")
    p.add_argument("--seeds", type=int, default=6, help="seeds per prompt (default 6)")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from ..imaging import captioned_grid, save_png
    from ..models.pipeline import TorchPipeline

    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"[1/2] loading {args.model}")
    pipe = TorchPipeline.from_checkpoint(args.model)
    prompts = [p for p in DEMO_PROMPTS for _ in range(args.seeds)]
    seeds = [s for _ in DEMO_PROMPTS for s in range(args.seeds)]
    w = pipe.default_guidance
    runs = []
    print(
        f"[2/2] sampling {len(DEMO_PROMPTS)} prompts x {args.seeds} seeds at 50, 4, 2 and 1 Euler steps (CFG w={w:g})"
    )
    for steps in (50, 4, 2, 1):
        t0 = time.perf_counter()
        images = pipe.generate(prompts, seeds, steps=steps, guidance=w)
        seconds = time.perf_counter() - t0
        path = save_png(captioned_grid(images, list(DEMO_PROMPTS), nrow=args.seeds), out / f"teacher_{steps}step.png")
        runs.append(
            {
                "steps": steps,
                "guidance": w,
                "grid": str(path),
                "seconds": round(seconds, 2),
                "ms_per_image": round(1000 * seconds / len(prompts), 1),
            }
        )
        print(
            f"      {steps:>2} steps: {runs[-1]['ms_per_image']:.1f} ms/image (torch, batch {len(prompts)}) -> {path}"
        )
    summary = {
        "model": args.model,
        "model_name": pipe.spec.get("name"),
        "params": pipe.spec.get("params"),
        "trained_steps": pipe.spec.get("training", {}).get("step"),
        "prompts": list(DEMO_PROMPTS),
        "runs": runs,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"\ndone. Look at {out / 'teacher_50step.png'} (50 steps with CFG) next to {out / 'teacher_1step.png'}:")
    print("the teacher needs many steps; the distillation stages (fewstep distill) make 1-4 step students.")
    print(f"summary: {out / 'summary.json'}")
    return 0
