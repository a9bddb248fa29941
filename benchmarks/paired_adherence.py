"""Is system B's adherence really different from system A's? A paired test on two `fewstep eval` runs with the
same dataset and --n (fewstep.evaluation.paired): B - A with its paired standard error and McNemar's exact p.

    python benchmarks/paired_adherence.py runs/eval2048/shapes32-teacher/eval.json \
        runs/eval2048/runs_long_consistency-teacher/eval.json --steps 4
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from fewstep.evaluation.paired import paired_adherence


def row_for(eval_json: Path, steps: int) -> dict:
    result = json.loads(eval_json.read_text())
    rows = [s for s in result["systems"] if s["steps"] == steps]
    if not rows:
        raise SystemExit(f"{eval_json} has no {steps}-step row; it has {[s['label'] for s in result['systems']]}")
    if "adherent_per_prompt" not in rows[0]:
        raise SystemExit(f"{eval_json} predates per-prompt verdicts: re-run its `fewstep eval`")
    return rows[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("a", type=Path, help="eval.json of the reference system (e.g. the teacher)")
    parser.add_argument("b", type=Path, help="eval.json of the system compared with it")
    parser.add_argument("--steps", type=int, required=True, help="the step count whose rows are compared")
    args = parser.parse_args()
    ra, rb = row_for(args.a, args.steps), row_for(args.b, args.steps)
    out = paired_adherence(ra["adherent_per_prompt"], rb["adherent_per_prompt"])
    out |= {"a": f"{args.a} {ra['label']}", "b": f"{args.b} {rb['label']}"}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
