"""Which of a bundle's engines to serve: the one with the most images/s at the server's batch size, measured here.

The documented priority (each backend's `priority`, `fewstep.runtime.registry`) is a good guess for one image
at a time, but the engine that is fastest at batch 1 is not always the one that batches best (on the 2-core Xeon
of the README, ONNX Runtime int8 at batch 1, OpenVINO int8 at batch 8). `fewstep serve` therefore times every
engine that loads here (the torch comparison engines only when no other engine runs) with `fewstep bench`'s own
end-to-end measurement (`bench.bench_batches`) at its batch size, one engine at a time (an idle ONNX Runtime
session spinning its threads would slow the one being timed), and serves the winner. The timing runs in a child
process (`bench.run_probe`), so the engines it loads leave neither memory nor threads behind in the server.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fewstep.core.manifest import BundleError, EngineEntry, read_manifest
from fewstep.runtime.bench import bench_batches, run_probe
from fewstep.runtime.engine import BackendUnavailable
from fewstep.runtime.generator import Generator
from fewstep.runtime.registry import engine_order, is_comparison


def measure_engines(path: str | Path, batch: int, threads: int | None = None, decoder: str | None = None,
                    runs: int = 5) -> list[dict[str, Any]]:  # fmt: skip
    """p50 ms and images/s of `batch`-image `generate` calls (default steps and guidance, PNG encoding
    included), per engine, in the documented priority order; engines that cannot load here get a `skipped`
    reason instead."""
    if batch < 1 or runs < 1:
        raise ValueError(f"batch and runs must be >= 1; got {batch}, {runs}")
    entries = engine_order(read_manifest(Path(path)).engines)
    real = [e for e in entries if not is_comparison(e.backend)]
    rows = [_measure(path, e, batch, threads, decoder, runs) for e in real]
    for entry in [e for e in entries if is_comparison(e.backend)]:
        if any("images_per_s" in r for r in rows):
            rows.append({"engine": entry.id, "skipped": "a comparison engine (torch eager), not timed for serving "
                         f"while another engine runs here; pin it with --engine {entry.id}"})  # fmt: skip
        else:
            rows.append(_measure(path, entry, batch, threads, decoder, runs))
    return rows


def _measure(path: str | Path, entry: EngineEntry, batch: int, threads: int | None, decoder: str | None,
             runs: int) -> dict[str, Any]:  # fmt: skip
    try:
        gen = Generator.from_bundle(path, engine=entry.id, threads=threads, decoder=decoder)
    except BackendUnavailable as e:
        return {"engine": entry.id, "skipped": str(e)}
    row = bench_batches(gen, [batch], runs, warmup=1)[0]
    del gen  # one engine's threads at a time
    return {"engine": entry.id, "batch": batch, "ms_per_call": row["p50_ms"], "images_per_s": row["images_per_s"]}


def fastest_engine(rows: list[dict[str, Any]]) -> str:
    """The engine id with the most images/s among the measured rows."""
    measured = [r for r in rows if "images_per_s" in r]
    if not measured:
        reasons = "; ".join(f"{r['engine']}: {r['skipped']}" for r in rows) or "the bundle lists no engine"
        raise BackendUnavailable(f"no engine of this bundle can run here: {reasons}")
    return str(max(measured, key=lambda r: r["images_per_s"])["engine"])


def format_rows(rows: list[dict[str, Any]]) -> str:
    """One line per engine, for the server's start-up log."""
    lines = []
    for r in rows:
        if "skipped" in r:
            lines.append(f"  {r['engine']:<22} skipped: {r['skipped']}")
        else:
            lines.append(f"  {r['engine']:<22} {r['images_per_s']:>8.1f} images/s  ({r['ms_per_call']:.1f} ms "
                         f"per call of {r['batch']})")  # fmt: skip
    return "\n".join(lines)


_CHILD = """
import json, sys
from fewstep.runtime.engine_pick import measure_engines
try:
    rows = measure_engines(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]) or None, sys.argv[5] or None,
                           int(sys.argv[6]))
    out = {"ok": True, "rows": rows}
except Exception as e:
    out = {"ok": False, "error": f"{type(e).__name__}: {e}"}
print("FEWSTEP_BENCH " + json.dumps(out))
"""


def measure_in_subprocess(path: str | Path, batch: int, threads: int | None = None, decoder: str | None = None,
                          runs: int = 5, timeout: float = 300) -> list[dict[str, Any]]:  # fmt: skip
    """`measure_engines` in a fresh Python process; its errors come back as a BundleError with its message."""
    out = run_probe(_CHILD, [str(path), str(batch), str(threads or 0), decoder or "", str(runs)], threads or 0,
                    timeout)  # fmt: skip
    if not out.get("ok"):
        raise BundleError(f"timing the engines of {path} failed: {out.get('error')}")
    rows: list[dict[str, Any]] = out["rows"]
    return rows
