"""`fewstep distill METHOD`: build the student, the method's loss and its batches, then run the ONE loop.

Methods (METHODS.md): reflow, slimflow (annealing reflow, then flow-guided distillation), instaflow,
guidance, consistency, progressive (rounds of halving) and dmd. Methods that learn from trajectory pairs
read a pair cache (`fewstep pairs`); the others query the teacher online on dataset images.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from fewstep import __version__
from fewstep.compress import distributed as ddp
from fewstep.compress.data import EncodedDataset
from fewstep.compress.methods.consistency import ConsistencyLoss
from fewstep.compress.methods.dmd import DMDLoss
from fewstep.compress.methods.guidance import GuidanceDistillLoss
from fewstep.compress.methods.instaflow import InstaFlowLoss
from fewstep.compress.methods.progressive import ProgressiveLoss
from fewstep.compress.methods.reflow import ReflowLoss
from fewstep.compress.methods.slimflow import AnnealingReflowLoss, FlowGuidedLoss
from fewstep.compress.pairs import PairCache
from fewstep.compress.students import INITS, build_student, init_student, same_architecture, student_architecture
from fewstep.compress.trainer import LoopConfig, TrainingLoop, check_resumable, loop_config, plot_training_curve
from fewstep.core.config import to_dict, to_yaml
from fewstep.core.fsio import atomic_write, atomic_write_text
from fewstep.core.imaging import captioned_grid, save_png, to_uint8
from fewstep.models.checkpoint import CheckpointError
from fewstep.models.datasets import make_dataset
from fewstep.models.diffusers_dir import decoded_size, load_codec
from fewstep.models.loading import SHIPPED, load_model, model_sha256, resolve_checkpoint, save_model
from fewstep.models.lora import add_lora, base_reference
from fewstep.models.model_kinds import network_of
from fewstep.models.pipeline import TorchPipeline, resolve_guidance, sampling_times
from fewstep.models.samplers import consistency_timesteps, uniform_timesteps
from fewstep.models.text_encoders import load_text_encoder

METHODS = ("reflow", "slimflow", "instaflow", "guidance", "consistency", "progressive", "dmd")
PAIR_METHODS = ("reflow", "slimflow", "instaflow", "dmd")
SAMPLE_PROMPTS = [
    "a red circle",
    "a large blue square on a white background",
    "a green triangle to the left of a yellow cross",
    "a small purple circle at the bottom right",
]


@dataclass(frozen=True)
class DistillConfig:
    method: str = "reflow"  # reflow | slimflow | instaflow | guidance | consistency | progressive | dmd
    name: str = ""  # model name written into the checkpoint (default: TEACHER-METHOD-STUDENT)
    teacher: str = "shapes32-teacher"  # checkpoint path or shipped name
    student: str = "student-s"  # network preset of the student (`fewstep info`), or 'same' = teacher's
    init: str = "auto"  # scratch | teacher | sliced | auto (teacher when same size, else sliced; slimflow: scratch)
    # | a student checkpoint of the student's architecture (a .safetensors path, run dir or shipped name)
    pairs: str | None = None  # pair cache directory (reflow, slimflow, instaflow, dmd); see `fewstep pairs`
    dataset: str = "shapes"  # training images for guidance, consistency, progressive: shapes | digits | imagefolder
    data_path: str | None = None  # imagefolder only
    dataset_size: int = 10000  # shapes images (rendered and encoded once, cached in the run directory)
    data_seed: int = 0
    guidance: float = 3.0  # teacher CFG scale where the teacher is queried online (consistency, progressive, dmd)
    student_steps: int = 1  # steps the student samples with (instaflow's k; progressive's final count; dmd > 1: DMD2
    # multi-step generator on the consistency grid, trained by backward simulation; slimflow > 1: stage 2 distils
    # for k Euler steps instead of the paper's one)
    steps: int = 2000  # optimizer steps (slimflow: stage 1; progressive: per round)
    batch_size: int = 32  # global batch (split over torchrun processes)
    lr: float = 2e-4
    warmup_steps: int = 100
    ema_decay: float = 0.999
    grad_clip: float = 1.0
    checkpoint_every: int = 250
    sample_every: int = 500
    seed: int = 0
    device: str = "cpu"  # cpu | cuda | cuda:N
    mixed_precision: str = "no"  # no | bf16 | fp16 (GPUs only)
    optimizer: str = "adamw"  # adamw | adamw8bit (bitsandbytes 8-bit AdamW, CUDA only)
    # memory savers for large teachers
    lora_rank: int = 0  # > 0: train rank-r LoRA adapters (peft) on the teacher's frozen network (--student same)
    lora_alpha: float = 0.0  # LoRA scale numerator alpha (adapter scale alpha / rank); 0 = rank
    gradient_checkpointing: bool = False  # recompute activations in backward: less memory, ~30% more time
    distance: str = "pseudo_huber"  # pseudo_huber | l2, for the methods that regress images
    t_sampling: str = "uniform"  # uniform | logit_normal (reflow, slimflow stage 1, guidance)
    # slimflow
    anneal_steps: int = 1000  # K of beta(k); beta reaches 0 at step K (linear)
    anneal_schedule: str = "linear"  # linear | exponential | cosine
    stage2_steps: int = 1000  # flow-guided distillation steps
    tau_min: float = 0.2
    tau_max: float = 0.8
    # guidance
    w_min: float = 1.0  # guidance scales the student learns, w ~ U[w_min, w_max]
    w_max: float = 6.0
    guidance_dim: int = 64  # width of the sinusoidal w embedding (time_cond_proj_dim)
    then_progressive: bool = False  # guidance: then stage 2 of Meng et al., w-conditioned progressive distillation
    # from start_steps down to student_steps (--steps per stage; one pass per step at any w in [w_min, w_max])
    # consistency
    grid: int = 50  # N teacher steps over [0, 1]
    skip: int = 5  # k grid steps per teacher ODE step
    target_decay: float = 0.95  # EMA decay of the target network (LCM)
    teacher_solver: str = "euler"  # euler | heun for the teacher's ODE step
    # progressive
    start_steps: int = 32  # the first round's teacher steps; rounds halve down to student_steps
    # dmd
    reg_weight: float = 0.25  # regression loss weight (0 = DMD2)
    fake_updates: int = 1  # fake-score updates per generator update (DMD2: 5)
    fake_lr: float = 1e-4
    adv_weight: float = 0.0  # adversarial term weight (0 = off)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}")
        if self.init not in (*INITS, "auto") and not is_checkpoint_reference(self.init):
            raise ValueError(f"init must be one of {', '.join(INITS)}, auto or a student checkpoint (.safetensors "
                             f"file, run directory or shipped name); got {self.init!r}")  # fmt: skip
        if self.lora_rank < 0:
            raise ValueError(f"lora_rank must be >= 0 (0 = train every weight); got {self.lora_rank}")
        if self.lora_rank and (self.student != "same" or self.init not in ("teacher", "auto")):
            raise ValueError("a LoRA student is the teacher's own network plus adapters: use --student same "
                             "(and --init teacher or auto)")  # fmt: skip
        if self.student_steps < 1:
            raise ValueError(f"student_steps must be >= 1; got {self.student_steps}")
        if not 0.0 < self.tau_min <= self.tau_max < 1.0:  # checked here, not after a long SlimFlow stage 1
            raise ValueError(f"need 0 < tau_min <= tau_max < 1; got tau_min {self.tau_min}, tau_max {self.tau_max}")
        if self.then_progressive and self.method != "guidance":
            raise ValueError("--then-progressive is stage 2 of guidance distillation: use it with `distill guidance`")
        if self.method == "progressive" or self.then_progressive:
            n = self.start_steps
            while n > self.student_steps:
                n //= 2
            if n != self.student_steps or self.start_steps <= self.student_steps:
                raise ValueError(
                    f"progressive halves start_steps ({self.start_steps}) down to student_steps "
                    f"({self.student_steps}): use powers of two, e.g. 32 -> 2"
                )

    def loop(self, **changes) -> LoopConfig:
        return loop_config(self, **changes)


def is_checkpoint_reference(value: str) -> bool:
    """--init names a checkpoint (shipped name, .safetensors file or run directory) rather than a rule."""
    return value in SHIPPED or value.endswith(".safetensors") or "/" in value or Path(value).is_dir()


def _auto_init(cfg: DistillConfig, same_arch: bool) -> str:
    if cfg.init != "auto":
        return cfg.init
    if cfg.method == "slimflow":
        return "scratch"  # SlimFlow trains its small student from scratch in stage 1
    return "teacher" if same_arch else "sliced"


class Distiller:
    """Shared set-up of every method: teacher, text encoder, student architecture, data, specs, samples."""

    def __init__(self, cfg: DistillConfig, out: Path):
        self.cfg, self.out = cfg, out
        self.teacher_path = resolve_checkpoint(cfg.teacher)
        self.teacher, self.teacher_spec = load_model(self.teacher_path)
        self.teacher_sha256 = model_sha256(self.teacher_path)
        self.encoder = load_text_encoder(self.teacher_spec["text_encoder"])
        self.null = self.encoder.null(1)
        gdim = cfg.guidance_dim if cfg.method == "guidance" else None
        self.arch = student_architecture(cfg.student, self.teacher_spec, gdim)
        self.same_arch = same_architecture(self.arch, self.teacher_spec)
        self.codec = load_codec(self.teacher_spec)  # latent teachers: the VAE that encodes training images
        self.init = _auto_init(cfg, self.same_arch)
        self.init_checkpoint = self._load_init_checkpoint() if self.init not in INITS else None
        self.name = cfg.name or f"{self.teacher_spec.get('name', 'teacher')}-{cfg.method}-{cfg.student}"
        self._pairs: PairCache | None = None
        self._data: EncodedDataset | None = None

    # ---- inputs ------------------------------------------------------------------------------
    @property
    def pairs(self) -> PairCache:
        if self._pairs is None:
            self._pairs = PairCache.open(self.cfg.pairs)
            key = self._pairs.key
            if key["teacher_sha256"] != self.teacher_sha256 and self.cfg.method != "instaflow":
                raise CheckpointError(
                    f"pairs in {self.cfg.pairs} were made by another teacher than {self.cfg.teacher}; "
                    "build pairs with this teacher (instaflow alone may use a reflowed teacher's pairs)"
                )
            if self._pairs.meta["text_encoder"] != self.teacher_spec["text_encoder"]:
                raise CheckpointError(f"pairs in {self.cfg.pairs} use another text encoder than the teacher")
        return self._pairs

    @property
    def data(self) -> EncodedDataset:
        if self._data is None:
            size = decoded_size(self.teacher_spec)
            ds = make_dataset(self.cfg.dataset, size, self.cfg.data_seed, self.cfg.dataset_size, self.cfg.data_path)
            self._data = EncodedDataset.build(ds, self.encoder, cache=self.out / "data_cache.safetensors",
                                              codec=self.codec)  # fmt: skip
        return self._data

    def pair_batch(self, step: int):
        return self.pairs.batch(step, self.cfg.batch_size, self.cfg.seed)

    def data_batch(self, step: int):
        return self.data.batch(step, self.cfg.batch_size, self.cfg.seed)

    # ---- students ----------------------------------------------------------------------------
    def new_student(self, init: str | None = None, source: torch.nn.Module | None = None,
                    source_path: Path | None = None) -> tuple:  # fmt: skip
        """A fresh student initialised from `source` (default: the teacher, read from `source_path`)."""
        torch.manual_seed(self.cfg.seed)
        student = build_student(self.arch)
        how = init or self.init
        if how not in INITS:  # the student checkpoint given as --init (copied like a same-size teacher)
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

    def _add_lora(self, student: torch.nn.Module, source: torch.nn.Module, source_path: Path) -> dict:
        """Freeze the student, attach adapters; -> the spec's `lora` section (base = the source model)."""
        known = set(source.state_dict())
        extra = [n for n, _ in student.named_parameters() if n not in known]  # e.g. the guidance w projection
        alpha = self.cfg.lora_alpha or float(self.cfg.lora_rank)
        add_lora(student, self.arch, self.cfg.lora_rank, alpha, extra)
        is_teacher = source is self.teacher
        return {"rank": self.cfg.lora_rank, "alpha": alpha, "extra": extra,
                "base": base_reference(self.cfg.teacher if is_teacher else str(source_path), source_path),
                "base_sha256": self.teacher_sha256 if is_teacher else model_sha256(source_path)}  # fmt: skip

    def spec(self, step: int, rule: str, times: list[float], guidance: dict, extra: dict) -> dict:
        img = self.teacher_spec["image"]
        sampler = {"rule": rule, "timesteps": times, "default_steps": len(times) - (rule == "euler"),
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
                "method": self.cfg.method,
                "step": step,
                "teacher": self.teacher_spec.get("name"),
                "teacher_sha256": self.teacher_sha256,
                "teacher_params": sum(p.numel() for p in self.teacher.parameters()),
                "pairs": self._pairs.key if self._pairs is not None else None,
                "config": to_dict(self.cfg),
                **extra,
            },
            "created_by": {"fewstep": __version__, "command": f"fewstep distill {self.cfg.method}"},
        }

    def sampler_fn(self, spec_fn):
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

    def run_loop(self, model, loss, batch_fn, loop: LoopConfig, out: Path, spec_fn, resume: bool, progress: bool):
        """Train one stage into `out` (a finished stage is loaded, not retrained, on --resume)."""
        check_resumable(out, loop, to_dict(self.cfg), resume)
        out.mkdir(parents=True, exist_ok=True)

        def save(where: Path, ema: torch.nn.Module, step: int) -> None:
            save_model(where / "model.safetensors", ema, spec_fn(step))

        TrainingLoop(model, loss, batch_fn, loop, out, save, self.sampler_fn(spec_fn), run_config=to_dict(self.cfg)
                     ).run(resume=resume, progress=progress)  # fmt: skip
        if ddp.is_main():
            plot_training_curve(out)
        ddp.barrier()
        return load_model(out / "model.safetensors")[0]


def _none(scale: float) -> dict:
    return {"mode": "none", "baked_scale": scale}


def _euler_times(k: int) -> list[float]:
    """The k-step Euler schedule a student samples with, as JSON-friendly numbers."""
    return [round(float(t), 6) for t in uniform_timesteps(k)]


def distill(cfg: DistillConfig, out: str | Path, resume: bool = False, progress: bool = True) -> Path:
    """Run one method into `out`; returns `out/model.safetensors` (the final EMA student)."""
    out = Path(out)
    if cfg.method in PAIR_METHODS and not cfg.pairs and not (cfg.method == "dmd" and cfg.reg_weight == 0):
        raise ValueError(f"{cfg.method} learns from trajectory pairs: pass --pairs DIR (made by `fewstep pairs`)")
    ddp.init_from_env(cfg.device)
    multi_stage = cfg.method in ("slimflow", "progressive") or cfg.then_progressive
    if not multi_stage:
        check_resumable(out, cfg.loop(), to_dict(cfg), resume)  # before any expensive set-up
    elif not resume and (out / "config.yaml").exists():
        raise FileExistsError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    d = Distiller(cfg, out)
    if ddp.is_main():
        head = f"# fewstep {__version__} distill {cfg.method}, resolved config\n"
        atomic_write_text(out / "config.yaml", head + to_yaml(cfg))
    final = _RUNNERS[cfg.method](d, cfg, out, resume, progress)
    if ddp.is_main() and final != out / "model.safetensors":
        atomic_write(out / "model.safetensors", lambda tmp: shutil.copyfile(final, tmp))
    ddp.barrier()
    return out / "model.safetensors"


def _pairs_scale(d: Distiller) -> float:
    return float(d.pairs.key["guidance"])


def _run_reflow(d: Distiller, cfg: DistillConfig, out: Path, resume: bool, progress: bool) -> Path:
    student, report = d.new_student()
    times = _euler_times(cfg.student_steps)

    def spec(step):
        return d.spec(step, "euler", times, _none(_pairs_scale(d)), {"init": report, "train_times": "continuous"})

    d.run_loop(student, ReflowLoss(cfg.t_sampling), d.pair_batch, cfg.loop(), out, spec, resume, progress)
    return out / "model.safetensors"


def _run_instaflow(d: Distiller, cfg: DistillConfig, out: Path, resume: bool, progress: bool) -> Path:
    student, report = d.new_student()
    times = _euler_times(cfg.student_steps)

    def spec(step):
        return d.spec(step, "euler", times, _none(_pairs_scale(d)), {"init": report, "train_times": times[:-1]})

    loss = InstaFlowLoss(cfg.student_steps, cfg.distance)
    d.run_loop(student, loss, d.pair_batch, cfg.loop(), out, spec, resume, progress)
    return out / "model.safetensors"


def _run_slimflow(d: Distiller, cfg: DistillConfig, out: Path, resume: bool, progress: bool) -> Path:
    student, report = d.new_student()
    scale = _pairs_scale(d)
    times = _euler_times(cfg.student_steps)

    def spec1(step):
        extra = {"init": report, "stage": 1, "anneal_steps": cfg.anneal_steps, "train_times": "continuous"}
        return d.spec(step, "euler", times, _none(scale), extra)

    s1 = out / "stage1"
    loss1 = AnnealingReflowLoss(cfg.anneal_steps, cfg.anneal_schedule, cfg.t_sampling)
    guide = d.run_loop(student, loss1, d.pair_batch, cfg.loop(), s1, spec1, resume, progress)
    # stage 2 starts from the stage-1 student (a LoRA student: new adapters on the fused stage-1 network)
    student2, report2 = d.new_student("teacher", guide, s1 / "model.safetensors")
    report2["init"] = f"stage 1 ({report['init']})"

    def spec2(step):
        return d.spec(step, "euler", times, _none(scale), {"init": report2, "stage": 2, "train_times": times[:-1]})

    # student_steps > 1: stage 2 distils for that many Euler steps (fewstep's few-step form of the loss)
    loss2 = FlowGuidedLoss(guide, cfg.distance, (cfg.tau_min, cfg.tau_max), k=cfg.student_steps)
    s2 = out / "stage2"
    d.run_loop(student2, loss2, d.pair_batch, cfg.loop(steps=cfg.stage2_steps), s2, spec2, resume, progress)
    return s2 / "model.safetensors"


def _run_guidance(d: Distiller, cfg: DistillConfig, out: Path, resume: bool, progress: bool) -> Path:
    student, report = d.new_student()
    default = float(d.teacher_spec["sampler"]["guidance"].get("default_scale", 3.0))
    mode = {"mode": "embedded", "range": [cfg.w_min, cfg.w_max],
            "default_scale": min(max(default, cfg.w_min), cfg.w_max)}  # fmt: skip
    loss = GuidanceDistillLoss(d.teacher, d.null, cfg.w_min, cfg.w_max, cfg.t_sampling)
    if not cfg.then_progressive:
        # guidance distillation alone keeps the teacher's step count unless asked for fewer
        k = cfg.student_steps if cfg.student_steps > 1 else int(d.teacher_spec["sampler"].get("default_steps", 50))
        times = _euler_times(k)

        def spec(step):
            return d.spec(step, "euler", times, mode, {"init": report, "train_times": "continuous"})

        d.run_loop(student, loss, d.data_batch, cfg.loop(), out, spec, resume, progress)
        return out / "model.safetensors"
    # stage 1 into out/stage1, then w-conditioned progressive rounds from it (Meng et al. 2023, stage 2)
    s1, times1 = out / "stage1", _euler_times(cfg.start_steps)

    def spec1(step):
        return d.spec(step, "euler", times1, mode, {"init": report, "stage": 1, "train_times": "continuous"})

    stage1 = d.run_loop(student, loss, d.data_batch, cfg.loop(), s1, spec1, resume, progress)
    return _progressive_rounds(d, cfg, out, resume, progress, stage1, s1 / "model.safetensors", 1.0, None,
                               "teacher", mode, (cfg.w_min, cfg.w_max))  # fmt: skip


def _run_consistency(d: Distiller, cfg: DistillConfig, out: Path, resume: bool, progress: bool) -> Path:
    student, report = d.new_student()
    times = consistency_timesteps(cfg.student_steps, cfg.grid).tolist()

    def spec(step):
        return d.spec(step, "consistency", times, _none(cfg.guidance),
                      {"init": report, "train_times": f"grid {cfg.grid}", "sampler": {"grid": cfg.grid}})  # fmt: skip

    loss = ConsistencyLoss(d.teacher, d.null, cfg.guidance, cfg.grid, cfg.skip, cfg.target_decay, cfg.teacher_solver,
                           cfg.distance)  # fmt: skip
    loss.init_target(student)
    d.run_loop(student, loss, d.data_batch, cfg.loop(), out, spec, resume, progress)
    return out / "model.safetensors"


def _run_progressive(d: Distiller, cfg: DistillConfig, out: Path, resume: bool, progress: bool) -> Path:
    return _progressive_rounds(d, cfg, out, resume, progress, d.teacher, d.teacher_path, cfg.guidance, d.null,
                               d.init, _none(cfg.guidance), None)  # fmt: skip


def _progressive_rounds(d: Distiller, cfg: DistillConfig, out: Path, resume: bool, progress: bool,
                        teacher: torch.nn.Module, teacher_path: Path, guidance: float, null, init: str,
                        mode: dict, w_range: tuple[float, float] | None) -> Path:  # fmt: skip
    """Halve start_steps down to student_steps, each round's student the next round's teacher.

    `guidance`/`null`: CFG of the first teacher (baked into the first student); `w_range`: a w-conditioned
    teacher and student (guidance mode `embedded`, `mode` then names its range)."""
    n, r = cfg.start_steps, 1
    source, source_path = teacher, teacher_path
    stage = {"stage": 2} if w_range is not None else {}
    while n > cfg.student_steps:
        half = n // 2
        where = out / f"round{r}_{n}to{half}"
        student, report = d.new_student(init, source, source_path)
        times = _euler_times(half)

        def spec(step, times=times, report=report, n=n, r=r):
            extra = {"init": report, **stage, "round": r, "teacher_steps": n, "train_times": times[:-1]}
            return d.spec(step, "euler", times, mode, extra)

        loss = ProgressiveLoss(teacher, null, n, guidance, w_range)
        last = d.run_loop(student, loss, d.data_batch, cfg.loop(), where, spec, resume, progress)
        # the student is the next teacher; CFG is baked in after the first round
        teacher, guidance, null, source, init = last, 1.0, None, last, "teacher"
        source_path = where / "model.safetensors"
        n, r = half, r + 1
    return where / "model.safetensors"


def _run_dmd(d: Distiller, cfg: DistillConfig, out: Path, resume: bool, progress: bool) -> Path:
    student, report = d.new_student()
    if cfg.pairs:
        batch_fn = d.pair_batch
    else:  # DMD2 without regression: conditions come from the dataset, the pair slots stay empty

        def batch_fn(step):
            x0, cond = d.data_batch(step)
            return torch.randn(x0.shape, generator=torch.Generator().manual_seed(cfg.seed * 7919 + step)), x0, cond

    # k > 1: DMD2's multi-step generator, sampled with re-noising on the consistency grid
    multi = cfg.student_steps > 1
    gen_times = consistency_timesteps(cfg.student_steps, cfg.grid).tolist() if multi else [1.0]
    rule, times, sampler = ("consistency", gen_times, {"grid": cfg.grid}) if multi else ("euler", _euler_times(1), {})

    def spec(step):
        extra = {"init": report, "train_times": gen_times, "sampler": sampler}
        return d.spec(step, rule, times, _none(cfg.guidance), extra)

    loss = DMDLoss(d.teacher, d.null, cfg.guidance, cfg.reg_weight, cfg.fake_updates, cfg.fake_lr, cfg.adv_weight,
                   cfg.distance, times=tuple(gen_times))  # fmt: skip
    d.run_loop(student, loss, batch_fn, cfg.loop(), out, spec, resume, progress)
    return out / "model.safetensors"


_RUNNERS = {
    "reflow": _run_reflow,
    "slimflow": _run_slimflow,
    "instaflow": _run_instaflow,
    "guidance": _run_guidance,
    "consistency": _run_consistency,
    "progressive": _run_progressive,
    "dmd": _run_dmd,
}

__all__ = ["METHODS", "DistillConfig", "distill"]
