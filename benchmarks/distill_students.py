"""Students of every distillation method against their shipped teacher, on the built-in shapes benchmark.

Each student is evaluated at 1, 2 and 4 steps (its own sampler rule and guidance mode) with the same 512
held-out prompts and seeds, feature network and judge as the teacher's baselines
(benchmarks/results/TEACHER/eval.json, made by teacher_baselines.py).

    python benchmarks/distill_students.py slimflow=runs/bench/slimflow consistency=runs/bench/consistency ...
    python benchmarks/distill_students.py --teacher shapes32-teacher-v1 NAME=RUN   # students of the first teacher

Writes benchmarks/results/{distill-v2 | distill}/{NAME/eval.json, NAME/samples_*.png, results.json, results.md}
for students of shapes32-teacher | shapes32-teacher-v1; a student already evaluated (NAME/eval.json newer than
its checkpoint) is kept unless --force.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from fewstep.evaluation.evaluate import Setting, evaluate
from fewstep.models.loading import SHIPPED, load_model, model_sha256, resolve_checkpoint

ROOT = Path(__file__).resolve().parent / "results"
# each shipped teacher: its students' results directory (its baselines are in ROOT / name / eval.json)
RESULTS_OF = {"shapes32-teacher": "distill-v2", "shapes32-teacher-v1": "distill"}
SHAPES_TEACHER_PARAMS = 1_494_755


def _check_teacher(name: str, spec: dict, teacher: str, shas: dict[str, str]) -> None:
    """Refuse a student distilled from the other shipped teacher: its baselines would be the wrong ones.
    (InstaFlow's teacher is a reflow student, not a shipped teacher: it is compared with the chosen one.)"""
    used = spec["training"].get("teacher_sha256")
    for other, sha in shas.items():
        if other != teacher and used == sha:
            raise SystemExit(f"{name} was distilled from {other}; evaluate it with --teacher {other}")


def _init_label(init) -> str:
    return init.get("init", "?") if isinstance(init, dict) else str(init)


def _row(name: str, spec: dict, s: dict, teacher: dict[int, dict]) -> dict:
    t = teacher.get(s["steps"])
    return {
        "student": name,
        "method": spec["training"]["method"],
        "params": spec["params"],
        "params_vs_teacher": round(spec["params"] / SHAPES_TEACHER_PARAMS, 3),  # InstaFlow's own teacher is a student
        "init": _init_label(spec["training"].get("init")),
        "train_steps": spec["training"]["step"],
        "steps": s["steps"],
        "nfe": s["nfe"],
        "fid": s["fid"],
        "kid_mean": s["kid_mean"],
        "adherence": s["adherence"],
        "ms_per_image": s["ms_per_image"],
        "teacher_fid_same_steps": t["fid"] if t else None,
        "teacher_adherence_same_steps": t["adherence"] if t else None,
        "lower_fid_than_teacher": bool(t and s["fid"] < t["fid"]),
        # domain FID alone is fooled by blurry blobs on plain backgrounds (see README): a student beats the
        # teacher only with lower FID *and* at least the teacher's adherence
        "beats_teacher": bool(t and s["fid"] < t["fid"] and s["adherence"] >= t["adherence"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("students", nargs="+", help="NAME=checkpoint-or-run-dir")
    parser.add_argument("--n", type=int, default=512)
    parser.add_argument("--steps", default="1,2,4")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--force", action="store_true")
    parser.add_argument("--teacher", choices=sorted(RESULTS_OF), default="shapes32-teacher",
                        help="the teacher the students were distilled from (its baselines, results dir)")  # fmt: skip
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = ROOT / RESULTS_OF[args.teacher]
    teacher_eval = json.loads((ROOT / args.teacher / "eval.json").read_text())
    teacher = {s["steps"]: s for s in teacher_eval["systems"] if s["guidance"] == 3.0}
    settings = tuple(Setting("euler", int(k), 3.0) for k in args.steps.split(","))
    results = json.loads((out / "results.json").read_text()) if (out / "results.json").is_file() else {}
    shas = {name: model_sha256(SHIPPED[name]) for name in RESULTS_OF}  # hashed once, not per student
    for item in args.students:
        name, path = item.split("=", 1)
        ckpt = resolve_checkpoint(path)
        spec = load_model(ckpt)[1]
        _check_teacher(name, spec, args.teacher, shas)
        where = out / name
        done = where / "eval.json"
        if done.is_file() and done.stat().st_mtime > ckpt.stat().st_mtime and not args.force:
            result = json.loads(done.read_text())
        else:
            t0 = time.time()
            result = evaluate(str(ckpt), "shapes", args.n, settings, out_dir=where)
            result["command"] = (f"python benchmarks/distill_students.py --teacher {args.teacher} {name}={path} "
                                 f"--n {args.n}")  # fmt: skip
            result["wall_seconds"] = round(time.time() - t0, 1)
            where.mkdir(parents=True, exist_ok=True)
            done.write_text(json.dumps(result, indent=2) + "\n")
        results[name] = {"checkpoint": str(path), "config": spec["training"]["config"],
                         "rows": [_row(name, spec, s, teacher) for s in result["systems"]]}  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "results.md").write_text(render(results, teacher_eval, args.teacher))
    print(render(results, teacher_eval, args.teacher))


def render(results: dict, teacher_eval: dict, teacher: str) -> str:
    lines = [
        f"# Students vs {teacher}, their teacher (shapes, 512 held-out prompts, prompt i with seed i)\n",
        f"Domain FID / KID in {teacher_eval['feature_space']}; adherence = the shapes judge's exact check. "
        "ms/image: torch eager, batch 64, 2 CPU threads. NFE counts network evaluations per image.\n",
        "A student **beats the teacher** only with a lower FID *and* at least the teacher's adherence at the same "
        "step count: domain FID alone rates blurry blobs on the right backgrounds better than the teacher's crisp "
        "shapes (look at the sample grids next to each eval.json).\n",
        "| system | params (x teacher) | steps | NFE | FID | KID x1e3 | adherence | teacher FID / adh., same steps "
        "| beats teacher |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for s in teacher_eval["systems"]:
        lines.append(f"| {teacher}, Euler, CFG w={s['guidance']:g} | 1,494,755 (1.00) | {s['steps']} | {s['nfe']} | "
                     f"{s['fid']:.2f} | {1e3 * s['kid_mean']:.2f} | {100 * s['adherence']:.1f}% | | |")  # fmt: skip
    for name, r in results.items():
        for row in r["rows"]:
            tf, ta = row["teacher_fid_same_steps"], row.get("teacher_adherence_same_steps")
            lines.append(
                f"| {name} ({row['method']}, init {row['init']}, {row['train_steps']} steps) | {row['params']:,} "
                f"({row['params_vs_teacher']:.2f}) | {row['steps']} | {row['nfe']} | {row['fid']:.2f} | "
                f"{1e3 * row['kid_mean']:.2f} | {100 * row['adherence']:.1f}% | "
                f"{'' if tf is None else f'{tf:.2f} / {100 * ta:.1f}%'} | {'yes' if row['beats_teacher'] else 'no'} |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
