"""The denoiser as every exporter sees it: plain tensors in, velocity out, inputs declared as data.

`v = denoiser(x, t, text, text_mask[, pooled][, extra_ids][, guidance])` is the flow contract with `Cond`
unpacked, so ONNX, CoreML and TensorRT graphs get named, typed inputs; `pooled` exists for models that read a
pooled text embedding (SD3, SDXL), `extra_ids` for SDXL's size/crop ids, `guidance` only for students with an
embedded guidance input (the sinusoidal embedding of w is computed inside the graph).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from fewstep.core.manifest import EngineEntry, TensorSpec
from fewstep.models.contract import Cond


@dataclass(frozen=True)
class Port:
    """One named engine input or output: shape with "B" for the dynamic batch, numpy dtype name."""

    name: str
    shape: tuple[int | str, ...]
    dtype: str = "float32"

    def concrete(self, batch: int) -> tuple[int, ...]:
        return self.spec.concrete(batch)

    @property
    def spec(self) -> TensorSpec:
        return TensorSpec(self.shape, self.dtype)


class Denoiser(nn.Module):
    """A flow model with its `Cond` unpacked into tensors (the exported graph's signature)."""

    def __init__(self, model: nn.Module, image: dict, tokens: int, text_dim: int, pooled_dim: int | None = None,
                 extra_ids: int | None = None):  # fmt: skip
        super().__init__()
        self.model = model.eval()
        self.embedded_guidance = getattr(model, "guidance_dim", None) is not None
        c, h, w = image["channels"], image["height"], image["width"]
        self.inputs: list[Port] = [
            Port("x", ("B", c, h, w)),
            Port("t", ("B",)),
            Port("text", ("B", tokens, text_dim)),
            Port("text_mask", ("B", tokens)),
        ]
        if pooled_dim:
            self.inputs.append(Port("pooled", ("B", pooled_dim)))
        if extra_ids:
            self.inputs.append(Port("extra_ids", ("B", extra_ids)))
        if self.embedded_guidance:
            self.inputs.append(Port("guidance", ("B",)))
        self.outputs = [Port("v", ("B", c, h, w))]

    def release(self) -> None:
        """Drop the torch model (the export keeps only the signature once every engine starts from the ONNX
        graph); calling the denoiser afterwards is a clear error."""
        self.model = _Released()

    @property
    def input_names(self) -> list[str]:
        return [s.name for s in self.inputs]

    def forward(self, x: torch.Tensor, t: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor,
                extra1: torch.Tensor | None = None, extra2: torch.Tensor | None = None,
                extra3: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
        """The optional inputs come in their declared order (`self.inputs`): pooled, extra_ids, guidance."""
        extra = [e for e in (extra1, extra2, extra3) if e is not None]
        named = dict(zip(self.input_names[4:], extra, strict=True))
        cond = Cond(text, text_mask, named.get("pooled"), named.get("guidance"), named.get("extra_ids"))
        return self.model(x, t, cond)

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
            elif spec.name == "extra_ids":
                out.append(torch.tensor([[1024.0, 1024, 0, 0, 1024, 1024]]).repeat(shape[0], 1)[:, : shape[1]])
            else:
                out.append(torch.randn(shape, generator=g))
        return tuple(out)

    def io_specs(self) -> tuple[dict[str, TensorSpec], dict[str, TensorSpec]]:
        """(inputs, outputs) as the manifest records them."""
        return io_specs(self.inputs, self.outputs)

    def entry(self, backend: str, precision: str = "fp32", engine_id: str = "candidate") -> EngineEntry:
        """A manifest entry for an engine of this denoiser not (yet) in a bundle: what `load_engine` needs."""
        inputs, outputs = self.io_specs()
        return EngineEntry(engine_id, backend, precision, {"(not in a bundle)": ""}, inputs, outputs)


class _Released(nn.Module):
    def forward(self, *args: object) -> torch.Tensor:
        raise RuntimeError("this denoiser's torch model was released after its fp32 ONNX graph was written; an "
                           "exporter that needs the torch model must not set `from_onnx` on its backend")  # fmt: skip


class HalfIO(nn.Module):
    """A `Denoiser` computing in fp16 behind float32 inputs and outputs (what the runtime and the bundle specs
    use). t and the guidance scale stay float32: t * 1000 in fp16 would be rounded to 0.5 steps before the
    sinusoidal embedding, which diffusers computes in float32 and casts to the network's dtype itself."""

    def __init__(self, denoiser: Denoiser):
        super().__init__()
        self.keep_float = [name in ("t", "guidance") for name in denoiser.input_names]
        # float64 tables (the VP adapter's t -> diffusion-step map) stay float64: in fp16 neighbours merge
        doubles = {n: b for n, b in denoiser.named_buffers() if b.dtype == torch.float64}
        self.inner = denoiser.half()
        for name, buffer in doubles.items():
            owner, _, leaf = name.rpartition(".")
            self.inner.get_submodule(owner)._buffers[leaf] = buffer

    def forward(self, x: torch.Tensor, t: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor,
                extra1: torch.Tensor | None = None, extra2: torch.Tensor | None = None,
                extra3: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
        given = [a for a in (x, t, text, text_mask, extra1, extra2, extra3) if a is not None]
        cast = [a if keep else a.half() for a, keep in zip(given, self.keep_float, strict=True)]
        return self.inner(*cast).float()


def io_specs(inputs: list[Port], outputs: list[Port]) -> tuple[dict[str, TensorSpec], dict[str, TensorSpec]]:
    """An engine's declared inputs and outputs, as the manifest and the runtime's boundary checks read them."""
    return {p.name: p.spec for p in inputs}, {p.name: p.spec for p in outputs}


def denoiser_from_spec(model: nn.Module, spec: dict, encoder=None) -> Denoiser:
    """The exported signature of a checkpoint's model. Built-in models: text length from the text encoder's
    spec, width from the UNet. Pipeline models: the shapes of what their prompt encoder (`encoder`) returns."""
    if spec["kind"] != "unet-flow":
        if encoder is None:
            raise ValueError(f"a {spec['kind']} model's input shapes come from its prompt encoder: pass encoder=")
        c = encoder.encode([""])
        pooled = None if c.pooled is None else c.pooled.shape[1]
        ids = None if c.extra_ids is None else c.extra_ids.shape[1]
        return Denoiser(model, spec["image"], c.text.shape[1], c.text.shape[2], pooled, ids)
    unet = model.unet.config
    text_dim = unet.encoder_hid_dim if unet.encoder_hid_dim_type == "text_proj" else unet.cross_attention_dim
    tokens = int(spec["text_encoder"].get("max_tokens", 77))
    return Denoiser(model, spec["image"], tokens, int(text_dim))
