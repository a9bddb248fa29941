"""Torch backend: a bundle's `torch-*` engine (the student's network as a fewstep checkpoint) run in torch
eager, for comparison with the real engines inside the same runtime. Needs torch and diffusers (the training
install); the rest of the runtime never imports them.

`TorchModuleEngine` (numpy in, numpy out through any torch callable) is shared with the Torch-TensorRT backend.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import numpy as np

from fewstep.core.manifest import EngineEntry, TensorSpec
from fewstep.runtime.engine import BackendUnavailable, check_inputs
from fewstep.runtime.registry import Backend, register_backend


def _torch() -> Any:
    try:
        return importlib.import_module("torch")
    except ImportError as e:
        raise BackendUnavailable("torch engines need torch: pip install 'fewstep[train]'") from e


class TorchModuleEngine:
    """A torch callable taking the engine's inputs positionally, in the bundle's declared order, as float32
    tensors on `device` (an fp16 module casts inside: `export.denoiser.HalfIO`)."""

    backend = "torch"

    def __init__(self, module: Any, inputs: dict[str, TensorSpec], outputs: dict[str, TensorSpec], device: str):
        self.torch = _torch()
        self.module, self.inputs, self.outputs = module, inputs, outputs
        self.device = self.torch.device(device)
        self._out_name = next(iter(outputs))

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        check_inputs(inputs, self.inputs)
        torch = self.torch
        args = [torch.from_numpy(np.ascontiguousarray(inputs[n])).to(self.device) for n in self.inputs]
        with torch.inference_mode():
            v = self.module(*args)
        return {self._out_name: v.float().cpu().numpy().astype(self.outputs[self._out_name].dtype, copy=False)}


def default_device(torch: Any) -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def unavailable_reason() -> str | None:
    for module in ("torch", "diffusers"):
        try:
            importlib.import_module(module)
        except ImportError:
            return f"torch engines need {module}: pip install 'fewstep[train]'"
    return None


def open_engine(path: Path, entry: EngineEntry, threads: int | None = None, device: str | None = None,
                ) -> TorchModuleEngine:  # fmt: skip
    """`threads` sets torch's CPU threads for the whole process (torch has one pool); `device` defaults to CUDA
    when torch sees a GPU. fp16 engines compute in float16 behind float32 inputs and outputs (on CPU slower than
    fp32, so the export speed gate refuses them there)."""
    torch = _torch()
    try:  # train extra: torch, diffusers (the network is rebuilt from its spec)
        from fewstep.export.denoiser import Denoiser, HalfIO
        from fewstep.models.checkpoint import CheckpointError
        from fewstep.models.loading import load_model
    except ImportError as e:
        raise BackendUnavailable(f"torch engines need fewstep's model code and its dependencies: {e}") from e
    try:  # safetensors; the network is rebuilt from the spec (diffusers), nothing is unpickled
        model, spec = load_model(path)
    except (ImportError, CheckpointError) as e:
        raise BackendUnavailable(f"cannot load the torch engine {Path(path).name}: {e}") from e
    if threads:
        torch.set_num_threads(int(threads))
    ins = entry.inputs
    optional = {n: int(ins[n].shape[1]) if n in ins else None for n in ("pooled", "extra_ids")}
    text = ins["text"].shape
    denoiser = Denoiser(model, spec["image"], int(text[1]), int(text[2]), optional["pooled"], optional["extra_ids"])
    if list(ins) != denoiser.input_names:
        raise BackendUnavailable(f"{path} rebuilds a network with inputs {denoiser.input_names}; the bundle says "
                                 f"{list(ins)}: re-export the bundle")  # fmt: skip
    device = device or default_device(torch)
    module = HalfIO(denoiser) if entry.precision == "fp16" else denoiser
    return TorchModuleEngine(module.to(device).eval(), ins, entry.outputs, device)


BACKEND = register_backend(Backend(
    name="torch", target="torch", open_engine=open_engine, unavailable_reason=unavailable_reason, priority=90,
    precisions=("fp32", "fp16"), exporter="fewstep.export.targets.torch_eager:export", comparison=True,
    description="fp32, fp16: the network itself (safetensors), run in torch eager by the runtime's torch backend: "
    "the comparison point (fewstep bench BUNDLE --engine torch-fp32), never picked over a real engine",
))  # fmt: skip
