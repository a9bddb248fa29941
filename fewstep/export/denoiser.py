"""The denoiser as every exporter sees it: plain tensors in, velocity out, inputs declared as data.

`v = denoiser(x, t, text, text_mask[, guidance])` is the flow contract with `Cond` unpacked, so ONNX,
CoreML and TensorRT graphs get named, typed inputs; `guidance` exists only for students with an embedded
guidance input (the sinusoidal embedding of w is computed inside the graph).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..models.contract import Cond
from ..models.unet_flow import UNetFlowModel


@dataclass(frozen=True)
class TensorSpec:
    """One engine input or output: name, shape with "B" for the dynamic batch, numpy dtype name."""

    name: str
    shape: tuple[int | str, ...]
    dtype: str = "float32"

    def concrete(self, batch: int) -> tuple[int, ...]:
        return tuple(batch if d == "B" else int(d) for d in self.shape)

    def to_json(self) -> dict:
        return {"shape": list(self.shape), "dtype": self.dtype}


class Denoiser(nn.Module):
    """`UNetFlowModel` with its `Cond` unpacked into tensors (the exported graph's signature)."""

    def __init__(self, model: UNetFlowModel, image: dict, tokens: int, text_dim: int):
        super().__init__()
        self.model = model.eval()
        self.embedded_guidance = model.guidance_dim is not None
        c, h, w = image["channels"], image["height"], image["width"]
        self.inputs = [
            TensorSpec("x", ("B", c, h, w)),
            TensorSpec("t", ("B",)),
            TensorSpec("text", ("B", tokens, text_dim)),
            TensorSpec("text_mask", ("B", tokens)),
        ]
        if self.embedded_guidance:
            self.inputs.append(TensorSpec("guidance", ("B",)))
        self.outputs = [TensorSpec("v", ("B", c, h, w))]

    @property
    def input_names(self) -> list[str]:
        return [s.name for s in self.inputs]

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        text: torch.Tensor,
        text_mask: torch.Tensor,
        guidance: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return self.model(x, t, Cond(text, text_mask, guidance=guidance))

    def example_inputs(self, batch: int = 2, seed: int = 0) -> tuple[torch.Tensor, ...]:
        """Random inputs of the declared shapes (t in (0, 1], a valid mask, w in [1, 6])."""
        g = torch.Generator().manual_seed(seed)
        out = []
        for spec in self.inputs:
            shape = spec.concrete(batch)
            if spec.name == "t":
                out.append(torch.rand(shape, generator=g) * 0.98 + 0.02)
            elif spec.name == "text_mask":
                mask = torch.ones(shape)
                mask[:, shape[1] // 2 :] = 0
                out.append(mask)
            elif spec.name == "guidance":
                out.append(1 + 5 * torch.rand(shape, generator=g))
            else:
                out.append(torch.randn(shape, generator=g))
        return tuple(out)

    def io_json(self) -> dict:
        return {
            "inputs": {s.name: s.to_json() for s in self.inputs},
            "outputs": {s.name: s.to_json() for s in self.outputs},
        }


def denoiser_from_spec(model: UNetFlowModel, spec: dict) -> Denoiser:
    """The exported signature of a checkpoint's model (text length from its text encoder, width from the UNet)."""
    unet = model.unet.config
    text_dim = unet.encoder_hid_dim if unet.encoder_hid_dim_type == "text_proj" else unet.cross_attention_dim
    tokens = int(spec["text_encoder"].get("max_tokens", 77))
    return Denoiser(model, spec["image"], tokens, int(text_dim))
