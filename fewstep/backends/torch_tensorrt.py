"""Torch-TensorRT backend: runs a bundle's `torch-tensorrt-*` engine (a TorchScript module with embedded
TensorRT engines, written by `fewstep export --to torch-tensorrt`) on the NVIDIA GPU that built it.

Needs torch with CUDA and torch-tensorrt (`pip install 'fewstep[gpu]'`); importing torch_tensorrt registers the
TensorRT runtime ops the TorchScript module calls. Only the TorchScript format is loaded: an exported-program
file (`torch_trt_format: exported_program`) goes through `torch.export.load`, which can fall back to unpickling
code, and the runtime never unpickles code; load those yourself with `torch_tensorrt.load` if you trust them.
A TorchScript file is a program too (its graph runs as written): the runtime loads it only after the bundle's
sha256 check, like every engine file.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from fewstep.backends.torch_eager import TorchModuleEngine, _torch
from fewstep.core.manifest import EngineEntry
from fewstep.runtime.engine import BackendUnavailable
from fewstep.runtime.registry import Backend, register_backend


def unavailable_reason() -> str | None:
    """None when Torch-TensorRT engines can run here, else why not."""
    try:
        torch = _torch()
    except BackendUnavailable as e:
        return str(e)
    try:
        importlib.import_module("torch_tensorrt")
    except ImportError:
        return (
            "torch-tensorrt is not installed: it needs an NVIDIA GPU and `torch-tensorrt` matching your CUDA torch: "
            "pip install 'fewstep[gpu]' (its wheels come from NVIDIA's / PyTorch's indexes)"
        )
    if not torch.cuda.is_available():
        return "no CUDA device is visible to torch (an NVIDIA GPU, its driver and a CUDA build of torch are needed)"
    return None


def open_engine(path: Path, entry: EngineEntry, threads: int | None = None, device: int = 0) -> TorchModuleEngine:
    """`threads` is accepted and unused: the Generator passes its CPU thread count to every backend."""
    path = Path(path)
    if path.suffix != ".ts":
        raise BackendUnavailable(f"{path.name}: the runtime loads Torch-TensorRT engines saved as TorchScript (.ts) "
                                 "only; re-export with torch_trt_format: torchscript")  # fmt: skip
    reason = unavailable_reason()
    if reason is not None:
        raise BackendUnavailable(reason)
    torch = _torch()
    module = torch.jit.load(str(path), map_location=f"cuda:{device}").eval()
    # float32 inputs and outputs whatever the precision (the exporter's io_dtype; fp16 casts inside)
    engine = TorchModuleEngine(module, entry.inputs, entry.outputs, f"cuda:{device}")
    engine.backend = "torch-tensorrt"
    # the embedded TensorRT engines take batches up to their profile's max: the Generator splits larger requests
    profile = entry.info.get("profile") or {}
    if profile.get("max"):
        engine.max_batch = int(profile["max"])  # type: ignore[attr-defined]  # the Engine protocol's optional limit
    return engine


BACKEND = register_backend(Backend(
    name="torch-tensorrt", target="torch-tensorrt", open_engine=open_engine, unavailable_reason=unavailable_reason,
    priority=20, precisions=("fp32", "fp16"), exporter="fewstep.export.targets.torch_tensorrt:export",
    build_where_run=True, description="fp32, fp16; NVIDIA GPU only",
))  # fmt: skip
