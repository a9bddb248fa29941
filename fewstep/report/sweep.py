"""Sweep definitions: which systems a report measures, on which prompts, with which metrics (YAML).

A *system* is one thing a user could deploy: a model (torch) or one engine of a bundle, at one step count.
Every system is measured on the same prompts and seeds (prompt i, seed i), so the numbers compare.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fewstep.core.config import ConfigError, from_dict, read_yaml_mapping


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "shapes"  # shapes | digits | imagefolder: the prompts and the real images FID compares with
    path: str | None = None  # imagefolder: a folder with metadata.jsonl ({"file_name", "text"} per line)
    n: int = 512  # prompts = images per system; prompt i uses seed i for every system


@dataclass(frozen=True)
class MetricsConfig:
    judge: str | None = None  # judge checkpoint for domain FID + adherence (default: the shipped one of the dataset)
    inception_weights: str | None = None  # local Inception-v3 weights -> FID-Inception (needs torch-fidelity)
    kid_subset: int = 100  # KID subset size


@dataclass(frozen=True)
class LatencyConfig:
    runs: int = 20  # timed batch-1 requests per system (p50 / p99 come from these)
    warmup: int = 3  # untimed batch-1 requests first
    batch: int = 64  # batch of the quality pass, whose wall time gives images/s
    threads: int = 2  # CPU threads for torch and the engines alike
    memory: bool = True  # peak RSS of a fresh process that loads the system and makes one image


@dataclass(frozen=True)
class SystemConfig:
    name: str  # label in the report (method, e.g. "teacher", "slimflow")
    model: str | None = None  # torch: checkpoint path, run directory or shipped name
    bundle: str | None = None  # engines: a bundle directory (fewstep export)
    engines: tuple[str, ...] = ()  # engine ids of the bundle to measure (empty: every engine in it)
    export: dict = field(default_factory=dict, hash=False)  # with model + bundle: ExportConfig fields for the export
    steps: tuple[int, ...] = ()  # step counts (empty: the model's own schedule)
    guidance: float | None = None  # CFG / embedded guidance scale (None: the model's default)

    def __post_init__(self) -> None:
        if not self.name:
            raise ConfigError("every system needs a name")
        if self.model is None and self.bundle is None:
            raise ConfigError(f"system {self.name!r}: give `model` (torch), `bundle` (engines), or both (export first)")
        if self.export and not (self.model and self.bundle):
            raise ConfigError(f"system {self.name!r}: `export` needs `model` (what to export) and `bundle` (where)")
        if any(s < 1 for s in self.steps):
            raise ConfigError(f"system {self.name!r}: steps must be >= 1; got {list(self.steps)}")

    @property
    def kind(self) -> str:
        return "engine" if self.bundle else "torch"


@dataclass(frozen=True)
class SweepConfig:
    name: str
    systems: tuple[SystemConfig, ...]
    data: DataConfig = DataConfig()
    metrics: MetricsConfig = MetricsConfig()
    latency: LatencyConfig = LatencyConfig()
    grid_prompts: int = 8  # prompts shown per system in the sample grids
    base_dir: str = "."  # relative model / bundle / data paths are resolved against it (the YAML's folder)

    def resolve(self, path: str | None, output: bool = False) -> str | None:
        """Relative paths are under base_dir; a bare name that is no file there (a shipped model) is unchanged.
        `output`: a path fewstep writes (a bundle), always under base_dir."""
        if path is None or Path(path).is_absolute():
            return path
        candidate = os.path.normpath(Path(self.base_dir) / path)
        return candidate if output or os.path.exists(candidate) or "/" in path else path


@dataclass(frozen=True)
class Unit:
    """One measured point: a system at one step count, with the key that decides whether to measure it again."""

    id: str
    system: SystemConfig
    steps: int | None
    engine: str | None = None  # engine id (engine systems)

    @property
    def label(self) -> str:
        where = self.engine or "torch"
        return f"{self.system.name} {where} {self.steps or 'own'}-step"


# bump when what a measurement means changes (e.g. how memory is read), so stored results are not reused
MEASURE_VERSION = 2

SECTIONS = {"data": DataConfig, "metrics": MetricsConfig, "latency": LatencyConfig}


def parse_sweep(data: dict[str, Any], source: str = "sweep", base_dir: str = ".") -> SweepConfig:
    if not isinstance(data, dict):
        raise ConfigError(f"{source} must be a mapping with `name` and `systems`")
    known = {"name", "systems", "grid_prompts", *SECTIONS}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{source}: unknown field(s) {', '.join(unknown)}; valid: {', '.join(sorted(known))}")
    systems = data.get("systems")
    if not isinstance(systems, list) or not systems:
        raise ConfigError(f"{source}: `systems` must be a non-empty list")
    parsed = []
    for i, s in enumerate(systems):
        if not isinstance(s, dict):
            raise ConfigError(f"{source}: systems[{i}] must be a mapping")
        if "export" in s and not isinstance(s["export"], dict):
            raise ConfigError(f"{source}: systems[{i}].export must be a mapping of export fields")
        parsed.append(from_dict(SystemConfig, s, source=f"{source} systems[{i}]"))
    sections = {k: from_dict(cls, data.get(k) or {}, source=f"{source} {k}") for k, cls in SECTIONS.items()}
    cfg = SweepConfig(name=str(data.get("name") or Path(source).stem), systems=tuple(parsed), base_dir=base_dir,
                      grid_prompts=int(data.get("grid_prompts", 8)), **sections)  # fmt: skip
    _check(cfg, source)
    return cfg


def _check(cfg: SweepConfig, source: str) -> None:
    if cfg.data.n < 10:
        raise ConfigError(f"{source}: data.n must be >= 10 for FID/KID to mean anything; got {cfg.data.n}")
    if cfg.data.dataset == "imagefolder" and not cfg.data.path:
        raise ConfigError(f"{source}: data.dataset imagefolder needs data.path (a folder with metadata.jsonl)")
    if cfg.data.dataset == "imagefolder" and not (cfg.metrics.inception_weights or cfg.metrics.judge):
        raise ConfigError(f"{source}: your own images need a feature network: set metrics.inception_weights (a local "
                          "Inception-v3 file) or metrics.judge")  # fmt: skip
    if cfg.latency.runs < 1 or cfg.latency.warmup < 0 or cfg.latency.batch < 1 or cfg.latency.threads < 0:
        raise ConfigError(f"{source}: latency.runs and latency.batch must be >= 1, warmup and threads >= 0")
    if not 1 <= cfg.grid_prompts <= cfg.data.n:
        raise ConfigError(f"{source}: grid_prompts must be in 1..data.n")
    expand(cfg, {})  # two systems that would measure the same thing


def load_sweep(path: str | Path) -> SweepConfig:
    data = read_yaml_mapping(path, "sweep file")
    return parse_sweep(data, source=str(path), base_dir=str(Path(path).parent))


def sweep_to_dict(cfg: SweepConfig) -> dict:
    d = asdict(cfg)
    d.pop("base_dir")
    d["systems"] = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in s.items() if v not in (None, (), {})}
                    for s in d["systems"]]  # fmt: skip
    return d


def slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-._" else "-" for c in text).strip("-")


def expand(cfg: SweepConfig, engine_ids: dict[str, list[str]]) -> list[Unit]:
    """Systems x engines x step counts -> units; `engine_ids` maps a bundle path to the ids its manifest lists."""
    units: list[Unit] = []
    for s in cfg.systems:
        steps: tuple[int | None, ...] = s.steps or (None,)
        engines: tuple[str | None, ...] = (None,)
        if s.kind == "engine":
            engines = s.engines or tuple(engine_ids.get(str(cfg.resolve(s.bundle, output=True)), ())) or ("(none)",)
        for e in engines:
            for n in steps:
                uid = slug(f"{s.name}_{e or 'torch'}_{n or 'own'}step")
                units.append(Unit(uid, s, n, e))
    seen: set[str] = set()
    for u in units:
        if u.id in seen:
            raise ConfigError(f"two systems measure the same thing ({u.id}); give them different names")
        seen.add(u.id)
    return units


def measurement_key(cfg: SweepConfig, unit: Unit, artifact_sha: str) -> str:
    """What a measurement depends on; a stored result with the same key is reused."""
    payload = {
        "measure_version": MEASURE_VERSION,
        "data": asdict(cfg.data),
        "metrics": asdict(cfg.metrics),
        "latency": asdict(cfg.latency),
        "grid_prompts": cfg.grid_prompts,
        "steps": unit.steps,
        "guidance": unit.system.guidance,
        "engine": unit.engine,
        "artifact": artifact_sha,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]
