"""Typed configs: frozen dataclasses whose fields document themselves, loadable from YAML and the CLI.

A field is declared with `param(default, "what it does", ...)`: its doc, unit, bounds and kind of path live
beside it, and choices come from a `Literal[...]` type. `Config` checks every field when an instance is made
(so a bad value fails before any work, naming the field and what is allowed), then the class's own `check()`
for rules between fields. The CLI builds its flags and their help from the same declarations
(`fewstep.commands.config_flags`), and `to_yaml` writes every field with its doc as a comment.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

T = TypeVar("T")
PathKind = Literal["file", "dir", "path", "checkpoint"]


class ConfigError(ValueError):
    """A config file or flag that cannot be used; the message names the field."""

    def __init__(self, message: str, field_name: str | None = None):
        super().__init__(message)
        self.field_name = field_name


@dataclass(frozen=True)
class FieldInfo:
    """What a field says about itself (dataclass field metadata under the key "fewstep")."""

    doc: str
    unit: str | None = None
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: bool = False
    path: PathKind | None = None  # names a file / directory / checkpoint that must exist when the job starts
    metavar: str | None = None


def param(default: Any = dataclasses.MISSING, doc: str = "", *, unit: str | None = None, min: float | None = None,
          max: float | None = None, above: float | None = None, path: PathKind | None = None,
          metavar: str | None = None, default_factory: Any = dataclasses.MISSING) -> Any:  # fmt: skip
    """A documented config field. `min`/`max`: inclusive bounds; `above`: exclusive lower bound; `path`: the
    value names something on disk (checked by `check_paths`, not at construction: --print-config needs none)."""
    info = FieldInfo(doc, unit, above if above is not None else min, max, above is not None, path, metavar)
    kwargs: dict[str, Any] = {"metadata": {"fewstep": info}}
    if default_factory is not dataclasses.MISSING:
        kwargs["default_factory"] = default_factory
    else:
        kwargs["default"] = default
    return field(**kwargs)


def inherit(cls: type, name: str, default: Any) -> Any:
    """Field `name` of config class `cls` (its doc and bounds) with another default, for a subclass."""
    base = {f.name: f for f in fields(cls)}[name]
    return field(default=default, metadata=base.metadata)


def info_of(f: dataclasses.Field[Any]) -> FieldInfo:
    info = f.metadata.get("fewstep")
    return info if isinstance(info, FieldInfo) else FieldInfo("")


def flag_of(name: str) -> str:
    return "--" + name.replace("_", "-")


def choices_of(typ: Any) -> tuple[Any, ...] | None:
    """The allowed values of a `Literal[...]` (or `Literal[...] | None`, or `tuple[Literal[...], ...]`) type."""
    origin, args = typing.get_origin(typ), typing.get_args(typ)
    if origin is Literal:
        return args
    if origin in (typing.Union, types.UnionType, tuple):
        for a in args:
            if a is not type(None) and a is not Ellipsis and (found := choices_of(a)):
                return found
    return None


def _fmt_choices(choices: tuple[Any, ...]) -> str:
    return ", ".join(str(c) for c in choices)


def _where(name: str) -> str:
    return f"config field {name!r} ({flag_of(name)})"


def coerce(name: str, typ: Any, value: Any) -> Any:
    """`value` (from YAML or a flag) as the field's type; ConfigError naming the field otherwise."""
    origin = typing.get_origin(typ)
    args = typing.get_args(typ)
    if value is None:
        if origin in (typing.Union, types.UnionType) and type(None) in args:
            return None
        raise ConfigError(f"{_where(name)} may not be empty", name)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return coerce(name, inner[0], value)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{_where(name)}: {value!r} is not one of {_fmt_choices(args)}", name)
        return value
    if origin is tuple:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{_where(name)} must be a list; got {value!r}", name)
        return tuple(coerce(name, args[0], v) for v in value)
    if typ is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{_where(name)} must be true or false; got {value!r}", name)
        return value
    if typ in (int, float, str):
        if isinstance(value, bool) and typ is not str:
            raise ConfigError(f"{_where(name)} must be a number, not {value!r}", name)
        try:
            if typ is int and isinstance(value, float) and not value.is_integer():
                raise ValueError
            out = typ(value)
        except (TypeError, ValueError, OverflowError):
            raise ConfigError(f"{_where(name)} must be {typ.__name__}; got {value!r}", name) from None
        if typ is float and not math.isfinite(out):
            raise ConfigError(f"{_where(name)} must be a finite number; got {value!r}", name)
        return out
    return value


def _check_bounds(name: str, info: FieldInfo, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    lo, hi = info.minimum, info.maximum
    if lo is not None and (value <= lo if info.exclusive_minimum else value < lo):
        rel = ">" if info.exclusive_minimum else ">="
        raise ConfigError(f"{_where(name)} must be {rel} {lo:g}; got {value!r}", name)
    if hi is not None and value > hi:
        raise ConfigError(f"{_where(name)} must be <= {hi:g}; got {value!r}", name)


@dataclass(frozen=True)
class Config:
    """Base of every config: fields are type-, choice- and range-checked when an instance is made."""

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in fields(self):
            value = getattr(self, f.name)
            checked = coerce(f.name, hints[f.name], value)
            if checked is not value and checked != value:
                object.__setattr__(self, f.name, checked)
            _check_bounds(f.name, info_of(f), checked)
        self.check()

    def check(self) -> None:
        """Rules between fields; raise ConfigError naming them. Subclasses extend it (call super().check())."""

    def check_paths(self) -> None:
        """Every field that names a file or directory points at one (checked when the job starts)."""
        for f in fields(self):
            kind, value = info_of(f).path, getattr(self, f.name)
            if kind in (None, "path", "checkpoint") or value in (None, ""):
                continue
            p = Path(value)
            if kind == "file" and not p.is_file():
                raise ConfigError(f"{_where(f.name)}: {value} is not a file", f.name)
            if kind == "dir" and not p.is_dir():
                raise ConfigError(f"{_where(f.name)}: {value} is not a directory", f.name)


def field_names(cls: type) -> set[str]:
    return {f.name for f in fields(cls)}


def from_dict(cls: type[T], data: Mapping[str, Any], source: str = "config") -> T:
    """Build dataclass `cls` from a dict, naming unknown or badly typed fields."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source} must be a mapping of field: value")
    hints = typing.get_type_hints(cls)
    names = field_names(cls)
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{source}: unknown field(s) {', '.join(unknown)}; valid fields: {', '.join(sorted(names))}")
    kwargs = {k: coerce(k, hints[k], v) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}", e.field_name) from None


def read_yaml_mapping(path: str | Path, what: str) -> dict[str, Any]:
    """A YAML file that must hold a mapping (empty file: {}); errors name the file and the problem."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} {path} does not exist")
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, RecursionError) as e:
        raise ConfigError(f"{what} {path} is not valid YAML: {' '.join(str(e).split())}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{what} {path} is not UTF-8 text ({e})") from None
    if loaded is not None and not isinstance(loaded, dict):
        raise ConfigError(f"{what} {path} must be a mapping of field: value; got {type(loaded).__name__}")
    return loaded or {}


def load_config(cls: type[T], path: str | Path | None = None, overrides: Mapping[str, Any] | None = None,
                base: Mapping[str, Any] | None = None) -> T:  # fmt: skip
    """Defaults <- `base` (a saved run's config) <- YAML file <- overrides (CLI flags given; None = not given)."""
    data: dict[str, Any] = dict(base or {})
    if path is not None:
        data.update(read_yaml_mapping(path, "config file"))
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return from_dict(cls, data, source=str(path) if path else "config")


def to_dict(config: Any) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(json.dumps(dataclasses.asdict(config)))
    return out


def describe(f: dataclasses.Field[Any], typ: Any) -> str:
    """One line about a field: its doc, unit and choices (the CLI adds the default)."""
    info = info_of(f)
    text = info.doc
    if info.unit:
        text += f" [{info.unit}]"
    if (choices := choices_of(typ)) and typing.get_origin(typ) is not Literal:
        text += f"; one or more of {_fmt_choices(choices)}"
    return str(text)


def to_yaml(config: Any, comments: bool = True) -> str:
    """The config as YAML; with `comments`, each field's doc (and choices) as a comment above it."""
    data = to_dict(config)
    if not comments:
        return str(yaml.safe_dump(data, sort_keys=False))
    hints = typing.get_type_hints(type(config))
    lines = []
    for f in fields(config):
        doc = describe(f, hints[f.name])
        if (choices := choices_of(hints[f.name])) and typing.get_origin(hints[f.name]) is Literal:
            doc += f" ({_fmt_choices(choices)})"
        if doc:
            lines.append(f"# {doc}")
        lines.append(yaml.safe_dump({f.name: data[f.name]}, sort_keys=False).rstrip())
    return "\n".join(lines) + "\n"
