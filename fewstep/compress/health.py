"""Training health: divergence, stalls and saturated gradient clipping, read from the logged loss and gradient norm
while a run trains. A warning says what was seen, since when, and what to try; each kind is raised once per run.

The rules compare windows of logged rows (each row already averages `log_every` steps):
- rising: the last window's mean loss is over `rise_factor` x the lowest window mean so far (a run that diverges
  slowly, below the non-finite check);
- stalled: after the warm-up, the last window's mean loss is still at least `stall_fraction` of the first
  post-warm-up window's, once `stall_windows` windows have passed (the loss has not moved);
- clipped: the median gradient norm of the last window is over `clip_factor` x `--grad-clip`: every update is
  clipped to a small part of its size, so the step the optimizer takes no longer follows `--lr`.
A loss that is not meant to decrease (DMD's generator loss is a distribution-matching surrogate, and the fake
score chases the generator) sets `monitor_loss = False` on its loss function: only the clipping rule applies.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path

HEALTH_FILE = "health.jsonl"
KINDS = ("rising", "stalled", "clipped")


@dataclass(frozen=True)
class HealthWarning:
    kind: str  # one of KINDS
    step: int
    message: str

    def line(self) -> str:
        return f"step {self.step}: {self.kind}: {self.message}"


@dataclass
class HealthMonitor:
    """Feed it every logged row (`observe`); it returns the warnings that row raises."""

    grad_clip: float
    warmup_steps: int = 0
    monitor_loss: bool = True
    window: int = 10  # logged rows per window
    rise_factor: float = 3.0
    stall_fraction: float = 0.97
    stall_windows: int = 4
    clip_factor: float = 20.0

    def __post_init__(self) -> None:
        self.losses: list[float] = []
        self.steps: list[int] = []
        self.grad_norms: list[float] = []
        self.best = float("inf")
        self.raised: set[str] = set()

    def observe(self, row: dict[str, float]) -> list[HealthWarning]:
        step = int(row["step"])
        if "loss" in row and row["step"] > self.warmup_steps:
            self.losses.append(float(row["loss"]))
            self.steps.append(step)
        if "grad_norm" in row:
            self.grad_norms.append(float(row["grad_norm"]))
        found = [w for w in (self._rising(step), self._stalled(step), self._clipped(step)) if w is not None]
        self.raised.update(w.kind for w in found)
        return found

    def _rising(self, step: int) -> HealthWarning | None:
        if not self.monitor_loss or "rising" in self.raised or len(self.losses) < self.window:
            return None
        last = statistics.fmean(self.losses[-self.window :])
        self.best = min(self.best, last)
        if self.best > 0 and last > self.rise_factor * self.best:
            return HealthWarning("rising", step, (
                f"the loss ({last:.4g}, mean of the last {self.window} logged rows) is {last / self.best:.1f}x its "
                f"lowest ({self.best:.4g}): training is diverging. Lower --lr (by 3x), or resume from an earlier "
                "checkpoint with a lower --lr."))  # fmt: skip
        return None

    def _stalled(self, step: int) -> HealthWarning | None:
        if not self.monitor_loss or "stalled" in self.raised or len(self.losses) < self.stall_windows * self.window:
            return None
        first = statistics.fmean(self.losses[: self.window])
        last = statistics.fmean(self.losses[-self.window :])
        if first > 0 and last >= self.stall_fraction * first:
            return HealthWarning("stalled", step, (
                f"the loss has not decreased since step {self.steps[0]} ({first:.4g} then, {last:.4g} now). The "
                "student may not be learning: look at OUT/samples, try a lower --lr or a larger --batch-size, and "
                "check that the teacher and its guidance are right."))  # fmt: skip
        return None

    def _clipped(self, step: int) -> HealthWarning | None:
        if "clipped" in self.raised or self.grad_clip <= 0 or len(self.grad_norms) < self.window:
            return None
        median = statistics.median(self.grad_norms[-self.window :])
        if median > self.clip_factor * self.grad_clip:
            return HealthWarning("clipped", step, (
                f"the gradient norm before clipping is {median:.3g} (median of the last {self.window} logged rows), "
                f"{median / self.grad_clip:.0f}x --grad-clip {self.grad_clip:g}: every update is clipped, so the "
                "loss is far from what the recipe expects. Check the data's scale and the teacher, then lower --lr."
            ))  # fmt: skip
        return None


def append_warning(out_dir: Path, warning: HealthWarning) -> None:
    """One JSON line per warning in OUT/health.jsonl (read by `read_health`)."""
    with open(Path(out_dir) / HEALTH_FILE, "a", encoding="utf-8") as f:
        f.write(json.dumps(asdict(warning)) + "\n")


def read_health(out_dir: str | Path) -> list[HealthWarning]:
    path = Path(out_dir) / HEALTH_FILE
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(HealthWarning(**json.loads(line)))
        except (ValueError, TypeError):
            continue  # a line cut short by a kill mid-append
    return out
