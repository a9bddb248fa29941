"""Flags shared by the commands that run a job from a config dataclass (train-teacher, distill, pairs)."""

from __future__ import annotations

import argparse
from dataclasses import fields
from typing import Any


def count(minimum: int = 1, maximum: int | None = None):
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


def add_run_flags(p: argparse.ArgumentParser, config_cls: type, skip: tuple[str, ...] = ()) -> None:
    """--out/--config/--resume/--print-config/--threads/--no-progress, then one flag per config field."""
    p.add_argument("--out", help="run directory (created)")
    p.add_argument("--config", help="YAML file with config fields; flags override it")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
    p.add_argument("--threads", type=count(1), help="torch CPU threads (default: all cores)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs still go to metrics.jsonl)")
    for f in fields(config_cls):
        if f.name in skip:
            continue
        flag = f"--{f.name.replace('_', '-')}"
        if str(f.type) == "bool":  # --flag true|false, as `fewstep export --speed-gate false`
            p.add_argument(flag, dest=f"cfg_{f.name}", default=None, type=boolean, metavar="true|false",
                           help=f"(default: {str(f.default).lower()})")  # fmt: skip
            continue
        typ = {"int": int, "float": float}.get(str(f.type), str)  # the rest is coerced by load_config
        p.add_argument(flag, dest=f"cfg_{f.name}", type=typ, default=None, help=f"(default: {f.default})")


def resolve_run_config(config_cls: type, args: argparse.Namespace, **fixed: Any) -> Any | None:
    """The config from defaults <- --config YAML <- flags; prints it and returns None for --print-config."""
    import torch

    from fewstep.core.config import load_config, to_yaml

    overrides = {k[4:]: v for k, v in vars(args).items() if k.startswith("cfg_")}
    cfg = load_config(config_cls, args.config, {**overrides, **fixed})
    if args.print_config:
        print(to_yaml(cfg), end="")
        return None
    if not args.out:
        raise ValueError("--out DIR is required (the run directory)")
    if args.threads:
        torch.set_num_threads(args.threads)
    return cfg
