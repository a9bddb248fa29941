"""ExecuTorch runtime backend: runs an exported denoiser `.pte` (XNNPACK delegate) through ExecuTorch's Python
bindings, the same C++ runtime that phones and embedded boards link.

Those bindings take and return torch tensors, so this backend needs torch (executorch depends on it). The
torch-free runtime extras do not include it: it is for checking and timing on-device engines on a computer.
A `.pte` has one batch (see `fewstep.export.targets.executorch`). A call of any batch runs in chunks of it, the
last one padded (the padding is dropped from the output).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fewstep.core.manifest import EngineEntry, TensorSpec
from fewstep.runtime.engine import BackendUnavailable, check_inputs
from fewstep.runtime.registry import Backend, missing_module, register_backend

INSTALL = "pip install 'fewstep[edge]' (executorch, which brings torch)"


class ExecuTorchLoadError(RuntimeError):
    """A `.pte` file that ExecuTorch cannot load; the message has the runtime's reason."""


def unavailable_reason() -> str | None:
    return missing_module(INSTALL, "torch", "executorch.runtime")


class ExecuTorchEngine:
    """A loaded `.pte` program with one batch: `run({name: array})` -> `{"v": array}`."""

    backend = "executorch"

    def __init__(self, path: str | Path, inputs: dict[str, TensorSpec], outputs: dict[str, TensorSpec],
                 fixed_batch: int, threads: int | None = None):  # fmt: skip
        if reason := unavailable_reason():
            raise BackendUnavailable(reason)
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no ExecuTorch program at {path}")
        import torch  # edge extra (executorch depends on it)
        from executorch.extension.pybindings import portable_lib  # edge extra
        from executorch.runtime import Runtime  # edge extra

        if threads:
            # XNNPACK's thread pool is one per process: the last engine opened sets it
            portable_lib._unsafe_reset_threadpool(int(threads))
        try:
            self.method = Runtime.get().load_program(path).load_method("forward")
        except (RuntimeError, ValueError) as e:
            raise ExecuTorchLoadError(f"ExecuTorch cannot load {path}: {e} (re-export it with this executorch, "
                                      "or check the file is a complete .pte)") from e  # fmt: skip
        self._torch: Any = torch
        self.path = path
        self.inputs, self.outputs = dict(inputs), dict(outputs)
        self.fixed_batch = int(fixed_batch)
        self.threads = threads

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        batch = check_inputs(inputs, self.inputs)
        parts: list[list[np.ndarray]] = []
        for start in range(0, batch, self.fixed_batch):
            rows = {name: a[start : start + self.fixed_batch] for name, a in inputs.items()}
            parts.append(self._run_fixed(rows, min(self.fixed_batch, batch - start)))
        return {name: np.concatenate([p[i] for p in parts]) for i, name in enumerate(self.outputs)}

    def _run_fixed(self, rows: dict[str, np.ndarray], n: int) -> list[np.ndarray]:
        """One call of the program's batch: `n` real rows, padded with copies of the last one."""
        pad = self.fixed_batch - n
        feed = []
        for name in self.inputs:  # the program's inputs are positional, in the declared order
            a = rows[name]
            if pad:
                a = np.concatenate([a, np.repeat(a[-1:], pad, axis=0)])
            feed.append(self._torch.from_numpy(np.ascontiguousarray(a)))
        return [t.numpy()[:n] for t in self.method.execute(feed)]

    def __repr__(self) -> str:
        return f"ExecuTorchEngine({str(self.path)!r}, fixed_batch={self.fixed_batch})"


def open_engine(path: Path, entry: EngineEntry, threads: int | None = None) -> ExecuTorchEngine:
    batch = entry.info.get("fixed_batch")
    if batch is None:
        raise ValueError(f"engine {entry.id} records no info.fixed_batch: re-export it with fewstep export")
    return ExecuTorchEngine(path, entry.inputs, entry.outputs, fixed_batch=int(batch), threads=threads)


BACKEND = register_backend(Backend(
    name="executorch", target="executorch", open_engine=open_engine, unavailable_reason=unavailable_reason,
    priority=60, precisions=("fp32", "int8"), exporter="fewstep.export.targets.executorch:export",
    description="fp32, int8 (PT2E static, XNNPACK quantizer); .pte programs for ExecuTorch on phones and boards",
))  # fmt: skip
