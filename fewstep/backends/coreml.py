"""CoreML runtime backend: runs an exported denoiser `.mlpackage` through `MLModel.predict` (macOS only).

Torch-free like the rest of the runtime: coremltools is imported lazily, and only on macOS (on other systems the
engine refuses before importing it). Note that `import coremltools` itself imports torch when torch happens to be
installed; a runtime-only install has no torch, so nothing is pulled in there.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

import numpy as np

from fewstep.core.manifest import EngineEntry, TensorSpec
from fewstep.runtime.engine import BackendUnavailable, check_inputs
from fewstep.runtime.registry import Backend, missing_module, register_backend

COMPUTE_UNITS = ("ALL", "CPU_ONLY", "CPU_AND_GPU", "CPU_AND_NE")


def unavailable_reason() -> str | None:
    """None when CoreML models can be run here, else why not (CoreML itself exists only on macOS)."""
    if sys.platform != "darwin":
        return f"CoreML prediction runs only on macOS (this is {sys.platform})"
    if reason := missing_module("pip install coremltools (or pip install 'fewstep[export]')", "coremltools"):
        return reason
    try:
        # the native bridge to CoreML; missing when no coremltools wheel matches this Python on macOS
        importlib.import_module("coremltools.libcoremlpython")
    except ImportError as e:
        return f"coremltools cannot reach CoreML ({e}): install a coremltools wheel built for this Python version"
    return None


class CoreMLEngine:
    """A loaded `.mlpackage` with fixed shapes: `run({name: array})` -> `{"v": array}`.

    `inputs`/`outputs`: {name: TensorSpec} as the bundle records them;
    `fixed_batch` is the batch the package was converted for (CoreML shapes are fixed, so "B" must equal it);
    None reads it from the package (the exporter's "fewstep.fixed_batch" metadata, else the first input's shape).
    """

    backend = "coreml"

    def __init__(
        self,
        path: str | Path,
        inputs: dict[str, TensorSpec],
        outputs: dict[str, TensorSpec],
        fixed_batch: int | None = None,
        compute_units: str = "ALL",
    ):
        reason = unavailable_reason()
        if reason is not None:
            raise BackendUnavailable(reason)
        if compute_units not in COMPUTE_UNITS:
            raise ValueError(f"compute_units must be one of {', '.join(COMPUTE_UNITS)}; got {compute_units!r}")
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"no CoreML package at {path}")
        import coremltools as ct  # export extra

        self.path = path
        self.inputs = dict(inputs)
        self.outputs = dict(outputs)
        self.compute_units = compute_units
        self.model = ct.models.MLModel(str(path), compute_units=ct.ComputeUnit[compute_units])
        self.fixed_batch = int(fixed_batch) if fixed_batch is not None else _package_batch(self.model)
        self.max_batch = self.fixed_batch

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        check_inputs(inputs, self.inputs, fixed_batch=self.fixed_batch)
        # CoreML copies from contiguous buffers; a strided view would be read wrongly or copied anyway
        feed = {name: np.ascontiguousarray(a) for name, a in inputs.items()}
        result = self.model.predict(feed)
        missing = sorted(set(self.outputs) - set(result))
        if missing:
            raise RuntimeError(f"CoreML model {self.path} returned {sorted(result)}; expected outputs {missing}")
        return {name: np.asarray(result[name], dtype=spec.dtype) for name, spec in self.outputs.items()}

    def __repr__(self) -> str:
        return f"CoreMLEngine({str(self.path)!r}, fixed_batch={self.fixed_batch}, compute_units={self.compute_units!r})"


def open_engine(path: Path, entry: EngineEntry, threads: int | None = None, compute_units: str = "ALL",
                ) -> CoreMLEngine:  # fmt: skip
    """The `load_engine` entry point. `threads` is accepted for a uniform call and ignored: CoreML schedules
    its own CPU threads (and the GPU / Neural Engine per `compute_units`)."""
    batch = entry.info.get("fixed_batch")
    return CoreMLEngine(path, entry.inputs, entry.outputs, fixed_batch=batch, compute_units=compute_units)


def _package_batch(model: Any) -> int:
    meta = model.user_defined_metadata.get("fewstep.fixed_batch")
    if meta:
        return int(meta)
    first = model.get_spec().description.input[0].type.multiArrayType.shape
    if not first:
        raise ValueError("cannot tell this CoreML package's batch: pass fixed_batch (the bundle's info.fixed_batch)")
    return int(first[0])


BACKEND = register_backend(Backend(
    name="coreml", target="coreml", open_engine=open_engine, unavailable_reason=unavailable_reason, priority=30,
    precisions=("fp32", "fp16", "int8w", "palette4"), exporter="fewstep.export.targets.coreml:export",
    description="fp32, fp16, int8w (8-bit weights), palette4 (4-bit palettized weights); prediction only on macOS",
))  # fmt: skip
