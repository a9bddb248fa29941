"""OpenVINO with static batch sizes (the runtime's default) vs its dynamic-batch model, next to ONNX Runtime int8.

    python benchmarks/openvino_static_shapes.py     # after benchmarks/runtime_serving.py has exported the bundle

Each variant is a `Generator` on the 4-step student's bundle, end to end (4 denoiser calls, PNG-free): the load
time, the first call at each new batch size (which compiles it: static OpenVINO only), then medians of 7
interleaved rounds of 15 calls at batch 1, 3 (run padded to 4 by the static engine) and 8, all variants loaded in
one process and measured in turn so that they see the same machine. Writes
benchmarks/results/runtime/openvino_static_shapes.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from fewstep.runtime import Generator
from fewstep.runtime.bench import machine

OUT = Path(__file__).resolve().parent / "results" / "runtime" / "openvino_static_shapes.json"
PROMPT = "a red circle on the left"
VARIANTS = {
    "onnx-int8-ort": ("onnx-int8-ort", {}),
    "openvino-int8 static": ("openvino-int8", {}),
    "openvino-int8 dynamic": ("openvino-int8", {"static_shapes": False}),
    "openvino-fp32 static": ("openvino-fp32", {}),
    "openvino-fp32 dynamic": ("openvino-fp32", {"static_shapes": False}),
}
BATCHES = (1, 3, 8)


def call(gen: Generator, batch: int) -> None:
    gen.generate([PROMPT] * batch, list(range(batch)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", default="runs/bench-runtime/shapes32-progressive-4step")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=15)
    args = parser.parse_args()
    gens, rows = {}, {}
    for name, (engine, opts) in VARIANTS.items():
        t0 = time.perf_counter()
        gens[name] = Generator.from_bundle(args.bundle, engine=engine, **opts)
        rows[name] = {"engine": engine, "load_s": round(time.perf_counter() - t0, 3), "first_call_s": {}}
        for batch in BATCHES:
            t0 = time.perf_counter()
            call(gens[name], batch)
            rows[name]["first_call_s"][batch] = round(time.perf_counter() - t0, 3)
    times: dict[str, dict[int, list[float]]] = {name: {b: [] for b in BATCHES} for name in gens}
    for _ in range(args.rounds):
        for batch in BATCHES:
            for name, gen in gens.items():
                call(gen, batch)
                t0 = time.perf_counter()
                for _ in range(args.calls):
                    call(gen, batch)
                times[name][batch].append((time.perf_counter() - t0) / args.calls)
    base = {b: float(np.median(times["onnx-int8-ort"][b])) for b in BATCHES}
    for name, row in rows.items():
        row["ms"] = {b: round(1e3 * float(np.median(times[name][b])), 2) for b in BATCHES}
        row["speedup_vs_onnx_int8_ort"] = {b: round(base[b] / float(np.median(times[name][b])), 2) for b in BATCHES}
        print(name, json.dumps(row), flush=True)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"machine": machine(), "bundle": args.bundle, "variants": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
