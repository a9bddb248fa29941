"""Which engines an export writes: one job per (backend, precision[, int8 quantizer]) the config asks for."""

from __future__ import annotations

from dataclasses import dataclass

from fewstep.export.config import ExportConfig
from fewstep.runtime.registry import Backend, backend_for_target


class ExportError(ValueError):
    """An export that cannot proceed; the message says why and what to do."""


@dataclass(frozen=True)
class EngineJob:
    backend: Backend
    precision: str
    quantizer: str | None = None

    @property
    def id(self) -> str:
        """The engine's id in the bundle, e.g. `onnx-int8-nncf` (what `--engine` takes)."""
        return engine_id(self.backend.target, self.precision, self.quantizer)


def engine_id(target: str, precision: str, quantizer: str | None) -> str:
    return f"{target}-{precision}" + (f"-{quantizer}" if quantizer else "")


def plan_engines(cfg: ExportConfig) -> tuple[list[EngineJob], list[str]]:
    """-> (the jobs, notes on precisions a target does not write). Refuses what cannot be built here."""
    jobs, notes = [], []
    for target in cfg.to:
        try:
            backend = backend_for_target(target)
        except ValueError as e:
            raise ExportError(str(e)) from None
        if backend.exporter is None:
            raise ExportError(f"backend {backend.name!r} runs engines but has no exporter")
        if backend.build_where_run and (why := backend.unavailable_reason()):
            raise ExportError(f"{target} engines are built on the NVIDIA GPU that will run them; here: {why}")
        wanted = [p for p in cfg.precision if p in backend.precisions]
        skipped = [p for p in cfg.precision if p not in backend.precisions]
        if skipped:
            notes.append(f"{target} writes {', '.join(backend.precisions)}; not {', '.join(skipped)}")
        if not wanted:
            raise ExportError(f"--to {target} writes none of --precision {','.join(cfg.precision)}; "
                              f"it writes {', '.join(backend.precisions)}")  # fmt: skip
        for p in wanted:
            quantizers = [q for q in cfg.quantizer if q in backend.quantizers] if p == "int8" else []
            jobs += [EngineJob(backend, p, q) for q in quantizers] or [EngineJob(backend, p)]
    return jobs, notes
