"""Exporters keyed by backend name; each lives in its own module, imported only when asked for.

An exporter module defines:
- `PRECISIONS`: the precisions it can write (e.g. ("fp32", "fp16", "int8"));
- `export(ctx: ExportContext, precision: str) -> Artifact`: write the engine into `ctx.out_dir` (under a
  temporary name is fine: the bundle writer renames) and describe it;
- `can_run() -> str | None`: None when engines of this backend can be *run* on this machine, else the reason
  (used by the parity and speed gates: an engine that cannot run here is written but marked unverified).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import numpy as np

from fewstep.export.denoiser import Denoiser

EXPORTERS: dict[str, str] = {
    "onnx": "fewstep.export.to_onnx",
    "openvino": "fewstep.export.to_openvino",
    "coreml": "fewstep.export.to_coreml",
    "tensorrt": "fewstep.export.to_tensorrt",
    "torch-tensorrt": "fewstep.export.to_torch_tensorrt",
    "torch": "fewstep.export.to_torch",
}
# the runtime backend that runs each exporter's files
RUNTIME_BACKEND = {
    "onnx": "onnxruntime",
    "openvino": "openvino",
    "coreml": "coreml",
    "tensorrt": "tensorrt",
    "torch-tensorrt": "torch-tensorrt",
    "torch": "torch",
}


@dataclass
class ExportContext:
    """What every exporter gets: the torch denoiser, where to write, and shared intermediate products."""

    denoiser: Denoiser
    out_dir: Path
    # the fp32 ONNX graph (written once by the onnx exporter; OpenVINO and TensorRT start from it)
    onnx_fp32: Path | None = None
    # calibration inputs drawn from the student's own sampler: a list of {input name: (B, ...) array}
    calibration: list[dict[str, np.ndarray]] = field(default_factory=list)
    options: dict = field(default_factory=dict)  # backend options from the CLI / config (e.g. "quantizer")
    max_batch: int = 16  # largest batch the engine is built for (TensorRT profiles, Triton max_batch_size)
    spec: dict = field(default_factory=dict)  # the checkpoint's spec (the torch exporter rebuilds from it)


@dataclass
class Artifact:
    """An engine file (or directory, e.g. an .mlpackage) written by an exporter, and what to record about it."""

    path: Path
    backend: str  # runtime backend name (RUNTIME_BACKEND)
    precision: str
    info: dict = field(default_factory=dict)  # quantizer, kept-in-float layers, weight types, ...
    extra_files: list[Path] = field(default_factory=list)  # companions (OpenVINO's .bin)


def get_exporter(name: str) -> ModuleType:
    """The exporter module for a backend name; a missing optional dependency is a clear ImportError."""
    if name not in EXPORTERS:
        raise ValueError(f"unknown export target {name!r}; choose from {', '.join(EXPORTERS)}")
    return importlib.import_module(EXPORTERS[name])
