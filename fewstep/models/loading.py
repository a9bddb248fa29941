"""Save and load flow models as single-file fewstep checkpoints; resolve the shipped models by name.

A local diffusers pipeline directory (`model_index.json`) is a model source too: `load_model(dir)` gives its
denoiser under the flow contract with a spec like a checkpoint's (see `diffusers_dir`).
"""

from __future__ import annotations

from pathlib import Path

import torch

from .. import __version__
from .checkpoint import CHECKPOINT_FORMAT, CheckpointError, load_state_strict, load_tensors, save_tensors
from .diffusers_dir import is_pipeline_dir, pipeline_model, source_sha256
from .model_kinds import KINDS, build_model

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
SHIPPED = {
    "shapes32-teacher": WEIGHTS_DIR / "shapes32-teacher.safetensors",
    "shapes32-progressive-4step": WEIGHTS_DIR / "shapes32-progressive-4step.safetensors",
    "shapes32-slimflow": WEIGHTS_DIR / "shapes32-slimflow.safetensors",
    "shapes32-judge": WEIGHTS_DIR / "shapes32-judge.safetensors",
    "digits32-judge": WEIGHTS_DIR / "digits32-judge.safetensors",
}


def resolve_checkpoint(name_or_path: str | Path) -> Path:
    """A shipped model name (e.g. `shapes32-teacher`), a path to a `.safetensors` checkpoint (a run directory
    means its `model.safetensors`), or a local diffusers pipeline directory (returned as is)."""
    key = str(name_or_path)
    if key in SHIPPED:
        path = SHIPPED[key]
        if not path.is_file():
            raise CheckpointError(
                f"shipped model {key!r} is missing at {path}; it comes with the fewstep source tree "
                "(fewstep/weights/), reinstall from it or pass a checkpoint path"
            )
        return path
    path = Path(key)
    if not path.exists():
        raise CheckpointError(f"{key!r} is neither a shipped model ({', '.join(SHIPPED)}) nor an existing file")
    if path.is_dir() and not is_pipeline_dir(path):
        path = path / "model.safetensors"
    return path


def model_sha256(path: str | Path) -> str:
    """Identity of a resolved model source: the checkpoint file's sha256, or a pipeline's denoiser files'."""
    from ..runtime.bundle import sha256_of

    path = Path(path)
    return source_sha256(path) if is_pipeline_dir(path) else sha256_of(path)


def save_model(path: str | Path, model: torch.nn.Module, spec: dict, dtype: torch.dtype = torch.float32) -> None:
    """Write weights (+ the spec in the file's metadata) atomically; `spec` must hold `kind` and its network
    config (`unet` or `transformer`)."""
    meta = dict(spec, format=CHECKPOINT_FORMAT, params=sum(p.numel() for p in model.parameters()))
    meta.setdefault("created_by", {"fewstep": __version__})
    tensors = {k: v.to(dtype) if v.is_floating_point() else v for k, v in model.state_dict().items()}
    save_tensors(path, tensors, meta)


def load_model(name_or_path: str | Path) -> tuple[torch.nn.Module, dict]:
    """-> (model in eval mode, float32 on CPU; its spec dict)."""
    path = resolve_checkpoint(name_or_path)
    if is_pipeline_dir(path):
        model, spec = pipeline_model(path)
        return model.eval().requires_grad_(False), spec
    tensors, spec = load_tensors(path)
    if spec.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} has format {spec.get('format')!r}; this fewstep reads {CHECKPOINT_FORMAT!r}")
    if spec.get("kind") not in KINDS:
        raise CheckpointError(f"{path} holds a {spec.get('kind')!r} model; this command needs one of {KINDS}")
    net = "transformer" if spec["kind"] == "transformer-flow" else "unet"
    missing = [k for k in (net, "image", "sampler", "text_encoder") if k not in spec]
    if missing:
        raise CheckpointError(f"{path} is missing the spec field(s) {', '.join(missing)}; it is incomplete or damaged")
    model = build_model(spec)
    load_state_strict(model, {k: v.float() if v.is_floating_point() else v for k, v in tensors.items()}, str(path))
    return model.eval().requires_grad_(False), spec
