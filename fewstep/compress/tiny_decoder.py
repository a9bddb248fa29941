"""A tiny image decoder (TAESD-like) distilled from a latent model's VAE decoder.

At one or two denoiser steps the VAE decoder is most of the latency (SD's decoder runs ~1.2 TFLOP at 512 px).
TAESD's decoder (diffusers `DecoderTiny`: plain 3x3 conv residual blocks, nearest upsampling) is ~1/30 of that.
`fewstep distill-decoder` trains one to reproduce the teacher VAE's decodings, `D_tiny(z) ~ D_vae(z)` (L1 on the
images, the latents `z` those of dataset images encoded once by the VAE), with the one training loop (EMA,
atomic checkpoints, --resume). `fewstep export --tiny-decoder PATH` puts it in a bundle next to the VAE decoder;
the runtime picks either (`--decoder tiny|vae`).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn

from fewstep import __version__
from fewstep.compress.data import encode_latents
from fewstep.compress.trainer import LoopConfig, TrainingLoop, check_resumable, plot_training_curve
from fewstep.core.config import ConfigError, inherit, param, to_dict, to_yaml
from fewstep.core.fsio import atomic_write_text
from fewstep.core.imaging import make_grid, psnr, save_png, to_uint8
from fewstep.models.checkpoint import CheckpointError, load_tensors, save_tensors
from fewstep.models.datasets import make_dataset, to_model_range
from fewstep.models.diffusers_dir import LatentCodec, decoded_size, load_codec
from fewstep.models.loading import model_sha256, model_spec, resolve_checkpoint
from fewstep.models.tiny_decoder import TinyDecoder, latent_layout, save_tiny_decoder


@dataclass(frozen=True)
class DecoderDistillConfig(LoopConfig):
    """A tiny decoder trained on the VAE latents of dataset images to reproduce the VAE decoder's images."""

    steps: int = inherit(LoopConfig, "steps", 2000)
    batch_size: int = inherit(LoopConfig, "batch_size", 16)
    lr: float = inherit(LoopConfig, "lr", 1e-3)
    warmup_steps: int = inherit(LoopConfig, "warmup_steps", 100)
    sample_every: int = inherit(LoopConfig, "sample_every", 500)
    teacher: str = param("", "a local diffusers pipeline directory, or a latent student of one: its VAE decoder is "
                         "the target", path="checkpoint")  # fmt: skip
    channels: int = param(64, "width of every decoder block (TAESD: 64)", min=1)
    blocks: int = param(3, "residual blocks per resolution (TAESD: 3)", min=1)
    dataset: Literal["shapes", "digits", "imagefolder"] = param("shapes", "images whose VAE latents are the "
                                                                "training inputs")  # fmt: skip
    data_path: str | None = param(None, "imagefolder only: a folder with metadata.jsonl", path="dir")
    dataset_size: int = param(2000, "training images (rendered and VAE-encoded once, cached in the run directory)",
                              min=1)  # fmt: skip
    eval_size: int = param(256, "held-out images (another data seed) for the final PSNR and timing", min=1)
    data_seed: int = param(0, "which shapes images", min=0)

    def check_ready(self) -> None:
        """Before any work: a teacher is named and every path exists."""
        self.check_paths()
        if not self.teacher:
            raise ConfigError("distill-decoder needs --teacher: a diffusers pipeline directory or a latent student",
                              "teacher")  # fmt: skip


def _encode(codec: LatentCodec, ds, desc: str) -> tuple[torch.Tensor, np.ndarray]:
    images = np.stack([ds.item(i)[0] for i in range(len(ds))])
    return encode_latents(codec, images, desc), images


def _cached_latents(cfg: DecoderDistillConfig, codec: LatentCodec, size: int, out: Path) -> torch.Tensor:
    ds = make_dataset(cfg.dataset, size, cfg.data_seed, cfg.dataset_size, cfg.data_path)
    key = f"{ds.fingerprint()}|{len(ds)}|{codec.fingerprint}"
    cache = out / "latents.safetensors"
    if cache.is_file():
        try:
            tensors, meta = load_tensors(cache)
            if meta.get("key") == key:
                return tensors["latents"]
        except CheckpointError:
            pass  # a broken cache is rebuilt, never trusted
    latents, _ = _encode(codec, ds, "encode images (VAE)")
    save_tensors(cache, {"latents": latents.contiguous()}, {"key": key})
    return latents


class DecoderLoss:
    """L1 between the tiny decoder's image and the VAE decoder's, on the same latents."""

    def __init__(self, codec: LatentCodec):
        self.codec = codec

    def to(self, device) -> DecoderLoss:
        self.codec.to(device)
        return self

    def __call__(self, model: nn.Module, latents: torch.Tensor, rnd) -> tuple[torch.Tensor, dict]:
        with torch.no_grad():
            target = self.codec.decode(latents)
        diff = model(latents) - target
        loss = diff.abs().mean()
        return loss, {"loss": float(loss.detach()), "mse": float(diff.detach().square().mean())}


def _ms_per_image(fn, latents: torch.Tensor, repeats: int = 3) -> float:
    with torch.no_grad():
        fn(latents[:2])  # warm-up
        best = math.inf
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn(latents)
            best = min(best, time.perf_counter() - t0)
    return 1000 * best / len(latents)


def evaluate_tiny_decoder(model: TinyDecoder, codec: LatentCodec, spec: dict, cfg: DecoderDistillConfig) -> dict:
    """PSNR of the tiny decoder against the VAE decoder (and both against the real images) on held-out images."""
    ds = make_dataset(cfg.dataset, decoded_size(spec), cfg.data_seed + 1, cfg.eval_size, cfg.data_path)
    latents, images = _encode(codec, ds, "encode held-out images")
    real = torch.from_numpy(to_model_range(images))
    with torch.no_grad():
        vae = torch.cat([codec.decode(latents[i : i + 32]) for i in range(0, len(latents), 32)])
        tiny = torch.cat([model(latents[i : i + 32]) for i in range(0, len(latents), 32)])
    batch = latents[:16]
    return {
        "images": len(latents),
        "psnr_tiny_vs_vae_db": round(psnr(tiny.numpy(), vae.numpy()), 2),
        "psnr_vae_vs_real_db": round(psnr(vae.numpy(), real.numpy()), 2),
        "psnr_tiny_vs_real_db": round(psnr(tiny.numpy(), real.numpy()), 2),
        "params_tiny": sum(p.numel() for p in model.parameters()),
        "params_vae_decoder": sum(p.numel() for n, p in codec.vae.named_parameters() if not n.startswith("encoder")),
        "ms_per_image_tiny": round(_ms_per_image(model, batch), 3),
        "ms_per_image_vae": round(_ms_per_image(codec.decode, batch), 3),
        "timing": f"torch eager, batch {len(batch)}, {torch.get_num_threads()} threads",
    }


def distill_decoder(cfg: DecoderDistillConfig, out: str | Path, resume: bool = False, progress: bool = True) -> Path:
    """Train a tiny decoder into `out`; returns `out/decoder.safetensors` (EMA weights) and writes eval.json."""
    cfg.check_ready()
    out = Path(out)
    loop = cfg.loop()
    check_resumable(out, loop, to_dict(cfg), resume)
    out.mkdir(parents=True, exist_ok=True)
    source = resolve_checkpoint(cfg.teacher)
    spec = model_spec(source)
    channels, factor = latent_layout(spec)
    codec = load_codec(spec)
    atomic_write_text(out / "config.yaml", f"# fewstep {__version__} distill-decoder, resolved config\n" + to_yaml(cfg))
    latents = _cached_latents(cfg, codec, decoded_size(spec), out)
    torch.manual_seed(cfg.seed)
    model = TinyDecoder(channels, factor, cfg.channels, cfg.blocks)
    extra = {"source": str(source), "source_sha256": model_sha256(source), "training": to_dict(cfg)}
    shown = latents[:8]

    def batch_fn(step: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        return latents[torch.randint(len(latents), (cfg.batch_size,), generator=g)].float()

    def save(where: Path, ema: nn.Module, step: int) -> None:
        save_tiny_decoder(where / "decoder.safetensors", ema, spec, codec, {**extra, "step": step})

    def sample(ema: nn.Module, step: int, where: Path) -> None:  # top row: VAE decoder, bottom row: tiny decoder
        with torch.no_grad():
            rows = torch.cat([codec.decode(shown.float()), ema.cpu()(shown.float())])
        save_png(make_grid(to_uint8(rows.numpy()), nrow=len(shown)), where / f"step_{step:07d}.png")

    ema = TrainingLoop(model, DecoderLoss(codec), batch_fn, loop, out, save, sample, run_config=to_dict(cfg)).run(
        resume=resume, progress=progress
    )
    plot_training_curve(out)
    result = evaluate_tiny_decoder(ema.cpu().eval(), codec.cpu(), spec, cfg)
    atomic_write_text(out / "eval.json", json.dumps(result, indent=2) + "\n")
    return out / "decoder.safetensors"
