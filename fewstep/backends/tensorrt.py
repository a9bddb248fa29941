"""TensorRT runtime backend: runs a serialized engine (`.plan`) with TensorRT 10's tensor-address API.

Torch-free: numpy arrays in and out, device memory through `cuda-python` (`pip install cuda-python`; its
`cuda.bindings.runtime` module, or `cuda.cudart` in releases before 12.6) for cudaMalloc / cudaMemcpyAsync /
streams. Needs an NVIDIA GPU, `tensorrt` (`pip install 'fewstep[gpu]'`) and `cuda-python`; without them opening an
engine raises `BackendUnavailable` with the reason.

A plan is tied to the TensorRT version and the GPU model that built it; TensorRT says so on deserialization and
this backend passes that on.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import numpy as np

from fewstep.core.manifest import EngineEntry, TensorSpec
from fewstep.runtime.engine import BackendUnavailable, EngineInputError, check_inputs
from fewstep.runtime.registry import Backend, register_backend


def _cudart() -> Any:
    for name in ("cuda.bindings.runtime", "cuda.cudart"):  # cuda-python >= 12.6, then the older layout
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    raise BackendUnavailable("the TensorRT backend needs cuda-python for device memory: pip install cuda-python")


def _tensorrt() -> Any:
    try:
        return importlib.import_module("tensorrt")
    except ImportError as e:
        raise BackendUnavailable(
            "tensorrt is not installed: it needs an NVIDIA GPU and pip install 'fewstep[gpu]' (NVIDIA's index)"
        ) from e


def _call(cudart: Any, result: Any) -> Any:
    """cuda-python returns (error, *values): raise on error, else the value(s)."""
    err, *values = result
    if err != cudart.cudaError_t.cudaSuccess:
        name = cudart.cudaGetErrorName(err)[1]
        raise RuntimeError(f"CUDA runtime error {name.decode() if isinstance(name, bytes) else name}")
    return values[0] if len(values) == 1 else tuple(values)


def unavailable_reason() -> str | None:
    """None when TensorRT engines can run here, else why not."""
    try:
        _tensorrt()
        cudart = _cudart()
    except BackendUnavailable as e:
        return str(e)
    err, count = cudart.cudaGetDeviceCount()
    if err != cudart.cudaError_t.cudaSuccess or count < 1:
        return "no CUDA device is visible (an NVIDIA GPU and driver are needed; check CUDA_VISIBLE_DEVICES)"
    return None


def specs_from_engine(engine: Any, trt: Any) -> tuple[dict[str, TensorSpec], dict[str, TensorSpec]]:
    """{name: TensorSpec} for inputs and outputs; a dynamic axis 0 is the batch "B"."""
    inputs: dict[str, TensorSpec] = {}
    outputs: dict[str, TensorSpec] = {}
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        dims = list(engine.get_tensor_shape(name))
        shape = ["B" if (k == 0 and d == -1) else int(d) for k, d in enumerate(dims)]
        spec = TensorSpec(tuple(shape), np.dtype(trt.nptype(engine.get_tensor_dtype(name))).name)
        (inputs if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT else outputs)[name] = spec
    return inputs, outputs


class TensorRTEngine:
    """A deserialized plan on one GPU: `run({name: float32 array})` -> `{"v": array}`.

    `inputs`/`outputs` default to what the engine declares (a dynamic axis 0 becomes "B"); the bundle's specs,
    when given, must name the same tensors. Batches must lie inside the engine's optimization profile 0.
    """

    backend = "tensorrt"

    def __init__(
        self,
        path: str | Path,
        inputs: dict[str, TensorSpec] | None = None,
        outputs: dict[str, TensorSpec] | None = None,
        device: int = 0,
    ):
        reason = unavailable_reason()
        if reason is not None:
            raise BackendUnavailable(reason)
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"no TensorRT plan at {self.path}")
        self._trt, self._cudart = _tensorrt(), _cudart()
        _call(self._cudart, self._cudart.cudaSetDevice(int(device)))
        self._logger = self._trt.Logger(self._trt.Logger.WARNING)
        self._runtime = self._trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            raise BackendUnavailable(
                f"TensorRT {self._trt.__version__} could not load {self.path}: plans run only with the TensorRT "
                "version and GPU model that built them (see the log above); rebuild it here with `fewstep export`"
            )
        self.context = self.engine.create_execution_context()
        declared_in, declared_out = specs_from_engine(self.engine, self._trt)
        self.inputs = dict(inputs) if inputs is not None else declared_in
        self.outputs = dict(outputs) if outputs is not None else declared_out
        if set(self.inputs) != set(declared_in) or set(self.outputs) != set(declared_out):
            raise EngineInputError(
                f"{self.path} has inputs {sorted(declared_in)} and outputs {sorted(declared_out)}; the bundle says "
                f"{sorted(self.inputs)} and {sorted(self.outputs)}: re-export the bundle"
            )
        self.batch_range = self._profile_batch_range(declared_in)
        self.max_batch = self.batch_range[1]  # the Generator splits larger requests into calls of at most this
        self._stream = _call(self._cudart, self._cudart.cudaStreamCreate())
        self._buffers: dict[str, tuple[int, int]] = {}  # name -> (device pointer, capacity in bytes)

    def _profile_batch_range(self, declared_in: dict[str, TensorSpec]) -> tuple[int, int]:
        """(min, max) batch of optimization profile 0; a fixed-shape engine has a single batch."""
        for name, spec in declared_in.items():
            if spec.shape and spec.shape[0] == "B":
                low, _opt, high = self.engine.get_tensor_profile_shape(name, 0)
                return int(low[0]), int(high[0])
        fixed = int(next(iter(declared_in.values())).shape[0])
        return fixed, fixed

    def _device_buffer(self, name: str, nbytes: int) -> int:
        """A device buffer of at least `nbytes` for tensor `name`, grown (never shrunk) on demand."""
        ptr, capacity = self._buffers.get(name, (0, 0))
        if nbytes > capacity:
            if ptr:
                _call(self._cudart, self._cudart.cudaFree(ptr))
            ptr = int(_call(self._cudart, self._cudart.cudaMalloc(max(nbytes, 1))))
            self._buffers[name] = (ptr, nbytes)
        return ptr

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        batch = check_inputs(inputs, self.inputs)
        low, high = self.batch_range
        if not low <= batch <= high:
            raise EngineInputError(f"{self.path} was built for batches {low}..{high}; got {batch} (rebuild or split)")
        cudart = self._cudart
        h2d, d2h = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        keep = []  # host arrays must outlive the async copies
        for name, array in inputs.items():
            host = np.ascontiguousarray(array)
            keep.append(host)
            ptr = self._device_buffer(name, host.nbytes)
            _call(cudart, cudart.cudaMemcpyAsync(ptr, host.ctypes.data, host.nbytes, h2d, self._stream))
            self.context.set_input_shape(name, host.shape)
            self.context.set_tensor_address(name, ptr)
        results = {}
        for name in self.outputs:
            shape = tuple(self.context.get_tensor_shape(name))  # resolved from the input shapes just set
            dtype = np.dtype(self._trt.nptype(self.engine.get_tensor_dtype(name)))
            results[name] = np.empty(shape, dtype=dtype)
            self.context.set_tensor_address(name, self._device_buffer(name, results[name].nbytes))
        if not self.context.execute_async_v3(int(self._stream)):
            raise RuntimeError(f"TensorRT failed to run {self.path}; its log above says why")
        for name, host in results.items():
            ptr = self._buffers[name][0]
            _call(cudart, cudart.cudaMemcpyAsync(host.ctypes.data, ptr, host.nbytes, d2h, self._stream))
        _call(cudart, cudart.cudaStreamSynchronize(self._stream))
        return {name: a.astype(self.outputs[name].dtype, copy=False) for name, a in results.items()}

    def close(self) -> None:
        """Free device buffers and the stream (also done when the engine is garbage-collected)."""
        cudart = getattr(self, "_cudart", None)
        if cudart is None:
            return
        for ptr, _ in self._buffers.values():
            cudart.cudaFree(ptr)
        self._buffers.clear()
        if getattr(self, "_stream", None) is not None:
            cudart.cudaStreamDestroy(self._stream)
            self._stream = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: CUDA may already be gone
            pass

    def __repr__(self) -> str:
        low, high = self.batch_range
        return f"TensorRTEngine({str(self.path)!r}, batch {low}..{high})"


def open_engine(path: Path, entry: EngineEntry, device: int = 0, threads: int | None = None) -> TensorRTEngine:
    """`threads` is accepted and unused: the Generator passes its CPU thread count to every backend, and a
    TensorRT engine runs on the GPU."""
    return TensorRTEngine(path, entry.inputs, entry.outputs, device)


BACKEND = register_backend(Backend(
    name="tensorrt", target="tensorrt", open_engine=open_engine, unavailable_reason=unavailable_reason, priority=10,
    precisions=("fp32", "fp16", "int8"), exporter="fewstep.export.targets.tensorrt:export", build_where_run=True,
    from_onnx=True,
    triton_platform="tensorrt_plan",
    description="fp32, fp16, int8 (explicit Q/DQ from NNCF); builds only on an NVIDIA GPU with TensorRT",
))  # fmt: skip
