"""ONNX Runtime's idle-thread spinning, measured: one session alone vs two sessions timed side by side, with
spinning on and off (why gates and benchmarks turn it off and a served denoiser keeps it).

    python benchmarks/ort_thread_spinning.py BUNDLE      # e.g. runs/bench-export/shapes32-progressive-4step

Writes benchmarks/results/ort_thread_spinning.json: median ms per denoiser call at batch 1 and 8.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

OUT = Path(__file__).resolve().parent / "results" / "ort_thread_spinning.json"


def session(path: str, spinning: bool) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


def inputs(batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {"x": rng.standard_normal((batch, 3, 32, 32), dtype=np.float32), "t": np.full(batch, 0.5, np.float32),
            "text": rng.standard_normal((batch, 32, 384), dtype=np.float32),
            "text_mask": np.ones((batch, 32), np.float32)}  # fmt: skip


def interleaved_ms(sessions: dict[str, ort.InferenceSession], feeds: dict, runs: int = 60) -> dict[str, float]:
    for s in sessions.values():
        s.run(None, feeds)
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for _ in range(runs):
        for k, s in sessions.items():
            t0 = time.perf_counter()
            s.run(None, feeds)
            times[k].append(time.perf_counter() - t0)
    return {k: round(1e3 * float(np.median(v)), 3) for k, v in times.items()}


def main() -> None:
    bundle = Path(sys.argv[1])
    manifest = json.loads((bundle / "manifest.json").read_text())
    files = {
        e["id"]: str(bundle / next(iter(e["files"]))) for e in manifest["engines"] if e["backend"] == "onnxruntime"
    }
    rng = np.random.default_rng(0)
    result = {"bundle": str(bundle), "engines": sorted(files)}
    for spinning in (True, False):
        alone_id = sorted(files)[-1]
        for label, ids in (("alone", [alone_id]), ("side_by_side", sorted(files))):
            sessions = {i: session(files[i], spinning) for i in ids}
            result[f"{label}_spinning_{'on' if spinning else 'off'}"] = {
                f"batch{b}": interleaved_ms(sessions, inputs(b, rng)) for b in (1, 8)
            }
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
