"""Student initialisation compared: the same reflow run of `student-s` from scratch and from the teacher's
sliced weights (and, for reference, a teacher-sized student initialised from the teacher).

    python benchmarks/init_comparison.py --pairs runs/pairs-shapes-w3-heun16 --steps 400 --n 256

Short runs on purpose (the point is how far each start gets with the same budget). Writes
benchmarks/results/distill/init_comparison.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from fewstep.compress.distill import DistillConfig, distill
from fewstep.evaluation.evaluate import Setting, evaluate

OUT = Path(__file__).resolve().parent / "results" / "distill"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", required=True)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--runs", default="runs/init_comparison")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--variants", default="student-s:scratch,student-s:sliced,same:teacher")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for variant in args.variants.split(","):
        student, init = variant.split(":")
        cfg = DistillConfig(method="reflow", pairs=args.pairs, student=student, init=init, steps=args.steps,
                            student_steps=1, ema_decay=0.99, sample_every=0, warmup_steps=50)  # fmt: skip
        run = Path(args.runs) / f"{student}-{init}"
        t0 = time.time()
        ckpt = distill(cfg, run, resume=True, progress=False)
        train_s = time.time() - t0
        result = evaluate(str(ckpt), "shapes", args.n, (Setting("euler", 1, 3.0), Setting("euler", 2, 3.0)),
                          progress=False)  # fmt: skip
        for s in result["systems"]:
            rows.append({"student": student, "init": init, "train_steps": args.steps, "train_seconds": round(train_s),
                         "steps": s["steps"], "fid": s["fid"], "adherence": s["adherence"]})  # fmt: skip
    OUT.mkdir(parents=True, exist_ok=True)
    command = f"python benchmarks/init_comparison.py --pairs {args.pairs} --steps {args.steps} --n {args.n}"
    (OUT / "init_comparison.json").write_text(json.dumps({"command": command, "rows": rows}, indent=2) + "\n")
    md = [f"# Student initialisation, reflow for {args.steps} steps each\n", f"`{command}`\n",
          "| student | init | steps | domain FID | adherence | training s |", "|---|---|---|---|---|---|"]  # fmt: skip
    md += [f"| {r['student']} | {r['init']} | {r['steps']} | {r['fid']:.2f} | {100 * r['adherence']:.1f}% | "
           f"{r['train_seconds']} |" for r in rows]  # fmt: skip
    (OUT / "init_comparison.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
