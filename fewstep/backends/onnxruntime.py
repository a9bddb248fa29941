"""ONNX Runtime backend: CPU here; CUDA and TensorRT execution providers when onnxruntime-gpu offers them."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fewstep.core.manifest import EngineEntry, TensorSpec
from fewstep.runtime.engine import BackendUnavailable, check_inputs
from fewstep.runtime.registry import Backend, missing_module, register_backend

# tried in this order when present in the installed onnxruntime build
PROVIDER_PRIORITY = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


class OnnxRuntimeEngine:
    backend = "onnxruntime"

    def __init__(
        self,
        path: Path,
        inputs: dict[str, TensorSpec],
        outputs: dict[str, TensorSpec],
        threads: int | None = None,
        providers: list[str] | None = None,
        spinning: bool = True,
    ):
        try:
            import onnxruntime as ort  # runtime extra
        except ImportError as e:
            raise BackendUnavailable("onnxruntime is not installed: pip install 'fewstep[runtime]'") from e
        available = ort.get_available_providers()
        chosen = providers or [p for p in PROVIDER_PRIORITY if p in available]
        unknown = [p for p in chosen if p not in available]
        if unknown:
            raise BackendUnavailable(f"onnxruntime here offers {available}; not {unknown}")
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        # ORT's idle threads spin for work: 12-20% faster alone (benchmarks/ort_thread_spinning.py), but they steal
        # cores from every other session in the process; side-by-side timing (gates, benchmarks) turns it off
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        self.session = ort.InferenceSession(str(path), opts, providers=chosen)
        self.providers = self.session.get_providers()
        self.inputs, self.outputs = inputs, outputs
        self._out_names = list(outputs)

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        check_inputs(inputs, self.inputs)
        return dict(zip(self._out_names, self.session.run(self._out_names, inputs), strict=True))


def open_engine(path: Path, entry: EngineEntry, threads: int | None = None, providers: list[str] | None = None,
                spinning: bool = True) -> OnnxRuntimeEngine:  # fmt: skip
    return OnnxRuntimeEngine(path, entry.inputs, entry.outputs, threads, providers, spinning)


def unavailable_reason() -> str | None:
    return missing_module("pip install 'fewstep[runtime]'", "onnxruntime")


BACKEND = register_backend(Backend(
    name="onnxruntime", target="onnx", open_engine=open_engine, unavailable_reason=unavailable_reason, priority=40,
    precisions=("fp32", "fp16", "int8"), exporter="fewstep.export.targets.onnx:export", quantizers=("nncf", "ort"),
    from_onnx=True,
    triton_platform="onnxruntime_onnx", side_by_side_options={"spinning": False},
    description="fp32, fp16, int8 (NNCF or ONNX Runtime QDQ; calibration from the student's own sampler)",
))  # fmt: skip
