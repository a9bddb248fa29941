"""The tiny (TAESD-like) image decoder network and its checkpoint format; `fewstep distill-decoder` trains it
(`fewstep.compress.tiny_decoder`), `fewstep export --tiny-decoder` bundles it."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from fewstep import __version__
from fewstep.models.checkpoint import CheckpointError, load_tensors, save_tensors
from fewstep.models.diffusers_dir import LatentCodec, decoded_size

DECODER_FORMAT = "fewstep-tiny-decoder/1"


class TinyDecoder(nn.Module):
    """Latents of the denoiser (B, C, h, w) -> image (B, 3, H, W) in [-1, 1], H = factor h; TAESD's layout."""

    def __init__(self, latent_channels: int, factor: int, channels: int = 64, blocks: int = 3):
        super().__init__()
        from diffusers.models.autoencoders.vae import DecoderTiny  # train extra

        ups = round(math.log2(factor))
        if 2**ups != factor:
            raise ValueError(f"the VAE's downsampling factor must be a power of two; got {factor}")
        self.config = {"latent_channels": latent_channels, "factor": factor, "channels": channels, "blocks": blocks}
        self.decoder = DecoderTiny(in_channels=latent_channels, out_channels=3, num_blocks=(blocks,) * ups + (1,),
                                   block_out_channels=(channels,) * (ups + 1), upsampling_scaling_factor=2,
                                   act_fn="relu", upsample_fn="nearest")  # fmt: skip

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.decoder(latents).clamp(-1, 1)


def latent_layout(spec: dict) -> tuple[int, int]:
    """(latent channels, downsampling factor) of a latent model."""
    if "latent" not in spec:
        raise ValueError(f"{spec.get('name', 'this model')} works in pixel space: it has no decoder to distil")
    return int(spec["image"]["channels"]), decoded_size(spec) // int(spec["image"]["height"])


def save_tiny_decoder(path: Path, model: TinyDecoder, spec: dict, codec: LatentCodec, extra: dict) -> None:
    meta = {"format": DECODER_FORMAT, "decoder": model.config, "image": spec["latent"]["decoded"],
            "latents": spec["image"], "vae_fingerprint": codec.fingerprint,
            "params": sum(p.numel() for p in model.parameters()),
            "created_by": {"fewstep": __version__, "command": "fewstep distill-decoder"}, **extra}  # fmt: skip
    save_tensors(path, model.state_dict(), meta)


def load_tiny_decoder(path: str | Path) -> tuple[TinyDecoder, dict]:
    """-> (decoder in eval mode, its spec); a file of another kind is named, never guessed at."""
    path = Path(path)
    if path.is_dir():
        path = path / "decoder.safetensors"
    if not path.is_file():
        raise CheckpointError(f"tiny decoder {path} does not exist (make one with `fewstep distill-decoder`)")
    tensors, spec = load_tensors(path)
    if spec.get("format") != DECODER_FORMAT:
        raise CheckpointError(f"{path} is not a fewstep tiny decoder (format {spec.get('format')!r})")
    model = TinyDecoder(**spec["decoder"])
    model.load_state_dict(tensors)
    return model.eval().requires_grad_(False), spec


def check_decoder_fits(decoder_spec: dict, model_spec: dict, codec: LatentCodec | None) -> None:
    """A tiny decoder decodes only the latents of the VAE it was distilled from."""
    latent_layout(model_spec)  # a pixel-space model has nothing to decode
    if codec is None or decoder_spec["vae_fingerprint"] != codec.fingerprint:
        raise ValueError("this tiny decoder was distilled from another VAE than the model's; distil one from this "
                         "model's pipeline: fewstep distill-decoder --teacher PIPELINE_DIR")  # fmt: skip
    if decoder_spec["latents"] != model_spec["image"]:
        raise ValueError(f"the tiny decoder reads latents {decoder_spec['latents']}, the model makes "
                         f"{model_spec['image']}")  # fmt: skip
