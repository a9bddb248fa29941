"""The image decoder of a latent model as an exported graph: `image = decoder(latents)`.

The graph holds the whole way from the denoiser's latents to an image in [-1, 1]: the VAE's scale and shift
undone, its decoder, the clamp. At one or two denoiser steps the decoder is a large share of the latency, so
it is a stage of its own in the bundle and in `fewstep bench`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from fewstep.core.manifest import TensorSpec
from fewstep.export.denoiser import Port, io_specs
from fewstep.export.targets.onnx import export_graph
from fewstep.models.diffusers_dir import LatentCodec


class ImageDecoder(nn.Module):
    """`LatentCodec.decode` as a plain module (latents (B, C, h, w) -> image (B, 3, H, W) in [-1, 1])."""

    def __init__(self, codec: LatentCodec, spec: dict):
        super().__init__()
        self.vae = codec.vae.eval()
        self.scaling_factor, self.shift_factor = codec.scaling_factor, codec.shift_factor
        img, out = spec["image"], spec["latent"]["decoded"]
        self.inputs = [Port("latents", ("B", img["channels"], img["height"], img["width"]))]
        self.outputs = [Port("image", ("B", out["channels"], out["height"], out["width"]))]

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latents / self.scaling_factor + self.shift_factor).sample.clamp(-1, 1)

    def io_specs(self) -> tuple[dict[str, TensorSpec], dict[str, TensorSpec]]:
        return io_specs(self.inputs, self.outputs)


class TinyImageDecoder(nn.Module):
    """A distilled tiny decoder (fewstep distill-decoder) with the VAE decoder's graph signature."""

    def __init__(self, tiny: nn.Module, spec: dict):
        super().__init__()
        self.tiny = tiny.eval()
        img, out = spec["image"], spec["latent"]["decoded"]
        self.inputs = [Port("latents", ("B", img["channels"], img["height"], img["width"]))]
        self.outputs = [Port("image", ("B", out["channels"], out["height"], out["width"]))]

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.tiny(latents)

    def io_specs(self) -> tuple[dict[str, TensorSpec], dict[str, TensorSpec]]:
        return io_specs(self.inputs, self.outputs)


def export_decoder_onnx(decoder: ImageDecoder | TinyImageDecoder, path: str | Path, max_batch: int = 4096) -> Path:
    """fp32 ONNX graph with a dynamic batch, checked and shape-inferred like the denoiser's."""

    latents = torch.randn(decoder.inputs[0].concrete(2))
    return export_graph(decoder, (latents,), Path(path), ["latents"], ["image"], max_batch=max_batch)
