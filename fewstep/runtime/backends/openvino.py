"""OpenVINO backend (CPU here; GPU/NPU devices where the OpenVINO install has them)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..engine import BackendUnavailable, check_inputs


class OpenVINOEngine:
    backend = "openvino"

    def __init__(
        self, path: Path, inputs: dict[str, dict], outputs: dict[str, dict], threads: int | None = None,
        device: str = "CPU",
    ):  # fmt: skip
        try:
            import openvino as ov
        except ImportError as e:
            raise BackendUnavailable("openvino is not installed: pip install openvino") from e
        core = ov.Core()
        if device not in core.available_devices:
            raise BackendUnavailable(
                f"OpenVINO device {device!r} not present here; available: {core.available_devices}"
            )
        config = {"INFERENCE_PRECISION_HINT": "f32"} if device == "CPU" else {}  # never bf16 on CPUs (TOOLCHAIN.md)
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        self.compiled = core.compile_model(str(path), device, config)
        self.request = self.compiled.create_infer_request()
        self.inputs, self.outputs = inputs, outputs
        self._out_names = list(outputs)

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        check_inputs(inputs, self.inputs)
        result = self.request.infer(inputs)
        return {name: np.array(result[self.compiled.output(name)]) for name in self._out_names}


def open_engine(path: Path, entry: dict, threads: int | None = None, device: str = "CPU"):
    return OpenVINOEngine(path, entry["inputs"], entry["outputs"], threads, device)
