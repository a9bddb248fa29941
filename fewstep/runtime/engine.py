"""The `Engine` protocol: `run(inputs) -> outputs` on numpy arrays, with declared specs checked at the boundary."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from fewstep.core.errors import UserError
from fewstep.core.manifest import TensorSpec


class EngineInputError(ValueError):
    """Inputs that do not match an engine's declared names, dtypes or shapes."""


class BackendUnavailable(UserError, RuntimeError):
    """A backend that cannot run on this machine (package missing, no GPU, not macOS); the message says why."""


@runtime_checkable
class Engine(Protocol):
    """A loaded engine. `inputs`/`outputs`: {name: TensorSpec (shape with "B" for the batch axis, dtype)}."""

    # read-only members (properties), so that an engine may hold them in a dict or as a class attribute
    @property
    def backend(self) -> str: ...

    @property
    def inputs(self) -> Mapping[str, TensorSpec]: ...

    @property
    def outputs(self) -> Mapping[str, TensorSpec]: ...

    # engines with a batch limit (TensorRT profiles, fixed-shape CoreML) also set `max_batch: int` (rows per call)

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


def check_inputs(
    inputs: Mapping[str, np.ndarray],
    specs: Mapping[str, TensorSpec],
    fixed_batch: int | None = None,
) -> int:
    """Validate names, dtypes and shapes against `specs`; -> the batch size. Errors say expected vs got."""
    missing = sorted(set(specs) - set(inputs))
    extra = sorted(set(inputs) - set(specs))
    if missing or extra:
        raise EngineInputError(
            f"engine inputs must be exactly {sorted(specs)}; missing {missing or 'none'}, unexpected {extra or 'none'}"
        )
    batch = None
    for name, spec in specs.items():
        a = inputs[name]
        if not isinstance(a, np.ndarray):
            raise EngineInputError(f"input {name!r} must be a numpy array; got {type(a).__name__}")
        if a.dtype != np.dtype(spec.dtype):
            raise EngineInputError(f"input {name!r} must be {spec.dtype}; got {a.dtype}")
        want = spec.shape
        if a.ndim != len(want):
            raise EngineInputError(f"input {name!r} must have shape {_fmt(want)}; got {a.shape}")
        for d, (w, g) in enumerate(zip(want, a.shape, strict=True)):
            if w == "B":
                batch = g if batch is None else batch
                if g != batch:
                    raise EngineInputError(f"input {name!r} has batch {g} but another input has batch {batch}")
            elif int(w) != g:
                raise EngineInputError(f"input {name!r} must have shape {_fmt(want)}; got {a.shape} (axis {d})")
    if batch is None or batch < 1:
        raise EngineInputError("engine inputs have an empty batch")
    if fixed_batch is not None and batch != fixed_batch:
        raise EngineInputError(f"this engine was built for batch {fixed_batch}; got batch {batch}")
    return int(batch)


def _fmt(shape: Sequence[int | str]) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ")"
