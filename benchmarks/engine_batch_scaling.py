"""End-to-end `Generator` latency per engine and thread count at batch 1 and batch 8 (the 4-step student).

    python benchmarks/engine_batch_scaling.py     # after benchmarks/runtime_serving.py has exported the bundle

Why: the server's micro-batching gain is capped by how much cheaper an image is inside a batch of 8 than alone,
and that differs by engine on a CPU. Medians of sequential runs, one engine loaded at a time.
Writes benchmarks/results/runtime/engine_batch_scaling.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from runtime_serving import ms, timed  # benchmarks/ is on sys.path when run as a script

from fewstep.runtime import Generator
from fewstep.runtime.bench import machine

OUT = Path(__file__).resolve().parent / "results" / "runtime" / "engine_batch_scaling.json"
PROMPT = "a red circle on the left"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", default="runs/bench-runtime/shapes32-progressive-4step")
    parser.add_argument("--engines", default="onnx-int8-ort,openvino-int8,onnx-fp32,openvino-fp32")
    parser.add_argument("--runs", type=int, default=40)
    args = parser.parse_args()
    rows = []
    for engine in args.engines.split(","):
        for threads in (None, 1):
            gen = Generator.from_bundle(args.bundle, engine=engine, threads=threads)
            seeds = iter(range(10**6))
            b1 = ms(timed(lambda g=gen, s=seeds: g.generate([PROMPT], [next(s)]), args.runs, warmup=5))
            batch8 = lambda g=gen, s=seeds: g.generate([PROMPT] * 8, [next(s) for _ in range(8)])  # noqa: E731
            b8 = ms(timed(batch8, args.runs // 2, warmup=5))
            row = {"engine": engine, "threads": threads or "backend default", "batch1_ms": b1, "batch8_ms": b8,
                   "batch8_ms_per_image": round(b8 / 8, 2), "batch8_gain_per_image": round(8 * b1 / b8, 2)}  # fmt: skip
            rows.append(row)
            print(json.dumps(row), flush=True)
            del gen
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"machine": machine(), "bundle": args.bundle, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
