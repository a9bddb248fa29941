"""Runtime backends behind the `Engine` protocol, imported lazily: each needs only its own inference package."""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

from fewstep.runtime.engine import BackendUnavailable, Engine

BACKENDS = {
    "onnxruntime": "fewstep.runtime.backends.onnxruntime",
    "openvino": "fewstep.runtime.backends.openvino",
    "coreml": "fewstep.runtime.backends.coreml",
    "tensorrt": "fewstep.runtime.backends.tensorrt",
    "torch-tensorrt": "fewstep.runtime.backends.torch_tensorrt",  # needs torch + torch-tensorrt on a GPU
    "torch": "fewstep.runtime.backends.torch_eager",  # needs torch: the comparison point, not for serving
}


def load_engine(backend: str, path: Path, entry: dict, **options) -> Engine:
    """Open an engine file with its backend; `entry` is the bundle manifest's engine entry (inputs, outputs, info)."""
    if backend not in BACKENDS:
        raise BackendUnavailable(f"no runtime backend {backend!r}; known: {', '.join(BACKENDS)}")
    module = importlib.import_module(BACKENDS[backend])
    accepted = set(inspect.signature(module.open_engine).parameters) - {"path", "entry"}
    if unknown := sorted(set(options) - accepted):
        # a ValueError, not a TypeError: Generator reads TypeErrors while loading as a malformed manifest
        raise ValueError(f"{backend} engines take no option {', '.join(unknown)} (they take: "
                         f"{', '.join(sorted(accepted))}); pin an engine of the backend the option is for, "
                         f"e.g. engine='openvino-int8' or backend='openvino'")  # fmt: skip
    return module.open_engine(path, entry, **options)
