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
from fewstep.core.verdict_record import write_verdict
from fewstep.evaluation.verdict import equal_steps_verdict, verdict_prompts
from fewstep.models.diffusers_dir import decoded_size
from fewstep.models.loading import model_sha256
from fewstep.models.pipeline import TorchPipeline

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
    if ddp.is_main() and cfg.verdict_prompts:
        run_verdict(session, out / "model.safetensors", cfg.verdict_prompts)
    ddp.barrier()
    return out / "model.safetensors"


def verdict_dataset(session: DistillSession) -> tuple[str, str | None]:
    """The prompts the verdict uses: the method's --dataset, else the teacher's own training data."""
    cfg = session.cfg
    if hasattr(cfg, "dataset"):
        return cfg.dataset, getattr(cfg, "data_path", None)
    training = session.teacher_spec.get("training", {})
    config = training.get("config", {}) if isinstance(training.get("config"), dict) else {}
    return str(training.get("dataset") or config.get("dataset") or "shapes"), config.get("data_path")


def run_verdict(session: DistillSession, student_path: Path, n: int) -> dict:
    """Measure the student at its own steps against the teacher at as many and at its full steps; write
    verdict.json into the run, print the one-line verdict, and warn loudly when the student is worse."""
    dataset, data_path = verdict_dataset(session)
    prompts = verdict_prompts(dataset, n, data_path, decoded_size(session.teacher_spec))
    student = TorchPipeline.from_checkpoint(student_path)
    teacher = TorchPipeline(session.teacher, session.teacher_spec, session.encoder, session.codec)
    verdict = {**equal_steps_verdict(student, teacher, prompts), "student_sha256": model_sha256(student_path),
               "teacher_sha256": session.teacher_sha256}  # fmt: skip
    write_verdict(student_path.parent, verdict)
    print(verdict["line"], flush=True)
    if verdict["outcome"] == "worse":
        print("WARNING: this student is worse than running its teacher with as few steps; do not ship it. "
              "docs/concepts/methods/ lists, per method, what to try when it fails (more steps, another init, "
              "a lower --lr).", flush=True)  # fmt: skip
    return verdict


__all__ = ["DistillConfig", "distill", "get_method", "make_config", "method_names"]
