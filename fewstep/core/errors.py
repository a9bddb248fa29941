"""The errors that mean 'bad input, or not possible here': the CLI prints them as one line and exits 2.

Every layer raises its own subclasses (CheckpointError, BundleError, BackendUnavailable, ...); they derive from
`UserError` or from the builtin classes listed in `USER_ERRORS`, so the CLI needs to know none of them.
"""

from __future__ import annotations

import importlib
from types import ModuleType


class UserError(Exception):
    """A failure the user can fix (bad input, a missing install part, a full disk); the message says how."""


class PromptTooLongError(UserError, ValueError):
    """A prompt with more tokens than the model was trained on."""


class MissingExtra(UserError, ImportError):
    """An optional part of the install is missing; the message names the pip extra that brings it."""


EXTRAS = {
    "train": "training, distillation, evaluation and torch models (torch, diffusers, transformers, ...)",
    "export": "exporting engines (onnx, nncf, openvino, coremltools)",
    "runtime": "running engine bundles (onnxruntime, tokenizers)",
    "serve": "the HTTP server (fastapi, uvicorn)",
    "gpu": "NVIDIA engines (tensorrt, torch-tensorrt, onnxruntime-gpu)",
}


def install_hint(extra: str) -> str:
    return f"pip install 'fewstep[{extra}]'"


def require(module: str, extra: str, what: str) -> ModuleType:
    """Import an optional dependency or raise MissingExtra: '<what> needs <module>: pip install 'fewstep[extra]''."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingExtra(f"{what} needs {module.split('.')[0]}, which is not installed: {install_hint(extra)}") from e


# ValueError covers ConfigError, CheckpointError, BundleError, EngineInputError and the standard "bad value"
# errors; ImportError covers a missing optional dependency whose message names the extra to install.
USER_ERRORS: tuple[type[BaseException], ...] = (
    UserError,
    ValueError,
    FileNotFoundError,
    FileExistsError,
    NotImplementedError,
    ImportError,
)
