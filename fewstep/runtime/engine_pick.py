"""Which of a bundle's engines to serve: the one with the most images/s at the server's batch size, measured here.

The documented priority (`generator.BACKEND_PRIORITY`) is a good guess for one image at a time, but the engine
that is fastest at batch 1 is not always the one that batches best: on the 2-core Xeon of the README, ONNX
Runtime int8 is fastest at batch 1 while OpenVINO int8 gives ~16% more images/s at batch 8. `fewstep serve`
therefore times every engine that loads here, one at a time (an idle ONNX Runtime session spinning its threads
would slow the one being timed), on end-to-end `generate` calls of `batch` images, and serves the winner. The
timing runs in a child process (`measure_in_subprocess`), so the engines it loads leave neither memory nor
threads behind in the server.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from .bundle import BundleError, read_manifest
from .engine import BackendUnavailable
from .generator import Generator, engine_order

PROBE_PROMPT = "a red circle"


def measure_engines(path: str | Path, batch: int, threads: int | None = None, decoder: str | None = None,
                    runs: int = 5) -> list[dict]:  # fmt: skip
    """Median ms and images/s of `batch`-image `generate` calls (default steps and guidance), per engine, in the
    documented priority order; engines that cannot load here get a `skipped` reason instead."""
    if batch < 1 or runs < 1:
        raise ValueError(f"batch and runs must be >= 1; got {batch}, {runs}")
    rows = []
    for entry in engine_order(read_manifest(Path(path)).get("engines", [])):
        try:
            gen = Generator.from_bundle(path, engine=entry["id"], threads=threads, decoder=decoder)
        except BackendUnavailable as e:
            rows.append({"engine": entry["id"], "skipped": str(e)})
            continue
        per_call = gen.images_per_call(batch, gen.validate([PROBE_PROMPT], [0]))
        prompts, seeds = [PROBE_PROMPT] * per_call, list(range(per_call))
        gen.generate(prompts, seeds, batch_size=per_call)  # warm-up: allocations, the prompt cache
        seconds = []
        for _ in range(runs):
            t0 = time.perf_counter()
            gen.generate(prompts, seeds, batch_size=per_call)
            seconds.append(time.perf_counter() - t0)
        ms = 1e3 * statistics.median(seconds)
        rows.append({"engine": entry["id"], "batch": per_call, "ms_per_call": round(ms, 2),
                     "images_per_s": round(1e3 * per_call / ms, 1)})  # fmt: skip
        del gen  # one engine's threads at a time
    return rows


def fastest_engine(rows: list[dict]) -> str:
    """The engine id with the most images/s among the measured rows."""
    measured = [r for r in rows if "images_per_s" in r]
    if not measured:
        reasons = "; ".join(f"{r['engine']}: {r['skipped']}" for r in rows) or "the bundle lists no engine"
        raise BackendUnavailable(f"no engine of this bundle can run here: {reasons}")
    return max(measured, key=lambda r: r["images_per_s"])["engine"]


def format_rows(rows: list[dict]) -> str:
    """One line per engine, for the server's start-up log."""
    lines = []
    for r in rows:
        if "skipped" in r:
            lines.append(f"  {r['engine']:<22} skipped: {r['skipped']}")
        else:
            lines.append(f"  {r['engine']:<22} {r['images_per_s']:>8.1f} images/s  ({r['ms_per_call']:.1f} ms "
                         f"per call of {r['batch']})")  # fmt: skip
    return "\n".join(lines)


def measure_in_subprocess(path: str | Path, batch: int, threads: int | None = None, decoder: str | None = None,
                          runs: int = 5) -> list[dict]:  # fmt: skip
    """`measure_engines` in a fresh Python process (`python -m fewstep.runtime.engine_pick`); its errors come
    back as a BundleError with the child's message."""
    cmd = [sys.executable, "-m", "fewstep.runtime.engine_pick", str(path), "--batch", str(batch), "--runs", str(runs)]
    cmd += ["--threads", str(threads)] if threads else []
    cmd += ["--decoder", decoder] if decoder else []
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines() or [f"exit status {done.returncode}"]
        raise BundleError(f"timing the engines of {path} failed: {lines[-1]}")
    return json.loads(done.stdout)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="time every engine of a bundle at one batch size (JSON rows)")
    parser.add_argument("bundle")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--decoder", default=None)
    args = parser.parse_args(argv)
    try:
        rows = measure_engines(args.bundle, args.batch, args.threads, args.decoder, args.runs)
    except (BundleError, ValueError, OSError) as e:
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        return 2
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
