"""LoRA students (the LCM-LoRA pattern): the teacher's own network, frozen, plus low-rank adapters (peft).

Training updates only the adapters (and tensors the teacher lacks, e.g. a guidance student's w projection), so
a teacher too large to fine-tune fully still fits: no optimizer state for the frozen weights, and the student
checkpoint holds the adapter alone, with the base model's path and sha256. `load_model` rebuilds the base,
attaches the adapter and fuses it (W + B A alpha/r), so generation and export see a plain network.
"""

from __future__ import annotations

from pathlib import Path

import torch

from fewstep.core.shipped import SHIPPED
from fewstep.models.model_kinds import network_key, network_of

# Every linear and conv layer of the attention, feed-forward and residual blocks (LCM-LoRA's choice for SD's UNet;
# the joint-attention projections for SD3's transformer). Embeddings, norms and in/out convs stay frozen.
_ATTENTION = ("to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2")
_JOINT = ("add_q_proj", "add_k_proj", "add_v_proj", "to_add_out", "ff_context.net.0.proj", "ff_context.net.2")
LORA_TARGETS = {
    "unet": (*_ATTENTION, "proj_in", "proj_out", "conv1", "conv2", "conv_shortcut", "time_emb_proj"),
    "transformer": (*_ATTENTION, *_JOINT),
}


def lora_config(rank: int, alpha: float, spec: dict):
    from peft import LoraConfig  # train extra

    if rank < 1:
        raise ValueError(f"LoRA rank must be >= 1; got {rank}")
    # init_lora_weights=True: B = 0, so the student starts exactly as its base
    return LoraConfig(r=rank, lora_alpha=alpha or rank, init_lora_weights=True,
                      target_modules=list(LORA_TARGETS[network_key(spec)]))  # fmt: skip


def add_lora(model: torch.nn.Module, spec: dict, rank: int, alpha: float, extra: list[str] = ()) -> None:
    """Attach adapters to `model`'s network in place; freeze everything but them and the `extra` parameters."""
    try:
        network_of(model).add_adapter(lora_config(rank, alpha, spec))
    except ImportError as e:
        raise ImportError("LoRA students need peft: pip install 'fewstep[train]' (or pip install peft)") from e
    train = set(extra)
    for name, p in model.named_parameters():
        p.requires_grad_("lora_" in name or name in train)


def is_adapter_tensor(name: str, extra: list[str]) -> bool:
    return "lora_" in name or name in extra


def adapter_state(model: torch.nn.Module, extra: list[str]) -> dict[str, torch.Tensor]:
    """The tensors a LoRA student's checkpoint holds: the adapters and the trained tensors its base lacks."""
    return {k: v for k, v in model.state_dict().items() if is_adapter_tensor(k, extra)}


def base_params(model: torch.nn.Module) -> int:
    """Parameters of the network once fused (adapters excluded)."""
    return sum(p.numel() for n, p in model.named_parameters() if "lora_" not in n)


def fuse_lora(model: torch.nn.Module) -> torch.nn.Module:
    """Merge every adapter into its layer's weights and drop the adapter modules (a plain network again)."""
    net = network_of(model)
    net.fuse_lora()
    net.unload_lora()
    return model


def base_reference(teacher: str, resolved: Path) -> str:
    """How a student names its base: a shipped name as is, anything else as an absolute path."""

    return teacher if teacher in SHIPPED else str(Path(resolved).resolve())
