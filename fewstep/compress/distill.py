"""`fewstep distill METHOD`: check the method's config and inputs, set up the shared session, run the method.

Methods (one module each in `fewstep.compress.methods`, equations in docs/concepts/methods/): reflow, slimflow,
instaflow, guidance, consistency, progressive and dmd. Methods that learn from trajectory pairs read a pair
cache (`fewstep pairs`); the others query the teacher online on dataset images.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from fewstep import __version__
from fewstep.compress import distributed as ddp
from fewstep.compress.distill_config import DistillConfig
from fewstep.compress.distill_session import DistillSession
from fewstep.compress.method_registry import get_method, make_config, method_names, method_of
from fewstep.compress.trainer import check_resumable
from fewstep.core.config import to_dict, to_yaml
from fewstep.core.fsio import atomic_write, atomic_write_text

CONFIG_FILE = "config.yaml"


def config_header(method: str, resumed: bool = False) -> str:
    return f"# fewstep {__version__} distill {method}, resolved config{' (resumed)' if resumed else ''}\n"


def saved_method(out: Path) -> str | None:
    """The method a run directory was started with (from its config.yaml header), if any."""
    path = out / CONFIG_FILE
    if not path.is_file():
        return None
    head = path.read_text(encoding="utf-8", errors="replace").split("\n", 1)[0].split()
    return head[4].rstrip(",") if len(head) > 4 and head[0] == "#" and head[3] == "distill" else None


def distill(cfg: DistillConfig, out: str | Path, resume: bool = False, progress: bool = True) -> Path:
    """Run the method `cfg` belongs to into `out`; returns `out/model.safetensors` (the final EMA student).
    Every input is checked before any set-up, and a finished stage of a multi-stage method is reused on resume."""
    method = method_of(cfg)
    out = Path(out)
    cfg.check_ready()
    started = saved_method(out)
    if started is not None and started != method.name:
        raise FileExistsError(f"{out} holds a `fewstep distill {started}` run, not {method.name}; choose another --out")
    ddp.init_from_env(cfg.device)
    if not cfg.multi_stage:
        check_resumable(out, cfg.loop(), to_dict(cfg), resume)  # before any expensive set-up
    elif not resume and (out / CONFIG_FILE).exists():
        raise FileExistsError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    session = DistillSession(cfg, method.name, out)
    if ddp.is_main():
        atomic_write_text(out / CONFIG_FILE, config_header(method.name, resume) + to_yaml(cfg))
    final = method.run(session, cfg, out, resume, progress)
    if ddp.is_main() and final != out / "model.safetensors":
        atomic_write(out / "model.safetensors", lambda tmp: shutil.copyfile(final, tmp))
    ddp.barrier()
    return out / "model.safetensors"


__all__ = ["DistillConfig", "distill", "get_method", "make_config", "method_names"]
