"""OpenVINO backend (CPU here; GPU/NPU devices where the OpenVINO install has them).

Static shapes: OpenVINO runs a model compiled for one fixed shape much faster than the same model compiled
with a dynamic batch (shape inference and memory planning per call; on this CPU the 4-step student's int8
engine ran 1.22-1.29x faster end to end at batch 1 and 8, `benchmarks/openvino_static_shapes.py`). But each
compilation takes ~0.8 s here, so the engine compiles static copies for power-of-two batch sizes only (1, 2, 4,
8, ...), pads a batch up to the next one (padding rows repeat the last row; their outputs are dropped), keeps the
`max_shapes` most recently used and compiles on a miss; `prepare(rows)` compiles every size up to `rows` ahead
of time (the server does so before it reports ready). `static_shapes=False` compiles the dynamic model once.

Compiled-model cache: with `cache_dir` (or the environment variable FEWSTEP_OPENVINO_CACHE_DIR) OpenVINO stores
each compiled shape as a blob keyed by the model, device and config, and a later process imports it instead of
compiling again (OpenVINO's `CACHE_DIR`; ~3 MB per shape for the 4-step student). Off by default, since it
writes to disk; on this CPU it cut the int8 4-step student's cold start (process start -> first image) from 1.40 s
to 0.88 s (`benchmarks/openvino_cache_cold_start.py`; OpenVINO notes the gain on CPUs depends on the model).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from fewstep.core.manifest import EngineEntry, TensorSpec
from fewstep.runtime.engine import BackendUnavailable, check_inputs
from fewstep.runtime.registry import Backend, missing_module, register_backend

MAX_SHAPES = 8  # compiled batch sizes kept: 1, 2, 4, ..., 128
CACHE_ENV = "FEWSTEP_OPENVINO_CACHE_DIR"


def native_bf16(core: Any, device: str = "CPU") -> bool:
    """Whether `device` computes bf16 natively (on a CPU: AMX or AVX-512 BF16). Elsewhere bf16 is emulated and far
    slower than f32 (a torch bf16 matmul ran ~130x slower on the AVX2 machine, docs/reference/toolchain.md), which
    is why OpenVINO itself defaults to f32 there."""
    try:
        return "BF16" in core.get_property(device, "OPTIMIZATION_CAPABILITIES")
    except RuntimeError:  # a device that does not report its capabilities
        return False


class OpenVINOEngine:
    backend = "openvino"

    def __init__(
        self, path: Path, inputs: dict[str, TensorSpec], outputs: dict[str, TensorSpec], threads: int | None = None,
        device: str = "CPU", static_shapes: bool = True, max_shapes: int = MAX_SHAPES, cache_dir: str | None = None,
        inference_precision: str = "f32",
    ):  # fmt: skip
        if why := unavailable_reason():
            raise BackendUnavailable(why)
        import openvino as ov  # its own package (export extra)

        self._core = ov.Core()
        if device not in self._core.available_devices:
            raise BackendUnavailable(
                f"OpenVINO device {device!r} not present here; available: {self._core.available_devices}"
            )
        if max_shapes < 1:
            raise ValueError(f"max_shapes must be >= 1; got {max_shapes}")
        # f32 unless the engine is a bf16 one: OpenVINO's own default on a CPU with native bf16 is bf16, which would
        # break the parity of fp32/fp16/int8 engines with the torch student (bf16 engines pass their own gate)
        if inference_precision == "bf16" and not native_bf16(self._core, device):
            why = f"{device} here has no AMX or AVX-512 BF16, and emulated bf16 is far slower than f32"
            raise BackendUnavailable(f"a bf16 engine needs native bf16 ({why}); use an fp32, fp16 or int8 engine")
        config: dict[str, str | int] = {"INFERENCE_PRECISION_HINT": inference_precision} if device == "CPU" else {}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        cache_dir = cache_dir if cache_dir is not None else os.environ.get(CACHE_ENV, "")
        if cache_dir:
            try:
                Path(cache_dir).mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise ValueError(f"OpenVINO cache directory {cache_dir!r} cannot be created ({e}); "
                                 f"pass another cache_dir or unset {CACHE_ENV}") from e  # fmt: skip
            self._core.set_property({"CACHE_DIR": str(cache_dir)})
        self.cache_dir = cache_dir or None
        self._device, self._config = device, config
        self.inputs, self.outputs = inputs, outputs
        self._out_names = list(outputs)
        self.static_shapes, self.max_shapes = static_shapes, max_shapes
        self._model = self._core.read_model(str(path))
        # batch size (None: the dynamic model) -> (compiled model, its infer request), most recently used last
        self._compiled: OrderedDict[int | None, tuple[Any, Any]] = OrderedDict()
        self._compile(None if not static_shapes else 1)  # fail at load, not at the first request

    @property
    def compiled_batches(self) -> list[int | None]:
        """Batch sizes compiled now (None: the dynamic model), least recently used first."""
        return list(self._compiled)

    def prepare(self, rows: int) -> None:
        """Compile every batch size a call of up to `rows` rows will use (no-op for the dynamic model)."""
        if self.static_shapes:
            for size in _buckets(rows)[-self.max_shapes :]:
                self._compile(size)

    def _compile(self, batch: int | None) -> tuple[Any, Any]:
        if batch in self._compiled:
            self._compiled.move_to_end(batch)
            return self._compiled[batch]
        model = self._model
        if batch is not None:
            import openvino as ov  # its own package (export extra)

            model = model.clone()
            model.reshape({name: ov.PartialShape(list(s.concrete(batch))) for name, s in self.inputs.items()})
        compiled = self._core.compile_model(model, self._device, self._config)
        self._compiled[batch] = (compiled, compiled.create_infer_request())
        while len(self._compiled) > self.max_shapes:
            self._compiled.popitem(last=False)
        return self._compiled[batch]

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        # share_inputs: the request reads the numpy arrays in place (a synchronous call, so they outlive it)
        # instead of copying each into its own tensor: ~0.17 ms of a ~3.4 ms batch-1 call on 2 cores
        batch = check_inputs(inputs, self.inputs)
        if not self.static_shapes:
            compiled, request = self._compile(None)
            result = request.infer(inputs, share_inputs=True)
            return {name: np.array(result[compiled.output(name)]) for name in self._out_names}
        size = _bucket(batch)
        compiled, request = self._compile(size)
        if size > batch:
            inputs = {k: np.concatenate([v, np.repeat(v[-1:], size - batch, axis=0)]) for k, v in inputs.items()}
        result = request.infer(inputs, share_inputs=True)
        return {name: np.array(result[compiled.output(name)][:batch]) for name in self._out_names}


def _bucket(batch: int) -> int:
    """The compiled batch size a batch runs at: the next power of two."""
    return 1 << (batch - 1).bit_length()


def _buckets(rows: int) -> list[int]:
    return [1 << k for k in range(_bucket(rows).bit_length())]


def open_engine(path: Path, entry: EngineEntry, threads: int | None = None, device: str = "CPU",
                static_shapes: bool = True, max_shapes: int = MAX_SHAPES, cache_dir: str | None = None,
                ) -> OpenVINOEngine:  # fmt: skip
    precision = "bf16" if entry.precision == "bf16" else "f32"  # fp16 engines: fp16-stored weights, f32 compute
    return OpenVINOEngine(path, entry.inputs, entry.outputs, threads, device, static_shapes, max_shapes, cache_dir,
                          precision)  # fmt: skip


def unavailable_reason() -> str | None:
    return missing_module("pip install 'fewstep[openvino]' (torch-free) or 'fewstep[export]'", "openvino")


BACKEND = register_backend(Backend(
    name="openvino", target="openvino", open_engine=open_engine, unavailable_reason=unavailable_reason, priority=50,
    precisions=("fp32", "fp16", "bf16", "int8", "int8w", "int4w"), exporter="fewstep.export.targets.openvino:export",
    from_onnx=True, onnx_decoder_at={"bf16": "bf16"},
    description="fp32, fp16, bf16 (computed in bf16: CPUs with AMX or AVX-512 BF16), int8 (NNCF), int8w and int4w "
    "(weight-only)",
))  # fmt: skip
