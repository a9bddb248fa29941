"""What every exporter is given and what it returns. An exporter is the function a backend names
(`Backend.exporter`, see `fewstep.runtime.registry`): `export(ctx: ExportContext, precision: str) -> Artifact`.
It writes the engine into `ctx.out_dir` (under a temporary name: the bundle writer renames it) and describes it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fewstep.runtime.registry import Backend, backend_for_target

if TYPE_CHECKING:  # torch is the export extra's; annotations only
    from fewstep.export.denoiser import Denoiser


SHARED_FP32_ONNX = ".denoiser.fp32.tmp.onnx"  # the fp32 graph several exporters start from (kept until the end)


@dataclass
class ExportContext:
    """What every exporter gets: the torch denoiser, where to write, and shared intermediate products."""

    denoiser: Denoiser
    out_dir: Path
    # the fp32 ONNX graph (written once by the onnx exporter; OpenVINO and TensorRT start from it)
    onnx_fp32: Path | None = None
    # calibration inputs drawn from the student's own sampler: a list of {input name: (B, ...) array}
    calibration: list[dict[str, np.ndarray]] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)  # from the CLI / config and the bundle (quantizer, cfg)
    max_batch: int = 16  # largest batch the engine is built for (TensorRT profiles, Triton max_batch_size)
    spec: dict[str, Any] = field(default_factory=dict)  # the checkpoint's spec (the torch exporter rebuilds from it)
    calibration_source: Callable[[], list[dict[str, np.ndarray]]] | None = None  # draws calibration on demand

    def calibration_inputs(self) -> list[dict[str, np.ndarray]]:
        """The student's sampler inputs for int8 calibration, drawn once per export when first asked for."""
        if not self.calibration and self.calibration_source is not None:
            self.calibration = self.calibration_source()
        return self.calibration


@dataclass
class Artifact:
    """An engine file (or directory, e.g. an .mlpackage) written by an exporter, and what to record about it."""

    path: Path
    backend: str  # the runtime backend that runs it
    precision: str
    info: dict[str, Any] = field(default_factory=dict)  # quantizer, kept-in-float layers, weight types, ...
    extra_files: list[Path] = field(default_factory=list)  # companions (OpenVINO's .bin)


Exporter = Callable[[ExportContext, str], Artifact]


def fixed_batch(options: dict[str, Any], key: str) -> int:
    """The one batch of a fixed-shape engine (CoreML, ExecuTorch): `options[key]`, else 2 for a CFG engine (the
    conditional and unconditional rows of one image), else 1."""
    batch = options.get(key)
    if batch is None:
        return 2 if options.get("cfg") else 1
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"options[{key!r}] must be a positive integer; got {batch!r}")
    return batch


def exporter_of(backend: Backend) -> Exporter:
    """The export function a backend names, refusing precisions the backend does not list; a missing optional
    dependency is a clear ImportError."""
    ref = backend.exporter
    if ref is None:
        raise ValueError(f"backend {backend.name!r} has no exporter: fewstep export cannot write its engines")
    if callable(ref):
        fn = ref
    else:
        module, _, name = ref.partition(":")
        fn = getattr(importlib.import_module(module), name or "export")

    def export(ctx: ExportContext, precision: str) -> Artifact:
        if precision not in backend.precisions:
            raise ValueError(f"{backend.target} export writes {', '.join(backend.precisions)}; got {precision!r}")
        art: Artifact = fn(ctx, precision)
        if art.backend != backend.name:
            raise ValueError(f"the {backend.target} exporter wrote an engine for backend {art.backend!r}, not "
                             f"{backend.name!r}: fix the exporter or the backend's description")  # fmt: skip
        return art

    return export


def get_exporter(target: str) -> Exporter:
    return exporter_of(backend_for_target(target))
