"""Torch "exporter": the student's network as a fewstep checkpoint inside the bundle, run by the runtime's
`torch` backend (torch eager, CPU or CUDA).

Not an engine for serving: it is the comparison point. With it in a bundle, `fewstep bench BUNDLE --engine
torch-fp32` times the same runtime (numpy sampler, bundled text encoder and decoder) with torch as the denoiser,
so an engine's gain over torch is measured apart from the pipeline around it. Weights are safetensors (the
network is rebuilt from the spec in the file's metadata, never unpickled); LoRA students are written fused.
"""

from __future__ import annotations

import torch

from fewstep.export.context import Artifact, ExportContext
from fewstep.models.loading import save_model

DTYPES = {"fp32": torch.float32, "fp16": torch.float16}


def export(ctx: ExportContext, precision: str) -> Artifact:
    if not ctx.spec:
        raise ValueError("torch export needs the model's spec (ExportContext.spec) to rebuild the network")

    spec = {k: v for k, v in ctx.spec.items() if k != "lora"}  # the network is fused; save_model sets the rest
    path = ctx.out_dir / f".denoiser.torch-{precision}.tmp.safetensors"
    save_model(path, ctx.denoiser.model, spec, dtype=DTYPES[precision])
    info = {"format": "fewstep checkpoint (safetensors)", "torch": torch.__version__, "kind": spec["kind"],
            "compute_dtype": str(DTYPES[precision]).removeprefix("torch.")}  # fmt: skip
    return Artifact(path, "torch", precision, info)
