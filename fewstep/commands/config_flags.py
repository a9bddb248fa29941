"""CLI flags made from config dataclasses: one flag per field, its help from the field's doc (what it does, its
unit, its choices, its default), `--config FILE` and `--print-config`, and `--resume` that continues a run from
the config it saved (changing only what may change on resume)."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import typing
from pathlib import Path
from typing import Any

from fewstep.core.config import (
    ConfigError,
    choices_of,
    coerce,
    describe,
    flag_of,
    info_of,
    load_config,
    read_yaml_mapping,
    to_yaml,
)

CONFIG_FILE = "config.yaml"


def count(minimum: int = 1, maximum: int | None = None):  # type: ignore[no-untyped-def]
    """An argparse type: an integer in [minimum, maximum] (e.g. --threads), refused with the flag's name otherwise."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum or (maximum is not None and value > maximum):
            bound = f"in [{minimum}, {maximum}]" if maximum is not None else f">= {minimum}"
            raise argparse.ArgumentTypeError(f"must be {bound}; got {value}")
        return value

    return parse


def boolean(text: str) -> bool:
    """An argparse type for on/off config fields: true/false (also 1/0, yes/no, on/off)."""
    if text.lower() in ("true", "1", "yes", "on"):
        return True
    if text.lower() in ("false", "0", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false; got {text!r}")


def csv(text: str) -> tuple[str, ...]:
    return tuple(s.strip() for s in text.split(",") if s.strip())


def _number(typ: type) -> Any:
    def parse(text: str) -> Any:
        try:
            return typ(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {'an integer' if typ is int else 'a number'}; got {text!r}"
            ) from None

    return parse


def _default_text(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        return ",".join(map(str, value)) or "none"
    return "none" if value is None or value == "" else str(value)


def _owners(cls: type) -> dict[str, type]:
    """Each field -> the class that first declares it (a base's field redefaulted by a subclass stays the base's)."""
    owners: dict[str, type] = {}
    for c in reversed(cls.__mro__):
        for name in inspect.get_annotations(c):
            owners.setdefault(name, c)
    return owners


def _title(c: type) -> str:
    doc = (c.__doc__ or c.__name__).strip().split("\n\n")[0]
    return " ".join(doc.split()).rstrip(".")


def add_config_flags(parser: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = ()) -> None:
    """One flag per field of config dataclass `cls` (dest `cfg_<field>`, default None = not given), grouped by the
    class that declares them, the most specific first; each flag's help is the field's doc, unit and default."""
    hints = typing.get_type_hints(cls)
    owners = _owners(cls)
    groups: dict[type, argparse._ArgumentGroup] = {}
    for c in cls.__mro__:
        if c in owners.values():
            groups[c] = parser.add_argument_group(_title(c))
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        typ, info = hints[f.name], info_of(f)
        inner = next((a for a in typing.get_args(typ) if a is not type(None)), typ) if _optional(typ) else typ
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        help_text = f"{describe(f, typ)} (default: {_default_text(default)})".replace("%", "%%")
        kwargs: dict[str, Any] = {"dest": f"cfg_{f.name}", "default": None, "help": help_text}
        if inner is bool:  # bare `--triton` is true; `--triton false` also works
            kwargs.update(nargs="?", const=True, type=boolean, metavar="BOOL")
        elif typing.get_origin(inner) is tuple:
            choices = choices_of(inner)
            kwargs.update(type=csv, metavar=info.metavar or ("A,B,..." if not choices else ",".join(map(str, choices))))
        elif choices := choices_of(inner):
            kwargs.update(choices=choices)
        elif inner in (int, float):
            kwargs.update(type=_number(inner), metavar=info.metavar or ("N" if inner is int else "X"))
        else:
            kwargs.update(metavar=info.metavar or PATH_METAVARS.get(info.path or "", "TEXT"))
        groups[owners[f.name]].add_argument(flag_of(f.name), **kwargs)


PATH_METAVARS = {"file": "FILE", "dir": "DIR", "path": "PATH", "checkpoint": "CHECKPOINT"}


def _optional(typ: Any) -> bool:
    return type(None) in typing.get_args(typ)


def flag_values(args: argparse.Namespace) -> dict[str, Any]:
    """The config fields given as flags (None: not given)."""
    return {k[4:]: v for k, v in vars(args).items() if k.startswith("cfg_") and v is not None}


def add_run_flags(
    p: argparse.ArgumentParser,
    config_cls: type,
    skip: tuple[str, ...] = (),
    resume: bool = True,
    out_help: str = "run directory (created): config.yaml, checkpoints, samples, metrics",
) -> None:
    """--out/--config/--resume/--print-config/--threads/--no-progress, then one flag per config field."""
    p.add_argument("--out", metavar="DIR", help=out_help)
    p.add_argument("--config", metavar="YAML", help="a YAML file of settings (keys as below, '-' -> '_'); flags "
                   "override it. `--print-config` writes one with every field and its doc")  # fmt: skip
    if resume:
        p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint, "
                       "with the settings it saved; only --steps and other settings that do not change the weights' "
                       "trajectory may be given anew")  # fmt: skip
    p.add_argument("--print-config", action="store_true", help="print the resolved settings as documented YAML and "
                   "exit (with --resume --out RUN: the run's own)")  # fmt: skip
    p.add_argument("--threads", type=count(1), metavar="N", help="torch CPU threads (default: all cores)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs still go to metrics.jsonl)")
    add_config_flags(p, config_cls, skip)


def saved_config(out: Path, cls: type) -> dict[str, Any]:
    """The settings a run saved (OUT/config.yaml), keeping the fields `cls` has: a run started by an older
    fewstep may list settings its method never read."""
    data = read_yaml_mapping(out / CONFIG_FILE, "saved run config")
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in data.items() if k in names}


def resolve_run_config(config_cls: type, args: argparse.Namespace, resumable: tuple[str, ...] = (),
                       **fixed: Any) -> Any | None:  # fmt: skip
    """The config from defaults <- the run's saved config (--resume) <- --config YAML <- flags; prints it and
    returns None for --print-config. A resumed run refuses a new value for a setting that shapes the weights."""
    given = {**flag_values(args), **fixed}
    base: dict[str, Any] = {}
    out = Path(args.out) if args.out else None
    if getattr(args, "resume", False) and out is not None and (out / CONFIG_FILE).is_file():
        base = saved_config(out, config_cls)
        requested = dict(given)
        if args.config:
            requested.update(read_yaml_mapping(args.config, "config file"))
        hints = typing.get_type_hints(config_cls)
        same = lambda k, v: coerce(k, hints[k], base[k]) == coerce(k, hints[k], v)  # noqa: E731
        changed = {k: v for k, v in requested.items() if k in base and not same(k, v) and k not in resumable}
        if changed:
            which = ", ".join(f"{flag_of(k)} {v!r} (the run has {base[k]!r})" for k, v in sorted(changed.items()))
            raise ConfigError(f"--resume continues {out} with the settings it saved; these differ: {which}. "
                              f"May change on resume: {', '.join(flag_of(k) for k in resumable)}")  # fmt: skip
    cfg = load_config(config_cls, args.config, given, base=base)
    if args.print_config:
        print(to_yaml(cfg), end="")
        return None
    if not args.out:
        raise ValueError("--out DIR is required (the run directory)")
    if args.threads:
        import torch  # train extra: the job's own thread pool

        torch.set_num_threads(args.threads)
    return cfg
