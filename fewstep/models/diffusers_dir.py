"""Teachers from a local diffusers pipeline directory (`model_index.json` layout); nothing is downloaded.

Supported: UNet pipelines (SD 1.x/2.x `StableDiffusionPipeline`, SDXL `StableDiffusionXLPipeline`) with eps- or
v-prediction, seen through `VPFlowAdapter`, or with a flow-matching scheduler; and flow-matching transformers
(SD3 `StableDiffusion3Pipeline`, `SD3Transformer2DModel`). The pipeline's own `encode_prompt` turns prompts into
a `Cond` (text states, pooled embedding, SDXL size/crop ids) and its VAE maps images to latents and back
(`LatentCodec`). Weights load from safetensors only (`use_safetensors=True`: a `.bin` pickle is refused).
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
from pathlib import Path

import torch
from torch import nn

from fewstep.core.fsio import sha256_of
from fewstep.core.safetensors_header import HeaderError, read_header
from fewstep.models.contract import Cond
from fewstep.models.model_kinds import wrap_denoiser
from fewstep.models.prompt_cache import CachedPromptEncoder

PIPELINES = {
    "StableDiffusionPipeline": "unet",
    "StableDiffusionXLPipeline": "unet",
    "StableDiffusion3Pipeline": "transformer",
}
DEFAULTS = {  # the pipelines' own defaults (num_inference_steps, guidance_scale)
    "StableDiffusionPipeline": (50, 7.5),
    "StableDiffusionXLPipeline": (50, 5.0),
    "StableDiffusion3Pipeline": (28, 7.0),
}
WEIGHTS = (
    "diffusion_pytorch_model.safetensors",
    "model.safetensors",
    "diffusion_pytorch_model.safetensors.index.json",
    "model.safetensors.index.json",
)
PICKLES = ("diffusion_pytorch_model.bin", "pytorch_model.bin")
T5_TOKENS = 256  # SD3's default max_sequence_length for the T5 branch (zeros when the pipeline has no T5)


class PipelineDirError(FileNotFoundError):
    """A pipeline directory that cannot be used; the message names the missing or unreadable file."""


def is_pipeline_dir(path: str | Path) -> bool:
    return Path(path).is_dir() and (Path(path) / "model_index.json").is_file()


def _components(index: dict) -> dict[str, tuple[str, str]]:
    return {
        k: tuple(v)
        for k, v in index.items()
        if not k.startswith("_") and isinstance(v, list) and len(v) == 2 and v[0] is not None
    }


def check_pipeline_dir(path: str | Path) -> dict:
    """Validate the layout before loading anything -> the parsed model_index.json."""
    root = Path(path)
    if not root.is_dir():
        raise PipelineDirError(f"pipeline directory {root} does not exist")
    index_file = root / "model_index.json"
    if not index_file.is_file():
        raise PipelineDirError(
            f"{root} has no model_index.json: it is not a diffusers pipeline saved with "
            "save_pretrained (nothing is downloaded; pass a local pipeline directory)"
        )
    try:
        index = json.loads(index_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PipelineDirError(f"{index_file} is not valid JSON: {e}") from None
    cls = index.get("_class_name")
    if cls not in PIPELINES:
        raise PipelineDirError(f"{index_file} describes a {cls!r}; fewstep reads {', '.join(PIPELINES)}")
    for name in _components(index):
        folder = root / name
        if name.startswith("scheduler"):
            need = [folder / "scheduler_config.json"]
        elif name.startswith("tokenizer"):
            need = [folder / "tokenizer_config.json"]
        else:
            need = [folder / "config.json"]
            if not any((folder / w).is_file() for w in WEIGHTS):
                pickles = [p for p in PICKLES if (folder / p).is_file()]
                if pickles:
                    raise PipelineDirError(
                        f"{folder / pickles[0]} is a pickle; fewstep loads safetensors weights only "
                        "(convert it, e.g. load and save_pretrained(safe_serialization=True))"
                    )
                raise PipelineDirError(
                    f"{folder} has no weights ({' or '.join(WEIGHTS[:2])}); copy the component "
                    "there, nothing is downloaded"
                )
        for f in need:
            if not f.is_file():
                raise PipelineDirError(f"{f} is missing; model_index.json lists the component {name!r}")
        for weights in folder.glob("*.safetensors"):
            check_weights_file(weights)
    return index


def check_weights_file(path: Path) -> None:
    """A safetensors file whose header parses and whose tensors all lie inside the file (a truncated copy is
    named before anything is allocated for it)."""
    try:
        header = read_header(path)
    except HeaderError as e:
        raise PipelineDirError(f"{e}; copy the component again") from None
    ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)
            and isinstance(v.get("data_offsets"), list) and len(v["data_offsets"]) == 2]  # fmt: skip
    n = int.from_bytes(path.open("rb").read(8), "little")
    need, have = 8 + n + max(ends, default=0), path.stat().st_size
    if have < need:
        raise PipelineDirError(f"{path} is truncated: its header lists {need:,} bytes of tensors, the file has "
                               f"{have:,}; copy the component again")  # fmt: skip


@functools.lru_cache(maxsize=2)
def _load(path: str):
    from diffusers import DiffusionPipeline  # train extra

    index = check_pipeline_dir(path)
    absent = {k: None for k, v in index.items() if not k.startswith("_") and isinstance(v, list) and v[0] is None}
    try:
        pipe = DiffusionPipeline.from_pretrained(path, local_files_only=True, use_safetensors=True, **absent)
    except (ValueError, RuntimeError, OSError) as e:  # e.g. a config whose shapes are not those of its weights
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise PipelineDirError(f"{path} cannot be loaded by diffusers: {first[:500]}") from None
    pipe.set_progress_bar_config(disable=True)
    for part in pipe.components.values():
        if isinstance(part, nn.Module):
            part.eval().requires_grad_(False)
    return pipe


def load_pipeline(path: str | Path):
    """The diffusers pipeline in `path` (cached: the model, text encoder and codec share one load)."""
    return _load(str(Path(path).resolve()))


def forget_loaded_pipelines() -> None:
    """Drop the cache of loaded pipelines: their networks are freed once nothing else holds them (a LoRA
    student's export holds its own fused network, so the base UNet, several GB at SD size, goes)."""
    _load.cache_clear()


def denoiser_name(pipe_or_index) -> str:
    cls = pipe_or_index["_class_name"] if isinstance(pipe_or_index, dict) else type(pipe_or_index).__name__
    return PIPELINES[cls]


def source_sha256(path: str | Path) -> str:
    """Identity of a pipeline as a teacher: model_index.json, scheduler config and denoiser files."""
    root = Path(path)
    index = check_pipeline_dir(root)
    files = [
        root / "model_index.json",
        *sorted((root / "scheduler").glob("*")),
        *sorted((root / denoiser_name(index)).glob("*")),
    ]
    h = hashlib.sha256()
    for f in files:
        if f.is_file():
            h.update(f.relative_to(root).as_posix().encode())
            with open(f, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
    return h.hexdigest()


# ---- the denoiser ---------------------------------------------------------------------------------------


def _plain(config) -> dict:
    """A diffusers config as JSON-friendly data (enough to rebuild the module with `from_config`)."""
    return json.loads(json.dumps(dict(config), default=list))


def pipeline_spec(path: str | Path) -> dict:
    """The checkpoint-style spec of a pipeline teacher (no weights): kind, denoiser config, latent, sampler."""
    from diffusers import FlowMatchEulerDiscreteScheduler  # train extra

    root = Path(path).resolve()
    pipe = load_pipeline(root)
    cls = type(pipe).__name__
    kind = denoiser_name(pipe)
    sched = pipe.scheduler
    steps, scale = DEFAULTS[cls]
    sampler = {"rule": "euler", "default_steps": steps, "guidance": {"mode": "cfg", "default_scale": scale}}
    spec: dict = {"role": "teacher", "name": root.name, "source": {"pipeline": str(root), "class": cls}}
    if isinstance(sched, FlowMatchEulerDiscreteScheduler):
        if sched.config.get("use_dynamic_shifting"):
            raise PipelineDirError(
                f"{root}/scheduler uses dynamic shifting (FLUX-style), which fewstep does not "
                "support yet; use a scheduler with a fixed shift"
            )
        sampler["shift"] = float(sched.config.get("shift", 1.0))
        spec["flow"] = {"timestep_scale": float(sched.config.num_train_timesteps)}
        spec["kind"] = "unet-flow" if kind == "unet" else "transformer-flow"
    elif kind == "unet":
        spec["kind"] = "unet-vp"
        spec["vp"] = {"prediction_type": sched.config.prediction_type, "scheduler": _plain(sched.config)}
    else:
        raise PipelineDirError(
            f"{cls} with a {type(sched).__name__} is not supported; SD3-style transformers "
            "need a FlowMatchEulerDiscreteScheduler"
        )
    net = getattr(pipe, kind)
    spec["unet" if kind == "unet" else "transformer"] = _plain(net.config)
    vae = pipe.vae
    down = 2 ** (len(vae.config.block_out_channels) - 1)
    size = int(net.config.sample_size)
    spec["image"] = {"channels": int(net.config.in_channels), "height": size, "width": size, "space": "latent"}
    spec["latent"] = {
        "vae": str(root / "vae"),
        "scaling_factor": float(vae.config.scaling_factor),
        "shift_factor": float(vae.config.get("shift_factor") or 0.0),
        "downsample": down,
        "decoded": {
            "channels": int(vae.config.out_channels),
            "height": size * down,
            "width": size * down,
            "range": [-1, 1],
        },
    }
    spec["text_encoder"] = {
        "kind": "diffusers-pipeline",
        "path": str(root),
        "pipeline_class": cls,
        "max_tokens": int(pipe.tokenizer.model_max_length),
    }
    if cls == "StableDiffusion3Pipeline":
        spec["text_encoder"]["t5_tokens"] = T5_TOKENS
    spec["sampler"] = sampler
    return spec


def pipeline_model(path: str | Path) -> tuple[nn.Module, dict]:
    """(the pipeline's denoiser under the flow contract, its spec); shares the pipeline's modules."""

    spec = pipeline_spec(path)
    pipe = load_pipeline(path)
    return wrap_denoiser(getattr(pipe, denoiser_name(pipe)), spec), spec


# ---- prompts --------------------------------------------------------------------------------------------


class _ConfigOnly:
    """A denoiser's config without its weights: SD3's `encode_prompt` reads `transformer.config` (the width of
    the zero T5 embedding when there is no T5)."""

    def __init__(self, config):
        self.config = config


def _without_denoiser(pipe):
    """A shallow copy of `pipe` with its tokenizers and text encoders but no denoiser weights: a prompt encoder must
    not keep a base UNet of several GB alive after the networks using it are gone (a LoRA student's export holds
    its own fused copy)."""
    view = copy.copy(pipe)
    for name in ("unet", "transformer"):
        if getattr(view, name, None) is not None:
            # not the pipeline's __setattr__: its registered config stays the original's
            object.__setattr__(view, name, _ConfigOnly(getattr(view, name).config))
    return view


class PipelinePromptEncoder(CachedPromptEncoder):
    """`encode(prompts) -> Cond` with the pipeline's own `encode_prompt` (CLIP / CLIP-G / T5 combination as
    diffusers does it), a bounded LRU of prompt embeddings, and prompts longer than its tokenizer refused."""

    def __init__(self, spec: dict, cache_size: int = 1024):
        super().__init__(spec, int(spec["max_tokens"]), cache_size)
        self.pipe = _without_denoiser(load_pipeline(spec["path"]))
        self.sdxl = type(self.pipe).__name__ == "StableDiffusionXLPipeline"
        self.sd3 = type(self.pipe).__name__ == "StableDiffusion3Pipeline"

    def token_limits(self, prompt: str) -> list[tuple[int, int]]:
        """Every tokenizer of the pipeline against its length (T5: `t5_tokens`), as the runtime checks them;
        diffusers would truncate silently."""
        out = []
        for name in ("tokenizer", "tokenizer_2", "tokenizer_3"):
            tok = getattr(self.pipe, name, None)
            if tok is not None:
                limit = int(self.spec.get("t5_tokens", T5_TOKENS)) if name == "tokenizer_3" else tok.model_max_length
                out.append((len(tok(prompt)["input_ids"]), int(limit)))
        return out

    @torch.no_grad()
    def _encode_uncached(self, prompts: list[str]) -> Cond:
        pipe, pooled, ids = self.pipe, None, None
        if self.sd3:
            text, _, pooled, _ = pipe.encode_prompt(
                prompts,
                prompts,
                prompts,
                device="cpu",
                do_classifier_free_guidance=False,
                max_sequence_length=self.spec.get("t5_tokens", T5_TOKENS),
            )
        elif self.sdxl:
            text, _, pooled, _ = pipe.encode_prompt(prompts, device="cpu", do_classifier_free_guidance=False)
            size = pipe.default_sample_size * pipe.vae_scale_factor
            # original size, crop top-left, target size: the pipeline's defaults for an uncropped image
            ids = torch.tensor([[size, size, 0, 0, size, size]], dtype=torch.float32).repeat(len(prompts), 1)
        else:
            text, _ = pipe.encode_prompt(prompts, "cpu", 1, False)
        mask = torch.ones(text.shape[:2])  # SD-family denoisers attend to every position, padding included
        return Cond(text.float(), mask, None if pooled is None else pooled.float(), None, ids)

    def null(self, batch_size: int = 1) -> Cond:
        """The unconditional branch: the empty prompt (zeros where the pipeline forces them, as SDXL does)."""
        cond = self.encode([""])
        if self.pipe.config.get("force_zeros_for_empty_prompt", False):
            cond = Cond(
                torch.zeros_like(cond.text),
                cond.text_mask,
                None if cond.pooled is None else torch.zeros_like(cond.pooled),
                None,
                cond.extra_ids,
            )
        return cond.repeat(batch_size)


# ---- latents --------------------------------------------------------------------------------------------


class LatentCodec(nn.Module):
    """Images in [-1, 1] <-> the denoiser's latents: z = (mean(E(x)) - shift) * scale, x = D(z / scale + shift)."""

    def __init__(self, vae: nn.Module, scaling_factor: float, shift_factor: float = 0.0, fingerprint: str = ""):
        super().__init__()
        self.vae, self.scaling_factor, self.shift_factor = vae, scaling_factor, shift_factor
        self.fingerprint = fingerprint  # sha256 of the VAE's files: keys caches of encoded latents

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return (self.vae.encode(images).latent_dist.mean - self.shift_factor) * self.scaling_factor

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latents / self.scaling_factor + self.shift_factor).sample.clamp(-1, 1)


def load_codec(spec: dict) -> LatentCodec | None:
    """The VAE a latent model's spec names (its pipeline's `vae/`); None for pixel-space models."""
    latent = spec.get("latent")
    if latent is None:
        return None
    from diffusers import AutoencoderKL  # train extra

    vae_dir = Path(latent["vae"])
    pipeline_root = vae_dir.parent
    if is_pipeline_dir(pipeline_root):
        vae = load_pipeline(pipeline_root).vae
    else:
        if not (vae_dir / "config.json").is_file():
            raise PipelineDirError(
                f"the VAE of this model ({vae_dir}) is missing: the latent model needs it to "
                "decode images; restore the pipeline directory it was distilled from"
            )
        vae = AutoencoderKL.from_pretrained(vae_dir, local_files_only=True, use_safetensors=True).eval()
    return LatentCodec(vae, latent["scaling_factor"], latent["shift_factor"], _files_sha256(vae_dir))


def _files_sha256(folder: Path) -> str:

    parts = [f"{f.name}:{sha256_of(f)}" for f in sorted(folder.iterdir()) if f.is_file()]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def decoded_size(spec: dict) -> int:
    """Side of the images a model makes (latent models: after decoding)."""
    latent = spec.get("latent")
    return int(latent["decoded"]["height"] if latent else spec["image"]["height"])
