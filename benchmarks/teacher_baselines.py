"""Baselines of the shipped shapes teacher: domain FID, KID and prompt adherence at 50 steps with CFG and at
1, 2 and 4 Euler steps (with and without CFG at 1 step). Every student must beat these at equal steps.

    python benchmarks/teacher_baselines.py [--n 512] [--model shapes32-teacher | shapes32-teacher-v1 | PATH]

Writes benchmarks/results/MODEL/{eval.json, results.md, samples_*.png} for a shipped MODEL (--out otherwise).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from fewstep.commands.eval import format_table
from fewstep.evaluation.evaluate import DEFAULT_SETTINGS, evaluate

ROOT = Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="shapes32-teacher")
    parser.add_argument("--n", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, help="default: benchmarks/results/MODEL for a shipped model")
    args = parser.parse_args()
    if args.out is None:
        if "/" in args.model or args.model.endswith(".safetensors"):
            parser.error("--out is needed for a model path (the default is for shipped model names)")
        args.out = ROOT / args.model
    torch.set_num_threads(args.threads)
    t0 = time.time()
    result = evaluate(args.model, "shapes", args.n, DEFAULT_SETTINGS, out_dir=args.out)
    result["machine"] = {
        "cpu": platform.processor() or platform.machine(),
        "threads": args.threads,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    result["command"] = f"python benchmarks/teacher_baselines.py --n {args.n} --model {args.model}"
    result["wall_seconds"] = round(time.time() - t0, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "eval.json").write_text(json.dumps(result, indent=2) + "\n")
    acc = result["judge_accuracy_on_real"]
    rr = result["real_vs_real"]
    md = (
        f"# {args.model}: baselines\n\n`{result['command']}` ({result['wall_seconds']} s, {args.threads} CPU threads, "
        f"torch {torch.__version__}). {result['images']} held-out prompts, prompt i with seed i for every row. "
        f"ms/image: torch eager, batch 64, this CPU.\n\n"
        + format_table(result)
        + f"\nReal vs real (two disjoint sets of {result['images']} real images): {result['feature_space']} "
        f"{rr['fid']:.2f}, KID x1e3 {1e3 * rr['kid_mean']:.2f}. Judge adherence on the real images of these "
        f"prompts: {100 * acc['adherence_on_real']:.1f}% (the ceiling of the adherence column).\n\n"
        "| setting | adherence, one-shape prompts | adherence, two-shape prompts |\n|---|---|---|\n"
        + "".join(
            f"| {s['label']} | {100 * s['adherence_one_shape']:.1f}% | {100 * s['adherence_two_shapes']:.1f}% |\n"
            for s in result["systems"]
        )
    )
    (args.out / "results.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
