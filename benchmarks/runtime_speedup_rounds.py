"""How steady is the runtime's batch-1 speed-up over the torch pipeline? The runtime rows of
`runtime_serving.py`, repeated in rounds on one idle machine (each round: every engine end to end, then the torch
student run like a diffusers pipeline, medians of --runs calls), so a single run's luck does not decide the target.

    python benchmarks/runtime_speedup_rounds.py --rounds 5

Writes benchmarks/results/runtime/speedup_rounds.json: per round and engine the runtime, bare-engine and torch
milliseconds and their ratios, then per engine the median, min and max speed-up and runtime overhead over the rounds.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from runtime_serving import OUT, ensure_bundle, runtime_vs_bare_and_torch

from fewstep.runtime.bench import machine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundles", default="runs/bench-runtime", help="where the exported bundles live")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=50, help="timed calls per engine per round (median)")
    parser.add_argument(
        "--engines",
        default="onnx-int8-ort,openvino-int8,torch-fp32",
        help="engines to pin (comma-separated; torch-fp32: the network in torch eager in the runtime)",
    )
    args = parser.parse_args()
    engines = tuple(e for e in args.engines.split(",") if e)
    bundle = ensure_bundle("shapes32-progressive-4step", Path(args.bundles), engines=engines)
    rounds = []
    for r in range(args.rounds):
        row = runtime_vs_bare_and_torch(bundle, args.runs, engines)
        keep = ("engine", "runtime_ms", "bare_engine_calls_ms", "runtime_overhead", "torch_student_ms",
                "runtime_speedup_vs_torch")  # fmt: skip
        rounds.append([{k: e[k] for k in keep} for e in row["pinned_engines"]])
        print(f"round {r + 1}/{args.rounds}:", {e["engine"]: e["runtime_speedup_vs_torch"] for e in rounds[-1]})
    summary = {}
    for i, engine in enumerate(engines):
        ratios = [rnd[i]["runtime_speedup_vs_torch"] for rnd in rounds]
        overhead = [rnd[i]["runtime_overhead"] for rnd in rounds]
        summary[engine] = {"median": round(float(np.median(ratios)), 2), "min": min(ratios), "max": max(ratios),
                           "rounds_at_or_over_3x": sum(x >= 3 for x in ratios), "rounds": len(ratios),
                           "runtime_overhead": {"median": round(float(np.median(overhead)), 3), "min": min(overhead),
                                                "max": max(overhead)}}  # fmt: skip
    result = {"machine": machine(), "bundle": str(bundle), "runs_per_round": args.runs, "rounds": rounds,
              "speedup_vs_torch": summary}  # fmt: skip
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "speedup_rounds.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
