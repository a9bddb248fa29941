"""Save and load flow models as single-file fewstep checkpoints; resolve the shipped models by name.

A local diffusers pipeline directory (`model_index.json`) is a model source too: `load_model(dir)` gives its
denoiser under the flow contract with a spec like a checkpoint's (see `diffusers_dir`).
"""

from __future__ import annotations

from pathlib import Path

import torch

from fewstep import __version__
from fewstep.core.fsio import sha256_of
from fewstep.core.shipped import SHIPPED
from fewstep.models.checkpoint import (
    CHECKPOINT_FORMAT,
    CheckpointError,
    load_state_strict,
    load_tensors,
    read_meta,
    save_tensors,
)
from fewstep.models.diffusers_dir import is_pipeline_dir, pipeline_model, pipeline_spec, source_sha256
from fewstep.models.lora import adapter_state, add_lora, base_params, fuse_lora, is_adapter_tensor
from fewstep.models.model_kinds import KINDS, build_model


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
    path = Path(path)
    return source_sha256(path) if is_pipeline_dir(path) else sha256_of(path)


def model_spec(name_or_path: str | Path) -> dict:
    """A model's spec without loading its weights (pipeline directories: from their configs)."""
    path = resolve_checkpoint(name_or_path)
    return pipeline_spec(path) if is_pipeline_dir(path) else read_meta(path)


def save_model(path: str | Path, model: torch.nn.Module, spec: dict, dtype: torch.dtype = torch.float32) -> None:
    """Write weights (+ the spec in the file's metadata) atomically; `spec` must hold `kind` and its network
    config (`unet` or `transformer`)."""
    lora = spec.get("lora")
    if lora:  # a LoRA student: the adapter alone; the base model comes from lora["base"]
        state = adapter_state(model, lora.get("extra", []))
        lora = dict(lora, adapter_params=sum(v.numel() for v in state.values()))
        meta = dict(spec, lora=lora, format=CHECKPOINT_FORMAT, params=base_params(model))
    else:
        state = model.state_dict()
        meta = dict(spec, format=CHECKPOINT_FORMAT, params=sum(p.numel() for p in model.parameters()))
    meta.setdefault("created_by", {"fewstep": __version__})
    tensors = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
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
    tensors = {k: v.float() if v.is_floating_point() else v for k, v in tensors.items()}
    model = _load_lora_student(path, spec, tensors) if spec.get("lora") else build_model(spec)
    if not spec.get("lora"):
        load_state_strict(model, tensors, str(path))
    return model.eval().requires_grad_(False), spec


def _load_lora_student(path: Path, spec: dict, adapter: dict[str, torch.Tensor]) -> torch.nn.Module:
    """Base model + the checkpoint's adapter, fused into a plain network."""

    lora = spec["lora"]
    where = f"LoRA student {path} needs its base model {lora['base']!r}"
    try:
        base_path = resolve_checkpoint(lora["base"])
    except CheckpointError as e:
        raise CheckpointError(f"{where}, which is missing ({e}); restore it, or export the student where it exists "
                              "(bundles hold the fused network)") from None  # fmt: skip
    if model_sha256(base_path) != lora["base_sha256"]:
        raise CheckpointError(f"{where}, but {base_path} has changed since training (sha256 differs): the adapter "
                              "only fits the exact weights it was trained on")  # fmt: skip
    base, _ = load_model(base_path)
    # a fresh network, never the base itself: a pipeline base shares the cached pipeline's modules, and fusing
    # into it would change the teacher for everyone else in this process
    model = build_model(spec)
    extra = lora.get("extra", [])
    result = model.load_state_dict(base.state_dict(), strict=False)
    missing = [k for k in result.missing_keys if k not in extra]
    if missing or result.unexpected_keys:
        raise CheckpointError(f"{where}, but its network does not match the student's "
                              f"(e.g. {(missing or result.unexpected_keys)[0]})")  # fmt: skip
    del base
    add_lora(model, spec, int(lora["rank"]), float(lora["alpha"]), extra)
    wanted = {k for k in model.state_dict() if is_adapter_tensor(k, extra)}
    if set(adapter) != wanted:
        odd = sorted(set(adapter) ^ wanted)
        raise CheckpointError(f"{path}: adapter tensors do not match a rank-{lora['rank']} LoRA of the student "
                              f"(e.g. {odd[0]}); the file is damaged or from another fewstep")  # fmt: skip
    model.load_state_dict(adapter, strict=False)
    return fuse_lora(model)
