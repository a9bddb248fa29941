"""fewstep demo: the built-in chain: teacher -> short distillation -> engines -> bench -> report."""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import yaml

from fewstep.commands import Command, add_command
from fewstep.commands.config_flags import count
from fewstep.commands.dispatch import main as cli
from fewstep.core.fsio import atomic_write_text
from fewstep.report.run import run_report
from fewstep.report.sweep import load_sweep

EPILOG = """stages (each reused when it finished before, so the demo is safe to re-run or to resume after a kill):
  1. distill   a SHORT guidance distillation of the shipped shapes teacher (a few hundred steps, a few minutes
               on 2 CPU cores: a demonstration, not a trained student; the shipped students were trained longer)
  2. export    the student -> ONNX fp32 + int8, OpenVINO fp32 + int8, a CoreML package (runs only on macOS)
  3. bench     runtime latency of the bundle per batch size and stage, cold start, emulated edge profiles
  4. report    the teacher at 50/4/2/1 steps, the shipped students and the new one at 1/2/4 steps, every engine:
               domain FID, KID, adherence, p50/p99 latency, images/s, size, memory -> report.md/.html, pareto.png

About 6 minutes on a 2-core CPU the first time (6.1 min measured). The sweep it runs is written to OUT/sweep.yaml:
edit it and run `fewstep report OUT/sweep.yaml --out OUT/report` to measure more."""

TEACHER = "shapes32-teacher"


def register(sub: argparse._SubParsersAction, command: Command) -> None:
    p = add_command(sub, command, EPILOG)
    p.add_argument("--out", default="out/demo", help="output directory (default out/demo)")
    p.add_argument("--distill-steps", type=int, default=200, help="steps of the short distillation (default 200)")
    p.add_argument("--n", type=int, default=128, help="prompts (= images per system) in the report (default 128)")
    p.add_argument("--threads", type=count(1), default=2, help="CPU threads for every stage (default 2)")
    p.add_argument("--rerun", action="store_true", help="measure every system of the report again")
    p.set_defaults(run=run)


def demo_sweep(student: Path, bundle: Path, n: int, threads: int) -> dict:
    """The report of the demo: the teacher, the shipped students and the demo's own student and engines."""
    return {
        "name": "fewstep demo (shapes32, short distillation)",
        "data": {"dataset": "shapes", "n": n},
        "latency": {"runs": 20, "warmup": 3, "batch": 64, "threads": threads, "memory": True},
        "grid_prompts": 8,
        "systems": [
            {"name": "teacher", "model": TEACHER, "steps": [50, 4, 2, 1], "guidance": 3.0},
            {"name": "slimflow (shipped)", "model": "shapes32-slimflow", "steps": [1, 2, 4]},
            {"name": "progressive (shipped)", "model": "shapes32-progressive-4step", "steps": [1, 2, 4]},
            {"name": "guidance (demo, short)", "model": str(student.resolve()), "steps": [1, 2, 4]},
            {"name": "guidance (demo, short)", "bundle": str(bundle.resolve()), "steps": [2]},
        ],
    }


class Stages:
    """Stage markers: a stage whose marker holds the same settings is not run again."""

    def __init__(self, out: Path):
        self.out = out
        self.times: dict[str, float] = {}

    def done(self, name: str, key: dict) -> bool:
        marker = self.out / f".done-{name}.json"
        return marker.is_file() and json.loads(marker.read_text()) == key

    def mark(self, name: str, key: dict) -> None:
        atomic_write_text(self.out / f".done-{name}.json", json.dumps(key))

    def run(self, index: int, name: str, what: str, key: dict, fn) -> None:
        print(f"\n[{index}/4] {name}: {what}", flush=True)
        if self.done(name, key):
            print("      done before; reused (delete the stage's folder to redo it)")
            return
        t0 = time.perf_counter()
        fn()
        self.times[name] = round(time.perf_counter() - t0, 1)
        self.mark(name, key)
        print(f"      {name} took {self.times[name]:.0f} s", flush=True)


def run(args: argparse.Namespace) -> int:

    if args.distill_steps < 1 or args.n < 10:
        raise ValueError("--distill-steps must be >= 1 and --n >= 10")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    student_dir, bundle, report = out / "student", out / "bundle", out / "report"
    stages = Stages(out)
    t_start = time.perf_counter()
    threads = str(args.threads)

    distill_args = ["distill", "guidance", "--teacher", TEACHER, "--student", "same", "--student-steps", "4",
                    "--steps", str(args.distill_steps), "--batch-size", "32", "--lr", "1e-4", "--ema-decay", "0.99",
                    "--warmup-steps", "20", "--dataset-size", "2000", "--checkpoint-every", "50",
                    "--sample-every", str(args.distill_steps), "--threads", threads,
                    "--out", str(student_dir)]  # fmt: skip

    def distill() -> None:
        resume = ["--resume"] if (student_dir / "state.safetensors").is_file() else []
        if (student_dir / "config.yaml").is_file() and not resume:  # killed before its first checkpoint
            shutil.rmtree(student_dir)
        _ok(cli([*distill_args, *resume]), "distillation")

    stages.run(1, "distill", f"SHORT guidance distillation of {TEACHER}, {args.distill_steps} steps "
               "(a demonstration, minutes on a CPU; the shipped students trained far longer)",
               {"args": distill_args}, distill)  # fmt: skip

    export_args = ["export", str(student_dir / "model.safetensors"), "--out", str(bundle), "--to",
                   "onnx,openvino,coreml", "--precision", "fp32,int8", "--quantizer", "ort", "--speed-gate", "false",
                   "--threads", threads]  # fmt: skip
    stages.run(2, "export", "ONNX fp32 + int8, OpenVINO fp32 + int8, CoreML package; parity-gated against torch",
               {"args": export_args}, lambda: _ok(cli(export_args), "export"))  # fmt: skip

    bench_args = ["bench", str(bundle), "--batch-sizes", "1,8", "--runs", "20", "--warmup", "3", "--threads", threads,
                  "--edge", "--teacher", "none", "--out", str(out / "bench.json")]  # fmt: skip
    stages.run(3, "bench", "runtime latency per batch size and stage, cold start, emulated edge profiles",
               {"args": bench_args}, lambda: _ok(cli(bench_args), "bench"))  # fmt: skip

    sweep_path = out / "sweep.yaml"
    sweep = demo_sweep(student_dir / "model.safetensors", bundle, args.n, args.threads)
    atomic_write_text(sweep_path, yaml.safe_dump(sweep, sort_keys=False))
    print(f"\n[4/4] report: every system on the same {args.n} prompts and seeds (sweep: {sweep_path})", flush=True)
    t0 = time.perf_counter()
    command = f"fewstep report {sweep_path} --out {report}"
    result = run_report(load_sweep(sweep_path), report, rerun=args.rerun, command=command)
    stages.times["report"] = round(time.perf_counter() - t0, 1)
    summary = {"stages_seconds": stages.times, "total_seconds": round(time.perf_counter() - t_start, 1),
               "report": str(report / "report.md")}  # fmt: skip
    atomic_write_text(out / "demo.json", json.dumps(summary, indent=2) + "\n")
    print(closing_lines(result, report, summary["total_seconds"]))
    return 0


def _ok(code: int, stage: str) -> None:
    if code != 0:
        raise RuntimeError(f"the demo's {stage} stage failed (exit {code}); its output above says why")


def closing_lines(result: dict, report: Path, seconds: float) -> str:
    ok = [r for r in result["systems"] if r["status"] == "ok"]
    teacher = next((r for r in ok if r["name"] == "teacher" and r["steps"] == 50), None)
    fronts = {m: sorted((r for r in ok if m in r["pareto"]), key=lambda r: r["latency_b1"]["p50_ms"])
              for m in ("fid", "adherence")}  # fmt: skip
    lines = [
        f"\ndone in {seconds / 60:.1f} min. {len(ok)} systems on the same prompts and seeds "
        f"({result.get('reused', 0)} reused from an earlier run)."
    ]
    if teacher:
        lines.append(f"  the teacher at 50 steps (CFG): {teacher['latency_b1']['p50_ms']:.0f} ms per image, "
                     f"FID {teacher['fid']:.2f}, adherence {100 * teacher['adherence']:.0f}%")  # fmt: skip
    for metric, title in (("fid", "latency vs domain FID"), ("adherence", "latency vs adherence")):
        lines.append(f"  Pareto frontier, {title} (fastest first):")
        for r in fronts[metric]:
            speed = f" ({teacher['latency_b1']['p50_ms'] / r['latency_b1']['p50_ms']:.0f}x faster)" if teacher else ""
            lines.append(f"    {r['name']} {r.get('engine') or 'torch'} {r['steps']} step(s): "
                         f"{r['latency_b1']['p50_ms']:.1f} ms{speed}, FID {r['fid']:.2f}, "
                         f"adherence {100 * r['adherence']:.0f}%")  # fmt: skip
    lines += [f"look at: {report / 'pareto.png'} (latency vs quality, frontier drawn)",
              f"         {report / 'report.html'} (the whole report, one file)",
              f"         {report / 'samples_side_by_side.png'} (same prompts and seeds, a row per system)"]  # fmt: skip
    return "\n".join(lines)
