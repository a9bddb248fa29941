"""Cold start of the OpenVINO engine with and without OpenVINO's compiled-model cache, in fresh processes.

    python benchmarks/openvino_cache_cold_start.py          # the 4-step student's bundle of runtime_serving.py

Each row is one new Python process (process start -> bundle loaded -> first image, `fewstep.runtime.bench.
cold_start`): ONNX Runtime int8 for reference, OpenVINO int8 without a cache, OpenVINO int8 filling an empty
cache (FEWSTEP_OPENVINO_CACHE_DIR) and OpenVINO int8 again with that cache filled. Writes
benchmarks/results/runtime/openvino_cache_cold_start.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from pathlib import Path

from fewstep.backends.openvino import CACHE_ENV
from fewstep.runtime.bench import cold_start, machine

ROOT = Path(__file__).resolve().parent
OUT = ROOT / "results" / "runtime"


def rows(bundle: Path, engine: str, repeats: int) -> dict:
    runs = [cold_start(bundle, engine, threads=2, runs=3) for _ in range(repeats)]
    firsts = [r["first_image_s"] for r in runs if r.get("ok")]
    return {"engine": engine, "runs": runs, "first_image_s_median": statistics.median(firsts) if firsts else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", default="runs/bench-runtime/shapes32-progressive-4step")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    bundle = Path(args.bundle)
    if not (bundle / "manifest.json").exists():
        raise SystemExit(f"no bundle at {bundle}: run `python benchmarks/runtime_serving.py` once (it exports it)")
    os.environ.pop(CACHE_ENV, None)
    result = {"machine": machine(), "bundle": str(bundle), "threads": 2,
              "onnxruntime": rows(bundle, "onnx-int8-ort", args.repeats),
              "openvino_no_cache": rows(bundle, "openvino-int8", args.repeats)}  # fmt: skip
    with tempfile.TemporaryDirectory() as cache:
        os.environ[CACHE_ENV] = cache  # inherited by the cold-start processes
        result["openvino_filling_cache"] = rows(bundle, "openvino-int8", 1)
        result["cache_mb"] = round(sum(p.stat().st_size for p in Path(cache).iterdir()) / 2**20, 1)
        result["openvino_cached"] = rows(bundle, "openvino-int8", args.repeats)
        del os.environ[CACHE_ENV]
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "openvino_cache_cold_start.json").write_text(json.dumps(result, indent=2) + "\n")
    for key in ("onnxruntime", "openvino_no_cache", "openvino_filling_cache", "openvino_cached"):
        r = result[key]
        print(f"{key:24s} first image {r['first_image_s_median']} s (median of {len(r['runs'])})")


if __name__ == "__main__":
    main()
