"""Run a sweep: export what must be exported, measure every system not measured yet, write the report.

results.json is rewritten atomically after every system, so a killed sweep resumes where it stopped; a system
whose measurement key (data, metrics, latency settings, steps, guidance, artifact sha256) is unchanged is reused.
One broken system (an engine that does not load, a step count a model refuses) is recorded with its reason and
the sweep goes on.
"""

from __future__ import annotations

import io
import json
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from fewstep.core.config import from_dict
from fewstep.core.fsio import atomic_write, atomic_write_text, remove_stale_temps, sha256_of
from fewstep.core.manifest import Manifest, read_manifest
from fewstep.export.bundle import BundleExport
from fewstep.export.config import ExportConfig
from fewstep.models.loading import resolve_checkpoint
from fewstep.report.measure import (
    Loaded,
    UnsupportedRequest,
    batch1_latency,
    fresh_process,
    load_engine,
    load_torch,
)
from fewstep.report.pareto import pareto_front
from fewstep.report.quality_reference import QualityReference
from fewstep.report.render import render_all
from fewstep.report.sweep import SweepConfig, Unit, expand, measurement_key, sweep_to_dict
from fewstep.runtime.bench import machine
from fewstep.runtime.engine import BackendUnavailable

RESULTS_FORMAT = "fewstep-report/1"
REUSABLE = ("ok", "refused", "unavailable", "unsupported")  # states that measuring again would not change


class Bundles:
    """Manifests of the sweep's bundles, exported first where a system asks for it."""

    def __init__(self, cfg: SweepConfig, log: Callable[[str], None]):
        self.cfg, self.log = cfg, log
        self.manifests: dict[str, Manifest] = {}
        self.errors: dict[str, str] = {}

    def prepare(self) -> None:
        for s in self.cfg.systems:
            if s.kind != "engine":
                continue
            path = str(self.cfg.resolve(s.bundle, output=True))
            if path in self.manifests or path in self.errors:
                continue
            try:
                if s.model:
                    self._export(s.model, path, s.export)
                self.manifests[path] = read_manifest(path)
            except Exception as e:
                self.errors[path] = f"{type(e).__name__}: {e}"
                self.log(f"bundle {path}: {self.errors[path]}")

    def _export(self, model: str, path: str, fields: dict) -> None:

        cfg = from_dict(ExportConfig, fields, source=f"export of {model}")
        self.log(f"export {model} -> {path} ({', '.join(cfg.to)}; reuses what is already there)")
        BundleExport(str(self.cfg.resolve(model)), path, cfg, f"fewstep report (export of {model})", self.log).run()

    def engine_ids(self) -> dict[str, list[str]]:
        return {p: m.engine_ids + [r.id for r in m.refused] for p, m in self.manifests.items()}


def artifact_sha(cfg: SweepConfig, unit: Unit, bundles: Bundles) -> str:
    if unit.system.kind == "engine":
        m = bundles.manifests.get(str(cfg.resolve(unit.system.bundle, output=True)))
        if m is None:
            return json.dumps([None, None, None])
        files = next((e.files for e in m.engines if e.id == unit.engine), None)
        reason = next((r.reason for r in m.refused if r.id == unit.engine), None)
        return json.dumps([files, reason, m.text_encoder.sha256])

    try:
        return sha256_of(resolve_checkpoint(cfg.resolve(unit.system.model)))
    except (ValueError, OSError):
        return "missing"


def _not_measured(unit: Unit, status: str, reason: str, key: str, info: dict | None = None) -> dict:
    return {"id": unit.id, "label": unit.label, "name": unit.system.name, "engine": unit.engine,
            "steps_requested": unit.steps, "status": status, "reason": reason, "key": key, **(info or {})}  # fmt: skip


def measure_unit(cfg: SweepConfig, unit: Unit, key: str, ref: QualityReference, bundles: Bundles,
                 out: Path, bar: tqdm | None, loaded_cache: dict) -> dict:  # fmt: skip
    """One system -> its result row (status ok) or a row that says why it was not measured."""
    bundle = str(cfg.resolve(unit.system.bundle, output=True)) if unit.system.kind == "engine" else None
    if bundle is not None:
        if bundle in bundles.errors:
            return _not_measured(unit, "failed", bundles.errors[bundle], key)
        refused = {r.id: r for r in bundles.manifests[bundle].refused}
        if unit.engine in refused:
            return _not_measured(unit, "refused", f"refused at export: {refused[unit.engine].reason}", key,
                                 {"backend": None, "precision": None})  # fmt: skip
    try:
        load = load_engine if bundle is not None else load_torch
        loaded: Loaded = load(cfg, unit, loaded_cache)
    except BackendUnavailable as e:
        return _not_measured(unit, "unavailable", f"not run here: {e}", key)
    except UnsupportedRequest as e:
        return _not_measured(unit, "unsupported", str(e), key)
    prompts, seeds = ref.prompts, list(range(len(ref.prompts)))
    batch = cfg.latency.batch
    chunks = []
    t0 = time.perf_counter()
    for i in range(0, len(prompts), batch):
        chunks.append(loaded.generate(prompts[i : i + batch], seeds[i : i + batch], batch))
        if bar is not None:
            bar.set_postfix_str(f"{unit.id}: {min(i + batch, len(prompts))}/{len(prompts)} images")
    seconds = time.perf_counter() - t0
    images = np.concatenate(chunks)
    quality = ref.score(images)
    grid = images[: cfg.grid_prompts]
    samples = out / "samples"
    samples.mkdir(parents=True, exist_ok=True)
    atomic_write(samples / f"{unit.id}.npy", lambda tmp: tmp.write_bytes(_npy_bytes(grid)))
    if bar is not None:
        bar.set_postfix_str(f"{unit.id}: batch-1 latency")
    latency = batch1_latency(loaded, prompts, cfg.latency.runs, cfg.latency.warmup)
    fresh = {}
    if cfg.latency.memory:
        if bar is not None:
            bar.set_postfix_str(f"{unit.id}: fresh-process memory")
        fresh = fresh_process(cfg, unit)
    return {
        "id": unit.id,
        "label": unit.label,
        "name": unit.system.name,
        "engine": unit.engine,
        "steps_requested": unit.steps,
        "status": "ok",
        "key": key,
        **loaded.info,
        **quality,
        "latency_b1": latency,
        "images_per_s": round(len(images) / seconds, 2),
        "images_per_s_batch": batch,
        "fresh_process": fresh,
        "peak_rss_mb": fresh.get("peak_rss_mb") if fresh.get("ok") else None,
        "samples": f"samples/{unit.id}.npy",
        "measured_at": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def mark_pareto(rows: list[dict]) -> dict[str, list[str]]:
    """Frontiers of p50 batch-1 latency vs FID (lower better) and vs adherence (higher better)."""
    ok = [r for r in rows if r["status"] == "ok"]
    fronts = {}
    for metric, sign in (("fid", 1.0), ("adherence", -1.0)):
        pts = [(r["latency_b1"]["p50_ms"], sign * r[metric] if r.get(metric) is not None else float("nan"))
               for r in ok]  # fmt: skip
        fronts[metric] = [ok[i]["id"] for i in pareto_front(pts)]
    for r in rows:
        r["pareto"] = [m for m, ids in fronts.items() if r["id"] in ids]
    return fronts


def run_report(cfg: SweepConfig, out: str | Path, rerun: bool = False, progress: bool = True,
               log: Callable[[str], None] = print, command: str = "") -> dict:  # fmt: skip
    """Measure every system of the sweep (reusing earlier measurements) and write every report file into `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(out)
    path = out / "results.json"
    previous = _previous(path)
    bundles = Bundles(cfg, log)
    bundles.prepare()
    units = expand(cfg, bundles.engine_ids())
    result = {
        "format": RESULTS_FORMAT,
        "sweep": sweep_to_dict(cfg),
        "command": command,
        "machine": machine(),
        "systems": [],
    }
    ref: QualityReference | None = None
    reused, loaded_cache = 0, {}
    bar = tqdm(units, desc="report", unit="system", disable=not progress)
    for unit in bar:
        key = measurement_key(cfg, unit, artifact_sha(cfg, unit, bundles))
        old = previous.get(unit.id)
        if not rerun and old and old.get("key") == key and old.get("status") in REUSABLE:
            result["systems"].append(old)
            reused += 1
            continue
        if ref is None:
            bar.set_postfix_str("real images and feature network")
            ref = QualityReference(cfg)
            result.update(ref.describe())
        try:
            row = measure_unit(cfg, unit, key, ref, bundles, out, bar, loaded_cache)
        except Exception as e:
            row = _not_measured(unit, "failed", f"{type(e).__name__}: {e}", key)
            row["traceback"] = traceback.format_exc(limit=4)
        if row["status"] != "ok":
            log(f"  {unit.label}: {row['status']} ({row['reason'][:160]})")
        result["systems"].append(row)
        _save(path, result, previous, units)
    bar.close()
    if ref is None:  # everything reused: keep the reference description of the earlier run
        result.update({k: v for k, v in previous.get("__meta__", {}).items() if k not in result})
    result["pareto"] = mark_pareto(result["systems"])
    result["reused"] = reused
    _save(path, result, {}, units)
    render_all(result, out)
    return result


def _previous(path: Path) -> dict:
    """id -> row of an earlier run (plus '__meta__': its reference description); {} when none or unreadable."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}  # a corrupt results file is measured again, not trusted
    if data.get("format") != RESULTS_FORMAT:
        return {}
    rows = {r["id"]: r for r in data.get("systems", []) if isinstance(r, dict) and "id" in r}
    rows["__meta__"] = {k: data[k] for k in ("feature_space", "real_vs_real", "reference") if k in data}
    return rows


def _save(path: Path, result: dict, previous: dict, units: list[Unit]) -> None:
    """Write results.json; rows of a killed run's later systems are kept so that a resume can reuse them."""
    done = {r["id"] for r in result["systems"]}
    pending = [previous[u.id] for u in units if u.id not in done and u.id in previous]
    data = dict(result, systems=result["systems"] + pending)
    atomic_write_text(path, json.dumps(data, indent=2, default=_json_default) + "\n")


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()  # np.save on a path appends ".npy" to a temp name
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()
