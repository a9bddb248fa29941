"""`fewstep train-teacher`: a flow-matching teacher on a captioned dataset (docs/concepts/methods/teacher.md)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from fewstep import __version__
from fewstep.compress.data import EncodedDataset
from fewstep.compress.flow_matching import FlowMatchingLoss
from fewstep.compress.trainer import LoopConfig, TrainingLoop, check_resumable, plot_training_curve
from fewstep.core.config import ConfigError, param, to_dict, to_yaml
from fewstep.core.fsio import atomic_write_text
from fewstep.core.imaging import captioned_grid, save_png, to_uint8
from fewstep.models.checkpoint import CheckpointError, read_meta
from fewstep.models.datasets import make_dataset
from fewstep.models.loading import load_model, model_sha256, resolve_checkpoint, save_model
from fewstep.models.presets import get_preset
from fewstep.models.samplers import euler, seeded_noise, uniform_timesteps
from fewstep.models.text_encoders import TextEncoder, clip_from_dir, minilm
from fewstep.models.unet_flow import build_unet_flow

SAMPLE_PROMPT_SEED = 12345  # held-out captions for the sample grids


@dataclass(frozen=True)
class TeacherConfig(LoopConfig):
    """A flow-matching teacher: its data, network, text encoder and training (docs/concepts/methods/teacher.md)."""

    name: str = param("shapes32-teacher", "model name written into the checkpoint")
    dataset: Literal["shapes", "digits", "imagefolder"] = param("shapes", "training images")
    data_path: str | None = param(None, "imagefolder only: a folder with metadata.jsonl", path="dir")
    dataset_size: int = param(30000, "images drawn from `shapes` (the others use their whole folder / set)", min=1)
    data_seed: int = param(0, "which shapes images; evaluation uses other seeds", min=0)
    preset: str = param("teacher", "network preset (`fewstep info` lists them)")
    text_encoder: str = param("minilm", "'minilm' (offline, shipped) or a local CLIP directory (transformers "
                              "format)", metavar="minilm|DIR")  # fmt: skip
    max_tokens: int = param(32, "prompt length in tokens, special tokens included", min=2)
    cond_dropout: float = param(0.1, "probability of training on the empty prompt, for classifier-free guidance",
                                min=0, max=1)  # fmt: skip
    t_sampling: Literal["logit_normal", "uniform"] = param(
        "logit_normal", "how training times are drawn (logit_normal: more training mid-path, where layout is decided)"
    )
    init: str | None = param(None, "start from this teacher checkpoint's weights (a fine-tune); same preset "
                             "required", path="checkpoint")  # fmt: skip
    sample_guidance: float = param(3.0, "CFG scale of the sample grids and the checkpoint's default", min=0, max=30)
    sample_steps: int = param(25, "Euler steps of the sample grids", min=1)

    def check(self) -> None:
        super().check()
        if self.dataset == "imagefolder" and not self.data_path:
            raise ConfigError("dataset imagefolder needs --data-path FOLDER (with metadata.jsonl)", "data_path")


def make_text_encoder(name: str, max_tokens: int) -> TextEncoder:
    return minilm(max_tokens) if name == "minilm" else clip_from_dir(name, max_tokens)


def load_init_weights(model: torch.nn.Module, init: str, unet: dict, text_encoder: dict) -> None:
    """Copy a teacher checkpoint's weights into `model`, refusing one of another network or text encoder."""

    source, spec = load_model(init)
    if spec.get("kind") != "unet-flow" or spec.get("unet") != unet:
        raise CheckpointError(
            f"--init {init}: its network ({spec.get('kind')}, preset {spec.get('preset')!r}) is not the "
            "configured preset's UNet; pass --preset to match it or start from scratch (no --init)"
        )
    if spec.get("text_encoder") != text_encoder:
        raise CheckpointError(
            f"--init {init}: it was trained on another text encoder ({spec.get('text_encoder')}); pass the same "
            "--text-encoder and --max-tokens, or start from scratch (no --init)"
        )
    model.load_state_dict(source.state_dict())


def _init_sha256(init: str, out: Path, resuming: bool) -> str:
    """Which weights a fine-tune started from: recorded by the run itself once it has saved (a shipped name
    may come to mean another file later), else the init checkpoint's sha256."""

    saved = out / "model.safetensors"
    if resuming and saved.is_file():
        recorded = read_meta(saved).get("training", {}).get("init")
        if recorded:
            return recorded["sha256"]
    return model_sha256(resolve_checkpoint(init))


def teacher_spec(cfg: TeacherConfig, encoder: TextEncoder, step: int, init_sha256: str | None = None) -> dict:
    preset = get_preset(cfg.preset)
    return {
        "kind": "unet-flow",
        "name": cfg.name,
        "role": "teacher",
        "preset": cfg.preset,
        "unet": preset.unet,
        "text_encoder": encoder.spec,
        "image": {
            "channels": preset.channels,
            "height": preset.image_size,
            "width": preset.image_size,
            "space": "pixel",
            "range": [-1, 1],
        },
        "sampler": {
            "rule": "euler",
            "default_steps": 50,
            "guidance": {"mode": "cfg", "default_scale": cfg.sample_guidance},
        },
        "training": {
            "method": "flow_matching",
            "step": step,
            "dataset": cfg.dataset,
            "config": to_dict(cfg),
            **({"init": {"from": cfg.init, "sha256": init_sha256}} if cfg.init else {}),
        },
        "created_by": {"fewstep": __version__, "command": "fewstep train-teacher"},
    }


def train_teacher(
    cfg: TeacherConfig, out: str | Path, resume: bool = False, progress: bool = True, on_step=None
) -> Path:
    """Train (or resume) a teacher into `out`; returns the path of the EMA model checkpoint."""
    out = Path(out)
    resuming = check_resumable(out, cfg.loop(), to_dict(cfg), resume)
    out.mkdir(parents=True, exist_ok=True)
    preset = get_preset(cfg.preset)
    encoder = make_text_encoder(cfg.text_encoder, cfg.max_tokens)
    torch.manual_seed(cfg.seed)  # initial weights
    model = build_unet_flow(preset.unet)
    init_sha256 = _init_sha256(cfg.init, out, resuming) if cfg.init else None
    if cfg.init and not resuming:  # before the data work: a wrong init fails at once; resumes load their state
        load_init_weights(model, cfg.init, preset.unet, encoder.spec)
    dataset = make_dataset(cfg.dataset, preset.image_size, cfg.data_seed, cfg.dataset_size, cfg.data_path)
    data = EncodedDataset.build(dataset, encoder, cache=out / "data_cache.safetensors")
    null = encoder.null(1)
    # after the resume check: a resumed run records its new target (e.g. more steps), a refused one changes nothing
    head = f"# fewstep {__version__} train-teacher, resolved config{' (resumed)' if resuming else ''}\n"
    atomic_write_text(out / "config.yaml", head + to_yaml(cfg))

    sample_src = make_dataset(cfg.dataset, preset.image_size, SAMPLE_PROMPT_SEED, 8, cfg.data_path)
    prompts = [sample_src.caption(i) for i in range(min(8, len(sample_src)))]
    prompt_cond = encoder.encode(prompts)

    def sample(ema: torch.nn.Module, step: int, where: Path) -> None:
        n_seeds = 6
        noise = seeded_noise(
            list(range(len(prompts) * n_seeds)), (preset.channels, preset.image_size, preset.image_size)
        )
        dev = next(ema.parameters()).device
        cond, nulls = prompt_cond.repeat(n_seeds).to(dev), null.repeat(len(noise)).to(dev)
        x = euler(ema, noise.to(dev), uniform_timesteps(cfg.sample_steps).to(dev), cond, cfg.sample_guidance, nulls)
        save_png(captioned_grid(to_uint8(x.cpu().numpy()), prompts, nrow=n_seeds), where / f"step_{step:07d}.png")

    def save(where: Path, ema: torch.nn.Module, step: int) -> None:
        save_model(where / "model.safetensors", ema, teacher_spec(cfg, encoder, step, init_sha256))

    loop = TrainingLoop(
        model,
        FlowMatchingLoss(null, cfg.cond_dropout, cfg.t_sampling),
        lambda step: data.batch(step, cfg.batch_size, cfg.seed),
        cfg.loop(),
        out,
        save,
        sample,
        on_step,
        run_config=to_dict(cfg),
    )
    loop.run(resume=resume, progress=progress)
    plot_training_curve(out)
    return out / "model.safetensors"
