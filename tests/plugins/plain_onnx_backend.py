"""A whole engine backend in one file (the recipe in docs/architecture.md): the student's fp32 ONNX graph run by
ONNX Runtime with every graph optimization off, registered as its own backend `ort-plain`.

It shows the four parts a backend describes: how `fewstep export --to ort-plain` writes its engine (`export`),
how the runtime opens it (`open_engine`), whether it can run here (`unavailable_reason`), and where it ranks
(`priority`). Importing this module registers it; `unregister_backend("ort-plain")` removes it.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np

from fewstep.core.manifest import EngineEntry
from fewstep.runtime.engine import BackendUnavailable, check_inputs
from fewstep.runtime.registry import Backend, missing_module, register_backend

NAME = "ort-plain"


def unavailable_reason() -> str | None:
    return missing_module("pip install 'fewstep[runtime]'", "onnxruntime")


class PlainOrtEngine:
    backend = NAME

    def __init__(self, path: Path, entry: EngineEntry, threads: int | None = None):
        if reason := unavailable_reason():
            raise BackendUnavailable(reason)
        import onnxruntime as ort  # runtime extra

        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        if threads:
            opts.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.inputs, self.outputs = entry.inputs, entry.outputs

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        check_inputs(inputs, self.inputs)
        names = list(self.outputs)
        return dict(zip(names, self.session.run(names, inputs), strict=True))


def open_engine(path: Path, entry: EngineEntry, threads: int | None = None) -> PlainOrtEngine:
    return PlainOrtEngine(path, entry, threads)


def export(ctx: Any, precision: str) -> Any:
    """`ctx` is the export's `ExportContext`; the returned `Artifact` names the file written into ctx.out_dir."""
    from fewstep.export.context import Artifact  # export extra (torch): only when exporting
    from fewstep.export.targets.onnx import shared_fp32  # export extra (torch, onnx)

    tmp = ctx.out_dir / ".denoiser.ort-plain.tmp.onnx"
    shutil.copyfile(shared_fp32(ctx), tmp)  # the fp32 graph this export already wrote for ONNX targets
    return Artifact(tmp, NAME, precision, {"graph_optimizations": "off"})


BACKEND = register_backend(Backend(
    name=NAME, target=NAME, open_engine=open_engine, unavailable_reason=unavailable_reason, priority=95,
    precisions=("fp32",), exporter=export, description="fp32: ONNX Runtime with graph optimizations off",
))  # fmt: skip
