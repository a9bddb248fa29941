"""What every method's run shares: the teacher, its text encoder, the student's architecture and fresh
students, the training data (pairs or encoded images), checkpoint specs, sample grids, and running one stage
of the ONE training loop."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from fewstep import __version__
from fewstep.compress import distributed as ddp
from fewstep.compress.data import EncodedDataset
from fewstep.compress.distill_config import DistillConfig
from fewstep.compress.memory_estimate import MemoryEstimate, refuse_if_too_big
from fewstep.compress.memory_estimate import estimate as estimate_memory
from fewstep.compress.pairs import PairCache
from fewstep.compress.students import INITS, build_student, init_student, same_architecture, student_architecture
from fewstep.compress.trainer import LoopConfig, TrainingLoop, check_resumable, plot_training_curve
from fewstep.core.config import to_dict
from fewstep.core.imaging import captioned_grid, save_png, to_uint8
from fewstep.models.checkpoint import CheckpointError
from fewstep.models.datasets import make_dataset
from fewstep.models.diffusers_dir import decoded_size, load_codec
from fewstep.models.loading import load_model, model_sha256, resolve_checkpoint, save_model
from fewstep.models.lora import add_lora, base_reference
from fewstep.models.model_kinds import network_of
from fewstep.models.pipeline import TorchPipeline, resolve_guidance, sampling_times
from fewstep.models.samplers import uniform_timesteps
from fewstep.models.text_encoders import load_text_encoder

SAMPLE_PROMPTS = [
    "a red circle",
    "a large blue square on a white background",
    "a green triangle to the left of a yellow cross",
    "a small purple circle at the bottom right",
]


def baked(scale: float) -> dict[str, Any]:
    """The guidance section of a student that has CFG at `scale` baked in (one pass per step, no scale to choose)."""
    return {"mode": "none", "baked_scale": scale}


def euler_times(k: int) -> list[float]:
    """The k-step Euler schedule a student samples with, as JSON-friendly numbers."""
    return [round(float(t), 6) for t in uniform_timesteps(k)]


class DistillSession:
    """Shared set-up of every method: teacher, text encoder, student architecture, data, specs, samples."""

    def __init__(self, cfg: DistillConfig, method: str, out: Path):
        self.cfg, self.method, self.out = cfg, method, out
        self.teacher_path = resolve_checkpoint(cfg.teacher)
        self.teacher, self.teacher_spec = load_model(self.teacher_path)
        self.teacher_sha256 = model_sha256(self.teacher_path)
        self.encoder = load_text_encoder(self.teacher_spec["text_encoder"])
        self.null = self.encoder.null(1)
        self.arch = student_architecture(cfg.student, self.teacher_spec, cfg.student_guidance_dim)
        self.same_arch = same_architecture(self.arch, self.teacher_spec)
        self.memory = self._check_memory()
        self.codec = load_codec(self.teacher_spec)  # latent teachers: the VAE that encodes training images
        self.init = cfg.auto_init(self.same_arch)
        self.init_checkpoint = self._load_init_checkpoint() if self.init not in INITS else None
        self.name = cfg.name or f"{self.teacher_spec.get('name', 'teacher')}-{method}-{cfg.student}"
        self._pairs: PairCache | None = None
        self._data: EncodedDataset | None = None

    def _check_memory(self) -> MemoryEstimate:
        """Refuse before training allocates anything when the run cannot fit this machine's memory."""
        with torch.device("meta"):  # the student's size without allocating it
            student = sum(p.numel() for p in build_student(self.arch).parameters())
        teacher = sum(p.numel() for p in self.teacher.parameters())
        rank = self.cfg.lora_rank
        # LoRA adapters: ~0.12% of an SD UNet's parameters per unit of rank (LCM-LoRA's rank 64: 67.5M of 860M)
        trainable = int(student * 0.0012 * rank) if rank else student
        image = self.teacher_spec["image"]
        est = estimate_memory(self.method, teacher, student, trainable, self.cfg.batch_size,
                              int(image["height"]) * int(image["width"]), self.cfg.gradient_checkpointing,
                              self._companion_params())  # fmt: skip
        refuse_if_too_big(est, f"fewstep distill {self.method} at batch {self.cfg.batch_size}", bool(rank),
                          self.cfg.gradient_checkpointing, self.cfg.batch_size)  # fmt: skip
        return est

    def _companion_params(self) -> int:
        """Parameters of the text encoders and VAE a pipeline teacher holds beside its denoiser (0 for built-in
        teachers, whose small text encoder the estimate's fixed overhead covers)."""
        pipe = getattr(self.encoder, "pipe", None)
        if pipe is None:
            return 0
        modules = [m for m in pipe.components.values() if isinstance(m, torch.nn.Module)]  # the denoiser is not one
        return sum(p.numel() for m in modules for p in m.parameters())

    # ---- inputs ------------------------------------------------------------------------------
    @property
    def pairs(self) -> PairCache:
        """The pair cache of `--pairs` (methods with the pairs input), checked against the teacher."""
        if self._pairs is None:
            where = getattr(self.cfg, "pairs", None)
            self._pairs = PairCache.open(where)
            key = self._pairs.key
            if key["teacher_sha256"] != self.teacher_sha256 and not self.pairs_from_another_teacher:
                raise CheckpointError(
                    f"pairs in {where} were made by another teacher than {self.cfg.teacher}; "
                    "build pairs with this teacher (instaflow alone may use a reflowed teacher's pairs)"
                )
            if self._pairs.meta["text_encoder"] != self.teacher_spec["text_encoder"]:
                raise CheckpointError(f"pairs in {where} use another text encoder than the teacher")
        return self._pairs

    @property
    def pairs_from_another_teacher(self) -> bool:
        return self.method == "instaflow"  # its pairs may come from a reflowed teacher

    @property
    def data(self) -> EncodedDataset:
        """The training images (methods with the dataset input), rendered and encoded once into the run."""
        if self._data is None:
            c = self.cfg
            size = decoded_size(self.teacher_spec)
            ds = make_dataset(c.dataset, size, c.data_seed, c.dataset_size, c.data_path)  # type: ignore[attr-defined]
            self._data = EncodedDataset.build(ds, self.encoder, cache=self.out / "data_cache.safetensors",
                                              codec=self.codec)  # fmt: skip
        return self._data

    def pair_batch(self, step: int) -> Any:
        return self.pairs.batch(step, self.cfg.batch_size, self.cfg.seed)

    def data_batch(self, step: int) -> Any:
        return self.data.batch(step, self.cfg.batch_size, self.cfg.seed)

    def pairs_scale(self) -> float:
        """The CFG scale of the teacher's ODE solutions in the pair cache (baked into pair-trained students)."""
        return float(self.pairs.key["guidance"])

    # ---- students ----------------------------------------------------------------------------
    def new_student(self, init: str | None = None, source: torch.nn.Module | None = None,
                    source_path: Path | None = None) -> tuple[torch.nn.Module, dict[str, Any]]:  # fmt: skip
        """A fresh student initialised from `source` (default: the teacher, read from `source_path`)."""
        torch.manual_seed(self.cfg.seed)
        student = build_student(self.arch)
        how = init or self.init
        if how not in INITS:  # the student checkpoint given as --init (copied like a same-size teacher)
            assert self.init_checkpoint is not None
            model, path, sha = self.init_checkpoint
            report = {**init_student(student, model, "teacher"), "init": "checkpoint", "checkpoint": str(path),
                      "checkpoint_sha256": sha}  # fmt: skip
            return student, report
        source = source if source is not None else self.teacher
        report = init_student(student, source, how)
        if self.cfg.lora_rank:
            report["lora"] = self._add_lora(student, source, source_path or self.teacher_path)
        if self.cfg.gradient_checkpointing:
            network_of(student).enable_gradient_checkpointing()
        return student, report

    def _load_init_checkpoint(self) -> tuple[torch.nn.Module, Path, str]:
        """--init CHECKPOINT: a model with the student's network and the teacher's text encoder, or a clear error."""
        path = resolve_checkpoint(self.init)
        model, spec = load_model(path)
        if spec["kind"] != self.arch["kind"] or not same_architecture(self.arch, spec):  # load_model built it
            raise CheckpointError(f"--init {self.init}: its network is not the student's ({self.cfg.student!r}); "
                                  "pass a checkpoint of the same architecture or --student matching it")  # fmt: skip
        if spec["text_encoder"] != self.teacher_spec["text_encoder"]:
            raise CheckpointError(f"--init {self.init}: it reads another text encoder than the teacher")
        return model, path, model_sha256(path)

    def _add_lora(self, student: torch.nn.Module, source: torch.nn.Module, source_path: Path) -> dict[str, Any]:
        """Freeze the student, attach adapters; -> the spec's `lora` section (base = the source model)."""
        known = set(source.state_dict())
        extra = [n for n, _ in student.named_parameters() if n not in known]  # e.g. the guidance w projection
        alpha = self.cfg.lora_alpha or float(self.cfg.lora_rank)
        add_lora(student, self.arch, self.cfg.lora_rank, alpha, extra)
        is_teacher = source is self.teacher
        return {"rank": self.cfg.lora_rank, "alpha": alpha, "extra": extra,
                "base": base_reference(self.cfg.teacher if is_teacher else str(source_path), source_path),
                "base_sha256": self.teacher_sha256 if is_teacher else model_sha256(source_path)}  # fmt: skip

    def spec(self, step: int, rule: str, times: list[float], guidance: dict[str, Any],
             extra: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
        """The student checkpoint's spec at `step`: its network, sampler rule and schedule, how it was trained."""
        img = self.teacher_spec["image"]
        sampler = {"rule": rule, "timesteps": times, "default_steps": len(times) - (rule != "consistency"),
                   "guidance": guidance, **extra.pop("sampler", {})}  # fmt: skip
        init = extra.get("init")
        lora = init.get("lora") if isinstance(init, dict) else None
        return {
            **self.arch,
            **({"lora": lora} if lora else {}),
            "name": self.name,
            "role": "student",
            "preset": self.cfg.student,
            "text_encoder": self.teacher_spec["text_encoder"],
            "image": img,
            **({"latent": self.teacher_spec["latent"]} if "latent" in self.teacher_spec else {}),
            "sampler": sampler,
            "training": {
                "method": self.method,
                "step": step,
                "teacher": self.teacher_spec.get("name"),
                "teacher_sha256": self.teacher_sha256,
                "teacher_params": sum(p.numel() for p in self.teacher.parameters()),
                "pairs": self._pairs.key if self._pairs is not None else None,
                "config": to_dict(self.cfg),
                **extra,
            },
            "created_by": {"fewstep": __version__, "command": f"fewstep distill {self.method}"},
        }

    def sampler_fn(self, spec_fn):  # type: ignore[no-untyped-def]
        """Sample grids of the EMA student with its own sampler rule (a function of the step's spec)."""
        cond = self.encoder.encode(SAMPLE_PROMPTS)
        seeds = list(range(6))

        def sample(ema: torch.nn.Module, step: int, where: Path) -> None:
            spec = spec_fn(step)
            dev = next(ema.parameters()).device
            pipe = TorchPipeline(ema.to("cpu"), spec, self.encoder, self.codec)
            times, w = sampling_times(spec, None), resolve_guidance(spec, None)
            rows = [pipe.sample(cond.index(slice(i, i + 1)).repeat(len(seeds)), seeds, times, w)
                    for i in range(len(SAMPLE_PROMPTS))]  # fmt: skip
            ema.to(dev)
            images = to_uint8(pipe.decode(torch.cat(rows)).numpy())
            save_png(captioned_grid(images, SAMPLE_PROMPTS, nrow=len(seeds)), where / f"step_{step:07d}.png")

        return sample

    def run_loop(self, model, loss, batch_fn, loop: LoopConfig, out: Path, spec_fn, resume: bool,  # type: ignore[no-untyped-def]
                 progress: bool) -> Path:  # fmt: skip
        """Train one stage into `out` (a finished stage is skipped on --resume); -> the saved student's file.
        A next stage that needs the network loads it (`load_model`) after dropping this stage's: loading it here,
        beside the trained student and its EMA, held one SD-size copy more at the end of every run."""
        check_resumable(out, loop, to_dict(self.cfg), resume)
        out.mkdir(parents=True, exist_ok=True)

        def save(where: Path, ema: torch.nn.Module, step: int) -> None:
            save_model(where / "model.safetensors", ema, spec_fn(step))

        TrainingLoop(model, loss, batch_fn, loop, out, save, self.sampler_fn(spec_fn), run_config=to_dict(self.cfg)
                     ).run(resume=resume, progress=progress)  # fmt: skip
        if ddp.is_main():
            plot_training_curve(out)
        ddp.barrier()
        return out / "model.safetensors"
