"""The one table of engine backends. Each backend describes itself once, in one file of `fewstep.backends`:
how its engines are opened (`open_engine`), whether they can run here (`unavailable_reason`), where it ranks
when a bundle holds several engines (`priority`), and which exporter writes its files.

Backends are plugins: the registry imports every module of the `fewstep.backends` package and every entry point
of the group `fewstep.backends` (for backends in other packages) the first time it is asked, and each module
calls `register_backend`. The runtime depends on the `Backend` description it defines here, never on a
plugin's code, so a plugin may itself use any layer (the torch backend rebuilds networks with
`fewstep.models`). A plugin module must import nothing heavy at module level: a runtime-only install imports
all of them.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

from fewstep.core.manifest import EngineEntry
from fewstep.runtime.engine import BackendUnavailable, Engine

PLUGIN_PACKAGE = "fewstep.backends"
ENTRY_POINT_GROUP = "fewstep.backends"
PRECISION_PRIORITY = ("int8", "bf16", "fp16", "fp32")  # among one backend's engines, the fastest kind first

OpenEngine = Callable[..., Engine]  # (path, entry: EngineEntry, **options) -> Engine


@dataclass(frozen=True)
class Backend:
    """Everything fewstep knows about one kind of engine."""

    name: str  # the runtime backend recorded in manifests, e.g. "onnxruntime"
    target: str  # the name `fewstep export --to` takes, e.g. "onnx"
    open_engine: OpenEngine  # (path of the engine's main file, its manifest entry, **options) -> Engine
    unavailable_reason: Callable[[], str | None]  # None when its engines can run on this machine
    priority: int  # lower is tried first when a bundle holds engines of several backends
    precisions: tuple[str, ...]  # what its exporter writes
    # "module:function" (resolved by fewstep.export when it exports) or the function itself:
    # export(ctx: ExportContext, precision: str) -> Artifact
    exporter: str | Callable[..., Any] | None = None
    quantizers: tuple[str, ...] = ()  # int8 quantizers its exporter offers: one engine each (`--quantizer`)
    comparison: bool = False  # a comparison point (torch eager): never preferred, served only when nothing else runs
    build_where_run: bool = False  # engines tied to the GPU that builds them (TensorRT): exported there only
    # its exporter reads only the shared fp32 ONNX graph (`fewstep.export.targets.onnx.shared_fp32`): once that
    # graph is written, an export whose engines all start from it frees the torch model (several GB at SD size)
    from_onnx: bool = False
    triton_platform: str | None = None  # its platform in a Triton model repository, if Triton serves it
    side_by_side_options: dict[str, Any] = field(default_factory=dict)  # for engines timed beside others
    # beside one of its engines of precision P, the bundle's ONNX image decoder runs on this backend at precision
    # onnx_decoder_at[P] (OpenVINO bf16: in f32 the VAE would take most of an image's time); absent: as exported
    onnx_decoder_at: dict[str, str] = field(default_factory=dict)
    description: str = ""  # one line for `fewstep export --help`


_BACKENDS: dict[str, Backend] = {}
_discovered = False


def missing_module(install: str, *modules: str) -> str | None:
    """An availability probe's usual first check: None when every module imports, else which one is missing and
    `install`, the command that installs it."""
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError:
            return f"{module} is not installed: {install}"
    return None


def register_backend(backend: Backend) -> Backend:
    """Add a backend (what each `fewstep.backends` module does at import); names and targets must be new."""
    for other in _BACKENDS.values():
        if other.name != backend.name and other.target == backend.target:
            raise ValueError(f"export target {backend.target!r} is taken by backend {other.name!r}")
    _BACKENDS[backend.name] = backend
    return backend


def unregister_backend(name: str) -> None:
    _BACKENDS.pop(name, None)


def _discover() -> None:
    global _discovered
    if _discovered:
        return
    _discovered = True
    package = importlib.import_module(PLUGIN_PACKAGE)
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
        if not info.name.startswith("_"):
            importlib.import_module(f"{PLUGIN_PACKAGE}.{info.name}")
    for entry_point in metadata.entry_points(group=ENTRY_POINT_GROUP):
        entry_point.load()  # the module registers its backend when imported


def backends() -> list[Backend]:
    """Every registered backend, in priority order."""
    _discover()
    return sorted(_BACKENDS.values(), key=lambda b: (b.priority, b.name))


def get_backend(name: str) -> Backend:
    _discover()
    if name not in _BACKENDS:
        raise BackendUnavailable(f"no runtime backend {name!r}; known: {', '.join(b.name for b in backends())}")
    return _BACKENDS[name]


def backend_for_target(target: str) -> Backend:
    """The backend that `fewstep export --to TARGET` writes engines for."""
    for b in backends():
        if b.target == target:
            return b
    raise ValueError(f"unknown export target {target!r}; choose from {', '.join(export_targets())}")


def export_targets() -> list[str]:
    return [b.target for b in backends() if b.exporter is not None]


def load_engine(backend: str, path: Path, entry: EngineEntry, **options: Any) -> Engine:
    """Open an engine file with its backend; `entry` is its manifest entry (inputs, outputs, info)."""
    open_engine = get_backend(backend).open_engine
    accepted = set(inspect.signature(open_engine).parameters) - {"path", "entry"}
    if unknown := sorted(set(options) - accepted):
        # a ValueError, not a TypeError: Generator reads TypeErrors while loading as a malformed manifest
        raise ValueError(f"{backend} engines take no option {', '.join(unknown)} (they take: "
                         f"{', '.join(sorted(accepted))}); pin an engine of the backend the option is for, "
                         f"e.g. engine='openvino-int8' or backend='openvino'")  # fmt: skip
    return open_engine(path, entry, **options)


E = TypeVar("E", bound=EngineEntry)


def engine_order(engines: Iterable[E]) -> list[E]:
    """Engines in the documented order: backend priority first (unknown backends last), then the faster
    precision (every engine of a bundle passed its gates)."""
    _discover()

    def rank(e: EngineEntry) -> tuple[int, int]:
        b = _BACKENDS[e.backend].priority if e.backend in _BACKENDS else 10**6
        p = PRECISION_PRIORITY.index(e.precision) if e.precision in PRECISION_PRIORITY else 0
        return b, p

    return sorted(engines, key=rank)


def is_comparison(name: str) -> bool:
    _discover()
    return name in _BACKENDS and _BACKENDS[name].comparison
