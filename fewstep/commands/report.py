"""fewstep report: a sweep over systems -> results.json, report.md, report.html, pareto.png, sample grids."""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
from pathlib import Path

from fewstep.commands import Command, add_command
from fewstep.report.run import run_report
from fewstep.report.sweep import _check, load_sweep

EPILOG = """examples:
  fewstep report --example > sweep.yaml        # a documented sweep to edit
  fewstep report benchmarks/sweeps/shapes32.yaml --out benchmarks/results/report
  fewstep report sweep.yaml --out out/report --n 64          # a quick look with fewer prompts
  fewstep report sweep.yaml --out out/report --rerun         # measure everything again

A system is a model (torch) or one engine of a bundle, at one step count; every system gets the same prompts
and seeds. Systems already measured with the same settings and the same model/engine files are reused, so
a killed or extended sweep only measures what is new. An engine that cannot load here (CoreML off macOS) or
a step count a model refuses is listed under "Not measured" with the reason; the sweep goes on.

outputs in --out: results.json (every number), report.md, report.html (self-contained), pareto.png
(latency on a log axis vs FID and vs adherence, frontiers drawn), samples/<system>.png and
samples_side_by_side.png (a row per system, same prompts and seeds)."""


def register(sub: argparse._SubParsersAction, command: Command) -> None:
    p = add_command(sub, command, EPILOG)
    p.add_argument("sweep", nargs="?", help="sweep YAML (see --example)")
    p.add_argument("--out", help="report directory (default: out/report-<sweep file name>)")
    p.add_argument("--n", type=int, help="override data.n: prompts = images per system")
    p.add_argument("--rerun", action="store_true", help="measure every system again instead of reusing results")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--example", action="store_true", help="print a documented example sweep and exit")
    p.set_defaults(run=run)


def example_path() -> Path:
    return Path(__file__).resolve().parent.parent / "report" / "example_sweep.yaml"


def run(args: argparse.Namespace) -> int:
    if args.example:
        print(example_path().read_text(encoding="utf-8"), end="")
        return 0
    if not args.sweep:
        raise ValueError("give a sweep YAML (start from `fewstep report --example > sweep.yaml`)")

    cfg = load_sweep(args.sweep)
    if args.n is not None:
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, n=args.n))
        _check(cfg, "--n")
    out = Path(args.out or f"out/report-{Path(args.sweep).stem}")
    command = "fewstep report " + " ".join(shlex.quote(a) for a in sys.argv[2:])
    result = run_report(cfg, out, rerun=args.rerun, progress=not args.no_progress, command=command)
    print(summary(result, out))
    return 0


def summary(result: dict, out: Path) -> str:
    ok = [r for r in result["systems"] if r["status"] == "ok"]
    lines = [f"{len(ok)} systems measured ({result.get('reused', 0)} reused), "
             f"{len(result['systems']) - len(ok)} not measured (see report.md)."]  # fmt: skip
    front = [r for r in ok if "fid" in r["pareto"]]
    if front:
        lines.append("Pareto frontier (latency vs FID): " + "; ".join(
            f"{r['name']} {r.get('engine') or 'torch'} {r['steps']} step(s): {r['latency_b1']['p50_ms']:.1f} ms, "
            f"FID {r['fid']:.2f}" for r in sorted(front, key=lambda r: r["latency_b1"]["p50_ms"])))  # fmt: skip
    lines.append(f"report: {out / 'report.md'} | {out / 'report.html'} | chart: {out / 'pareto.png'}")
    return "\n".join(lines)
