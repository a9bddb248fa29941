"""The settings every distillation method shares, and the inputs some of them read (`--pairs`, `--dataset`, ...).

A method's config (in its own module under `fewstep.compress.methods`) is `DistillConfig` plus the input
mixins it uses plus its own fields, so `fewstep distill METHOD --help` lists exactly what that method reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from fewstep.compress.students import INITS
from fewstep.compress.trainer import LoopConfig
from fewstep.core.config import ConfigError, inherit, param
from fewstep.models.loading import SHIPPED, resolve_checkpoint


def is_checkpoint_reference(value: str) -> bool:
    """--init names a checkpoint (shipped name, .safetensors file or run directory) rather than a rule."""
    return value in SHIPPED or value.endswith(".safetensors") or "/" in value or Path(value).is_dir()


@dataclass(frozen=True)
class DistillConfig(LoopConfig):
    """What every method reads: the teacher, the student's network and initialisation, and the training loop."""

    steps: int = inherit(LoopConfig, "steps", 2000)
    lr: float = inherit(LoopConfig, "lr", 2e-4)
    warmup_steps: int = inherit(LoopConfig, "warmup_steps", 100)
    sample_every: int = inherit(LoopConfig, "sample_every", 500)
    name: str = param("", "model name written into the checkpoint (default: TEACHER-METHOD-STUDENT)")
    teacher: str = param("shapes32-teacher", "the teacher: a checkpoint, run directory, shipped model name or local "
                         "diffusers pipeline directory", path="checkpoint")  # fmt: skip
    student: str = param("student-s", "the student's network: a preset (`fewstep info`), 'same' (the teacher's) or "
                         "a UNet2DConditionModel config .json", metavar="PRESET|same|JSON")  # fmt: skip
    init: str = param("auto", "the student's first weights: scratch, teacher, sliced (teacher weights cut to the "
                      "student's widths by channel importance), auto (teacher when the sizes match, else sliced), or "
                      "a student checkpoint of the student's architecture", metavar="RULE|CHECKPOINT")  # fmt: skip
    student_steps: int = param(1, "steps the student samples with", min=1, max=1000)
    lora_rank: int = param(0, "> 0: train rank-r LoRA adapters (peft) on the teacher's frozen network (needs "
                           "--student same); 0 trains every weight", min=0)  # fmt: skip
    lora_alpha: float = param(0.0, "LoRA scale numerator alpha (the adapter scale is alpha / rank); 0 = rank", min=0)
    gradient_checkpointing: bool = param(False, "recompute activations in backward: less memory, ~30% more time")
    verdict_prompts: int = param(128, "after training, the equal-steps verdict on this many held-out prompts: the "
                                 "student at its steps vs the teacher at as many and at its full steps (verdict.json); "
                                 "0 skips it", min=0, max=10_000)  # fmt: skip

    def check(self) -> None:
        super().check()
        if self.init not in (*INITS, "auto") and not is_checkpoint_reference(self.init):
            raise ConfigError(f"init must be one of {', '.join(INITS)}, auto or a student checkpoint (.safetensors "
                              f"file, run directory or shipped name); got {self.init!r}", "init")  # fmt: skip
        if self.lora_rank and (self.student != "same" or self.init not in ("teacher", "auto")):
            raise ConfigError("a LoRA student is the teacher's own network plus adapters: use --student same "
                              "(and --init teacher or auto)", "lora_rank")  # fmt: skip

    def auto_init(self, same_architecture: bool) -> str:
        """The init rule `auto` stands for (a method may start from scratch instead)."""
        if self.init != "auto":
            return self.init
        return "teacher" if same_architecture else "sliced"

    @property
    def student_guidance_dim(self) -> int | None:
        """Width of a guidance input the student gets (guidance distillation), else None."""
        return None

    @property
    def multi_stage(self) -> bool:
        """True when the method trains several loops, each in a subdirectory of the run."""
        return False

    def check_ready(self) -> None:
        """Before any set-up: every file and directory it names exists (a one-line error otherwise)."""
        self.check_paths()
        resolve_checkpoint(self.teacher)
        if self.student.endswith(".json") and not Path(self.student).is_file():
            raise ConfigError(f"student config {self.student} does not exist", "student")
        if self.init not in (*INITS, "auto"):
            resolve_checkpoint(self.init)


@dataclass(frozen=True)
class PairInput:
    """Methods that learn from the teacher's trajectory pairs."""

    pairs: str | None = param(None, "trajectory-pair cache directory, made by `fewstep pairs`", path="dir")

    def check_ready(self) -> None:
        if not self.pairs:
            raise ConfigError("this method learns from trajectory pairs: pass --pairs DIR (made by `fewstep pairs`)",
                              "pairs")  # fmt: skip
        super().check_ready()  # type: ignore[misc]


@dataclass(frozen=True)
class ImageInput:
    """Methods that query the teacher online on training images."""

    dataset: Literal["shapes", "digits", "imagefolder"] = param("shapes", "training images")
    data_path: str | None = param(None, "imagefolder only: a folder with metadata.jsonl", path="dir")
    dataset_size: int = param(10000, "shapes images (rendered and encoded once, cached in the run directory)", min=1)
    data_seed: int = param(0, "which shapes images", min=0)

    def check(self) -> None:
        super().check()  # type: ignore[misc]
        if self.dataset == "imagefolder" and not self.data_path:
            raise ConfigError("dataset imagefolder needs --data-path FOLDER (with metadata.jsonl)", "data_path")


@dataclass(frozen=True)
class TeacherGuidance:
    """Methods that query the teacher with classifier-free guidance and bake it into the student."""

    guidance: float = param(3.0, "the teacher's CFG scale, baked into the student", min=0, max=30)


@dataclass(frozen=True)
class Regression:
    """Methods that regress the student's images onto targets."""

    distance: Literal["pseudo_huber", "l2"] = param("pseudo_huber", "distance between the student's images and "
                                                    "their targets (pseudo-Huber: Song & Dhariwal 2024)")  # fmt: skip


@dataclass(frozen=True)
class TimeSampling:
    """Methods that draw training times t on [0, 1]."""

    t_sampling: Literal["uniform", "logit_normal"] = param("uniform", "how training times are drawn (logit_normal: "
                                                           "SD3's, more mass mid-path)")  # fmt: skip


@dataclass(frozen=True)
class StepSizeInput:
    """Methods whose student takes its step size as an input (the `interval` sampling rule: MeanFlow, shortcut)."""

    interval_dim: int = param(64, "width of the student's sinusoidal embedding of its step size (time_cond_proj_dim)",
                              min=2)  # fmt: skip

    @property
    def student_guidance_dim(self) -> int | None:
        return self.interval_dim
