"""ONE training loop for teachers and every distillation method.

A method is a loss object `loss(model, batch, rng) -> (loss, logs)` (`rng`: the step's `StepRandom`); the loop
never asks which one it runs. A loss that owns trainable or moving parts of its own (DMD's fake score and its
optimizer, the consistency target network) exposes `state_tensors()` / `load_state_tensors(d)` (saved in the
training state, so `--resume` is exact for them too), and optionally `to(device)` and `after_step(model)`.

The loop owns AdamW with LR warm-up, gradient clipping, EMA, atomic checkpoints with exact `--resume`
(batches and noise are functions of (seed, step), so a resumed run equals an uninterrupted one), NaN/Inf
step skipping, a progress bar with loss and ETA, `metrics.jsonl`, periodic sample grids, a loss curve and
multi-process data parallel (`fewstep.compress.distributed`).
"""

from __future__ import annotations

import copy
import json
import math
import re
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from tqdm.auto import tqdm

from fewstep.compress import distributed as ddp
from fewstep.compress.distributed import StepRandom
from fewstep.compress.health import HEALTH_FILE, HealthMonitor, append_warning, read_health
from fewstep.core.config import Config, ConfigError, param
from fewstep.core.errors import UserError
from fewstep.core.fsio import atomic_write, atomic_write_text, remove_stale_temps
from fewstep.models.checkpoint import CheckpointError, load_tensors, save_tensors

LossFn = Callable[[nn.Module, Any, StepRandom], tuple[torch.Tensor, dict[str, float]]]
STATE_FILE = "state.safetensors"
# settings a resumed run may change: they do not alter the trajectory of the weights
RESUMABLE_CHANGES = ("steps", "stage2_steps", "device", "checkpoint_every", "sample_every", "log_every",
                     "max_bad_steps", "name", "sample_guidance", "sample_steps")  # fmt: skip
METRICS_FILE = "metrics.jsonl"
MAX_BATCH = 65536


class TrainingHealthWarning(UserWarning):
    """A training-health warning (diverging, stalled, clipped); see `fewstep.compress.health`."""


class TrainingDivergedError(UserError, RuntimeError):
    """Too many consecutive non-finite losses; the last good checkpoint is kept."""


@dataclass(frozen=True)
class LoopConfig(Config):
    """The training loop's settings; every job config (teacher, distillation, decoder) extends it."""

    steps: int = param(6000, "optimizer steps in total; a resumed run continues to this number", min=1)
    batch_size: int = param(32, "images per optimizer step (global: split over torchrun processes)", min=1,
                            max=MAX_BATCH)  # fmt: skip
    lr: float = param(4e-4, "AdamW peak learning rate", above=0, max=1)
    warmup_steps: int = param(200, "linear learning-rate warm-up", unit="steps", min=0)
    weight_decay: float = param(0.0, "AdamW weight decay", min=0)
    ema_decay: float = param(0.999, "decay of the weights' EMA, the model that is saved for use (0 = no EMA)",
                             min=0, max=0.999999)  # fmt: skip
    grad_clip: float = param(1.0, "largest global gradient norm (0 = no clipping)", min=0)
    checkpoint_every: int = param(250, "steps between atomic checkpoints (a resume loses at most this many)", min=1)
    sample_every: int = param(1000, "steps between sample grids in OUT/samples (0 = none)", min=0)
    log_every: int = param(10, "steps averaged into one metrics.jsonl line", min=1)
    seed: int = param(0, "data order, noise and t draws all derive from (seed, step): a resume is exact", min=0)
    max_bad_steps: int = param(20, "consecutive non-finite losses before the run stops", min=1)
    device: str = param("cpu", "where to train: cpu, cuda or cuda:N", metavar="cpu|cuda|cuda:N")
    mixed_precision: Literal["no", "bf16", "fp16"] = param(
        "no", "autocast precision; GPUs only (bf16 is ~130x slower on CPUs without bf16 units)"
    )
    optimizer: Literal["adamw", "adamw8bit"] = param(
        "adamw", "adamw8bit: bitsandbytes' 8-bit AdamW, ~1/4 of the optimizer memory; CUDA only"
    )

    def check(self) -> None:
        super().check()
        if not re.fullmatch(r"cpu|cuda(:\d+)?", self.device):
            raise ConfigError(f"device must be cpu, cuda or cuda:N; got {self.device!r}", "device")
        if self.optimizer == "adamw8bit" and not self.device.startswith("cuda"):
            raise ConfigError("optimizer=adamw8bit (bitsandbytes) runs on CUDA GPUs only; use adamw on this device",
                              "optimizer")  # fmt: skip
        if self.mixed_precision != "no" and not self.device.startswith("cuda"):
            raise ConfigError(f"mixed_precision={self.mixed_precision} needs a GPU (device cuda); on CPUs it is far "
                              "slower than fp32", "mixed_precision")  # fmt: skip

    def loop(self, **changes: Any) -> LoopConfig:
        """The loop's own settings from a job config (`changes`: e.g. another step count for a second stage)."""
        return loop_config(self, **changes)


def loop_config(run_config: Any, **changes: Any) -> LoopConfig:
    """The LoopConfig fields of a command's config dataclass (train-teacher, distill, distill-decoder)."""
    names = {f.name for f in fields(LoopConfig)}
    return LoopConfig(**{**{k: getattr(run_config, k) for k in names if hasattr(run_config, k)}, **changes})


def config_changes(meta: dict, loop: LoopConfig, run_config: dict) -> dict[str, tuple]:
    """Weight-changing settings that differ between a saved run (its checkpoint metadata) and now."""
    saved = {**asdict(LoopConfig()), **meta["loop"]}  # fields added since the run started take defaults
    diff = {k: (saved[k], v) for k, v in asdict(loop).items() if saved[k] != v and k not in RESUMABLE_CHANGES}
    saved_run = meta.get("run") or {}
    diff.update({k: (saved_run[k], v) for k, v in run_config.items()
                 if k in saved_run and saved_run[k] != v and k not in RESUMABLE_CHANGES})  # fmt: skip
    return diff


def check_resumable(out_dir: str | Path, loop: LoopConfig, run_config: dict, resume: bool) -> bool:
    """Before any expensive set-up: is there a run in `out_dir`, may it be resumed with these settings?"""
    from safetensors import safe_open  # train extra

    path = Path(out_dir) / STATE_FILE
    if not path.exists():
        return False
    if not resume:
        raise FileExistsError(f"{out_dir} already holds a run; pass --resume to continue it or choose another --out")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {})["fewstep"])
    except Exception as e:  # any unreadable state is reported the same way
        raise CheckpointError(f"{path} is not a readable fewstep training state: {e}") from None
    diff = config_changes(meta, loop, run_config)
    if diff:
        raise CheckpointError(
            f"{path} was trained with other settings {diff} (saved, now); resume with the same config"
        )
    return True


def optimizer_tensors(opt: torch.optim.Optimizer, prefix: str) -> dict[str, torch.Tensor]:
    """An optimizer's per-parameter state as flat tensors `{prefix}{i}.{name}` (for a safetensors file)."""
    return {f"{prefix}{i}.{k}": torch.as_tensor(v) for i, s in opt.state_dict()["state"].items() for k, v in s.items()}


def load_optimizer_tensors(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], param_groups: list) -> None:
    """Inverse of `optimizer_tensors` (keys without the prefix)."""
    state: dict[int, dict[str, torch.Tensor]] = {}
    for k, v in tensors.items():
        i, name = k.split(".", 1)
        state.setdefault(int(i), {})[name] = v
    opt.load_state_dict({"state": state, "param_groups": param_groups})


def make_optimizer(config: LoopConfig, params: list[torch.Tensor]) -> torch.optim.Optimizer:
    if config.optimizer == "adamw8bit":
        try:
            import bitsandbytes as bnb  # gpu extra
        except ImportError as e:
            raise ImportError("optimizer=adamw8bit needs bitsandbytes (CUDA): pip install bitsandbytes") from e
        return bnb.optim.AdamW8bit(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)


def _to(batch: Any, device: torch.device) -> Any:
    """Move a batch (tensors, Conds, tuples of them) to the training device."""
    if device.type == "cpu":
        return batch
    if isinstance(batch, (tuple, list)):
        return type(batch)(_to(b, device) for b in batch)
    return batch.to(device)


class TrainingLoop:
    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        batch_fn: Callable[[int], Any],
        config: LoopConfig,
        out_dir: str | Path,
        save_model_fn: Callable[[Path, nn.Module, int], None],
        sample_fn: Callable[[nn.Module, int, Path], None] | None = None,
        on_step: Callable[[int], None] | None = None,
        run_config: dict | None = None,
    ):
        self.device = torch.device(config.device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {config.device} requested but torch sees no CUDA GPU (torch {torch.__version__})")
        model = model.to(self.device)
        if hasattr(loss_fn, "to"):
            loss_fn.to(self.device)
        self.rank, self.world = ddp.world()
        ddp.broadcast_module(model)
        self.model, self.loss_fn, self.batch_fn, self.config = model, loss_fn, batch_fn, config
        self.out = Path(out_dir)
        self.save_model_fn, self.sample_fn, self.on_step = save_model_fn, sample_fn, on_step
        # frozen weights (a LoRA student's base) never change: the EMA model shares them instead of copying, and
        # they are neither averaged nor checkpointed
        self.frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
        shared = {id(p): p for p in model.parameters() if not p.requires_grad}
        self.ema = copy.deepcopy(model, memo=shared).eval().requires_grad_(False)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.opt = make_optimizer(config, self.params)
        amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(config.mixed_precision)
        self.autocast = torch.autocast(self.device.type, dtype=amp_dtype, enabled=amp_dtype is not None)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=config.mixed_precision == "fp16")
        self.step = 0
        self._bad = 0  # consecutive skipped steps
        self._pending: list[dict] = []
        # the caller's full config (data, model, method); a resume with other weight-changing values is refused
        self.run_config = run_config or {}
        self.health = HealthMonitor(config.grad_clip, config.warmup_steps, getattr(loss_fn, "monitor_loss", True))

    # ---- checkpoints -------------------------------------------------------------------------
    def _state_tensors(self) -> dict[str, torch.Tensor]:
        tensors = {f"model.{k}": v for k, v in self.model.state_dict().items() if k not in self.frozen}
        tensors.update({f"ema.{k}": v for k, v in self.ema.state_dict().items() if k not in self.frozen})
        if hasattr(self.loss_fn, "state_tensors"):
            tensors.update({f"loss.{k}": v for k, v in self.loss_fn.state_tensors().items()})
        tensors.update(optimizer_tensors(self.opt, "optim."))
        return tensors

    def save_checkpoint(self) -> None:
        if not ddp.is_main():  # one writer; the others wait so that nobody runs ahead of a checkpoint
            ddp.barrier()
            return
        self._flush_metrics()
        meta = {
            "step": self.step,
            "loop": asdict(self.config),
            "run": self.run_config,
            "param_groups": self.opt.state_dict()["param_groups"],
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
        }
        save_tensors(self.out / STATE_FILE, self._state_tensors(), meta)
        self.save_model_fn(self.out, self.ema, self.step)
        ddp.barrier()

    def load_checkpoint(self) -> None:
        path = self.out / STATE_FILE
        tensors, meta = load_tensors(path)
        diff = config_changes(meta, self.config, self.run_config)
        if diff:
            raise CheckpointError(
                f"{path} was trained with other settings {diff} (saved, now); resume with the same config"
            )
        pick = lambda prefix: {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}  # noqa: E731
        for name, module in (("model.", self.model), ("ema.", self.ema)):
            result = module.load_state_dict(pick(name), strict=False)
            missing = set(result.missing_keys) - self.frozen
            if missing or result.unexpected_keys:
                odd = sorted(missing or result.unexpected_keys)[0]
                raise CheckpointError(f"{path} holds another network than this run's (e.g. {odd})")
        if hasattr(self.loss_fn, "load_state_tensors"):
            self.loss_fn.load_state_tensors({k: v.to(self.device) for k, v in pick("loss.").items()})
        load_optimizer_tensors(self.opt, pick("optim."), meta["param_groups"])
        if meta.get("scaler") and self.scaler.is_enabled():
            self.scaler.load_state_dict(meta["scaler"])
        self.step = int(meta["step"])
        self._truncate_metrics()

    # ---- metrics -----------------------------------------------------------------------------
    def _flush_metrics(self) -> None:
        if self._pending and ddp.is_main():
            with open(self.out / METRICS_FILE, "a", encoding="utf-8") as f:
                f.writelines(json.dumps(m) + "\n" for m in self._pending)
            self._pending = []

    def _truncate_metrics(self) -> None:
        path = self.out / METRICS_FILE
        if path.is_file():
            keep = [json.dumps(m) for m in _parse_metrics(path) if m["step"] <= self.step]
            atomic_write_text(path, "".join(ln + "\n" for ln in keep))

    # ---- the loop ----------------------------------------------------------------------------
    def _lr(self, step: int) -> float:
        return self.config.lr * min(1.0, (step + 1) / max(1, self.config.warmup_steps))

    @torch.no_grad()
    def _update_ema(self, step: int) -> None:
        decay = min(self.config.ema_decay, (1 + step) / (10 + step))
        for e, p in zip(self.ema.parameters(), self.model.parameters(), strict=True):
            if p.requires_grad:
                e.lerp_(p, 1 - decay)
        for e, b in zip(self.ema.buffers(), self.model.buffers(), strict=True):
            e.copy_(b)

    def _skip(self, step: int, what: str) -> None:
        """A non-finite loss or gradient: the update is dropped, and repeated failures stop the run."""
        self.opt.zero_grad(set_to_none=True)
        self._bad += 1
        warnings.warn(f"step {step}: non-finite {what}, step skipped ({self._bad} in a row)", stacklevel=2)
        if self._bad >= self.config.max_bad_steps:
            raise TrainingDivergedError(
                f"{self._bad} consecutive non-finite steps at step {step}; the last good checkpoint in {self.out} "
                "is kept. Lower --lr or check the data."
            )

    def _train_step(self, step: int) -> dict[str, float] | None:
        """One optimizer update; None when the step was skipped."""
        cfg = self.config
        for g in self.opt.param_groups:
            g["lr"] = self._lr(step)
        with self.autocast:
            batch = _to(ddp.shard_batch(self.batch_fn(step), self.rank, self.world), self.device)
            loss, logs = self.loss_fn(self.model, batch, StepRandom(cfg.seed, step, self.rank, self.world))
        self.opt.zero_grad(set_to_none=True)
        if ddp.any_rank(not bool(torch.isfinite(loss))):  # every rank skips together, or the collectives hang
            self._skip(step, f"loss {loss.item()}")
            return None
        self.scaler.scale(loss).backward()
        ddp.all_reduce_grads(self.params)
        self.scaler.unscale_(self.opt)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, cfg.grad_clip if cfg.grad_clip > 0 else math.inf)
        if not self.scaler.is_enabled() and not torch.isfinite(grad_norm):
            self._skip(step, f"gradient norm {float(grad_norm)}")  # fp16's scaler skips such steps itself
            return None
        self.scaler.step(self.opt)
        self.scaler.update()
        self._update_ema(step)
        if hasattr(self.loss_fn, "after_step"):
            self.loss_fn.after_step(self.model)
        self._bad = 0
        return dict(logs, grad_norm=float(grad_norm))

    def _check_health(self, row: dict[str, float]) -> None:
        """Divergence, stall and clipping warnings from the logged row (`fewstep.compress.health`)."""
        if not ddp.is_main():
            return
        for warning in self.health.observe(row):
            warnings.warn(warning.line(), TrainingHealthWarning, stacklevel=2)
            append_warning(self.out, warning)

    def _replay_health(self) -> None:
        """A resumed run's monitor sees the rows logged before the kill; warnings already raised stay raised."""
        for row in read_metrics(self.out):
            self.health.observe(row)
        self.health.raised = {w.kind for w in read_health(self.out)}

    def run(self, resume: bool = False, progress: bool = True) -> nn.Module:
        """Train to `config.steps`; returns the EMA model. `resume` continues from `out/state.safetensors`."""
        cfg = self.config
        self.out.mkdir(parents=True, exist_ok=True)
        if ddp.is_main():
            remove_stale_temps(self.out)  # what a kill -9 during a checkpoint write left behind
        if (self.out / STATE_FILE).exists():
            if not resume:
                raise FileExistsError(
                    f"{self.out} already holds a run; pass --resume to continue it or choose another --out"
                )
            self.load_checkpoint()
            self._replay_health()
        else:
            if resume:
                warnings.warn(f"--resume: no checkpoint in {self.out} yet, starting a new run", stacklevel=2)
            (self.out / METRICS_FILE).unlink(missing_ok=True)  # metrics of a run that never reached a checkpoint
            (self.out / HEALTH_FILE).unlink(missing_ok=True)
        saved_step = self.step
        self.model.train()
        bar = tqdm(
            total=cfg.steps,
            initial=self.step,
            desc="train",
            disable=not progress or not ddp.is_main(),
            mininterval=1,
            smoothing=0.05,
        )
        window: list[dict[str, float]] = []
        started = time.time()
        while self.step < cfg.steps:
            step = self.step
            logs = self._train_step(step)
            self.step += 1
            bar.update(1)
            if logs is not None:
                window.append(logs)
                bar.set_postfix(loss=f"{logs.get('loss', float('nan')):.4f}", refresh=False)
            if window and (self.step % cfg.log_every == 0 or self.step == cfg.steps):
                avg = {k: sum(w[k] for w in window) / len(window) for k in window[0]}
                row = {"step": self.step, "lr": self._lr(step), "elapsed_s": round(time.time() - started, 2), **avg}
                self._pending.append(row)
                window = []
                self._check_health(row)
                if not progress and ddp.is_main():  # no bar (logs, CI, clusters): one line per log interval
                    print(f"step {self.step}/{cfg.steps} " + " ".join(f"{k}={v:.4g}" for k, v in row.items()
                                                                      if k != "step"), flush=True)  # fmt: skip
            if self.step % cfg.checkpoint_every == 0 or self.step == cfg.steps:
                self.save_checkpoint()
                saved_step = self.step
            if (
                self.sample_fn
                and ddp.is_main()
                and cfg.sample_every
                and (self.step % cfg.sample_every == 0 or self.step == cfg.steps)
            ):
                self.sample_fn(self.ema, self.step, self.out / "samples")
            if self.on_step:
                self.on_step(self.step)
        bar.close()
        if saved_step != self.step:
            self.save_checkpoint()
        self._flush_metrics()
        return self.ema


def _parse_metrics(path: Path) -> list[dict]:
    """metrics.jsonl rows; a line cut short by a crash mid-append is dropped, not fatal."""
    rows = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and "step" in row:
            rows.append(row)
    return rows


def read_metrics(out_dir: str | Path) -> list[dict]:
    path = Path(out_dir) / METRICS_FILE
    return _parse_metrics(path) if path.is_file() else []


def plot_training_curve(out_dir: str | Path, key: str = "loss") -> Path | None:
    """`training_curve.png` (log-scale loss vs step) from metrics.jsonl."""
    rows = [r for r in read_metrics(out_dir) if key in r]
    if not rows:
        return None
    import matplotlib  # train extra

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # train extra

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot([r["step"] for r in rows], [r[key] for r in rows], lw=1)
    ax.set(xlabel="step", ylabel=key, yscale="log", title=f"training {key}")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(out_dir) / "training_curve.png"
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
    return path
