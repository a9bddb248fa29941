"""Is the server's memory flat under sustained overload? Rounds of the serving benchmark's load test, RSS after each.

    python benchmarks/serve_memory_rounds.py --engines openvino-int8,onnx-int8-ort --rounds 6

Each round: 2,000 requests from 48 clients against a queue of 16 and batches of 8 (`runtime_serving.load`), on
`fewstep serve --engine ID` for the 4-step student's bundle. Writes benchmarks/results/runtime/serve_memory_rounds.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from runtime_serving import OUT, Server, ensure_bundle, load, machine


def rounds(bundle: Path, engine: str, n: int) -> dict:
    with Server(bundle, engine=engine, max_batch=8, max_wait_ms=5, max_queue=16, timeout=10) as s:
        result = {"engine": s.engine, "rss_mb_at_start": round(s.rss_mb(), 1), "rounds": []}
        for _ in range(n):
            r = load(s.url, 2000, 48)
            result["rounds"].append({"status": r["status"], "rss_mb_after": round(s.rss_mb(), 1)})
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundles", default="runs/bench-runtime")
    parser.add_argument("--engines", default="openvino-int8,onnx-int8-ort")
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()
    bundle = ensure_bundle("shapes32-progressive-4step", Path(args.bundles))
    result = {"machine": machine(), "bundle": str(bundle),
              "engines": [rounds(bundle, e, args.rounds) for e in args.engines.split(",") if e]}  # fmt: skip
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "serve_memory_rounds.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
