"""Distillation methods as plugins: each is one module of `fewstep.compress.methods` that defines its config
(a `DistillConfig` with only the fields it reads), its loss, and how it runs, and registers itself here.

Adding a method = one new file there (see docs/architecture.md for the recipe) plus its tests; the CLI
(`fewstep distill NAME`), the config checks and `--help` come from its registration.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fewstep.compress.distill_config import DistillConfig

if TYPE_CHECKING:  # annotations only: the session module imports the registry's users
    from fewstep.compress.distill_session import DistillSession

METHODS_PACKAGE = "fewstep.compress.methods"

Runner = Callable[["DistillSession", Any, Path, bool, bool], Path]  # (session, cfg, out, resume, progress)


@dataclass(frozen=True)
class Method:
    name: str  # `fewstep distill NAME`
    config: type[DistillConfig]  # its settings: DistillConfig + the inputs it reads + its own fields
    run: Runner  # trains into `out` and returns the final EMA student's checkpoint
    summary: str  # one line for `fewstep distill --help`
    paper: str = ""  # where the method comes from
    order: int = 100  # its place in listings (`fewstep distill --help`)


_METHODS: dict[str, Method] = {}
_discovered = False


def register_method(method: Method) -> Method:
    for other in _METHODS.values():
        if other.name != method.name and other.config is method.config:
            raise ValueError(f"config {method.config.__name__} already belongs to method {other.name!r}")
    _METHODS[method.name] = method
    return method


def unregister_method(name: str) -> None:
    _METHODS.pop(name, None)


def _discover() -> None:
    global _discovered
    if _discovered:
        return
    _discovered = True
    package = importlib.import_module(METHODS_PACKAGE)
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
        importlib.import_module(f"{METHODS_PACKAGE}.{info.name}")  # a method module registers itself


def methods() -> list[Method]:
    _discover()
    return sorted(_METHODS.values(), key=lambda m: (m.order, m.name))


def method_names() -> list[str]:
    return [m.name for m in methods()]


def get_method(name: str) -> Method:
    _discover()
    if name not in _METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(method_names())}")
    return _METHODS[name]


def method_of(cfg: DistillConfig) -> Method:
    """The method a config belongs to."""
    for m in methods():
        if type(cfg) is m.config:
            return m
    raise ValueError(f"{type(cfg).__name__} is not the config of a registered method")


def make_config(method: str, **fields: Any) -> DistillConfig:
    """`make_config("reflow", pairs="runs/pairs", steps=100)`: a method's config from its field values."""
    return get_method(method).config(**fields)
