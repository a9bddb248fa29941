"""Shared fixtures: tiny models and the (offline) MiniLM text encoder, built once per session."""

from __future__ import annotations

import os

import pytest
import torch

torch.set_num_threads(int(os.environ.get("FEWSTEP_TEST_THREADS", min(2, os.cpu_count() or 1))))
# exports shared by many bundles (the text encoder's ONNX graph) are cached per machine; tests keep their own
os.environ.setdefault("FEWSTEP_CACHE_DIR", os.path.join(os.path.dirname(__file__), "..", ".pytest_cache", "fewstep"))

TINY_UNET = {
    "sample_size": 16,
    "in_channels": 3,
    "out_channels": 3,
    "block_out_channels": [8, 16],
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"],
    "layers_per_block": 1,
    "norm_num_groups": 4,
    "attention_head_dim": 2,
    "cross_attention_dim": 16,
    "encoder_hid_dim": 24,
    "encoder_hid_dim_type": "text_proj",
}
TEXT_DIM, TOKENS = 24, 6


@pytest.fixture(scope="session")
def encoder():
    from fewstep.models.text_encoders import minilm

    return minilm(max_tokens=32)


@pytest.fixture
def tiny_model():
    from fewstep.models.unet_flow import build_unet_flow

    torch.manual_seed(0)
    return build_unet_flow(TINY_UNET).eval()


def tiny_spec(unet: dict = TINY_UNET, **extra) -> dict:
    """A complete checkpoint spec for a tiny pixel-space model with the built-in text encoder."""
    size = unet["sample_size"]
    return {
        "kind": "unet-flow",
        "unet": unet,
        "text_encoder": {"kind": "minilm", "max_tokens": 32},
        "image": {"channels": 3, "height": size, "width": size, "space": "pixel", "range": [-1, 1]},
        "sampler": {"rule": "euler", "default_steps": 4, "guidance": {"mode": "cfg", "default_scale": 3.0}},
        **extra,
    }


def random_cond(batch: int, seed: int = 0):
    from fewstep.models.contract import Cond

    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(batch, TOKENS)
    mask[:, -2:] = 0
    return Cond(torch.randn(batch, TOKENS, TEXT_DIM, generator=g), mask)
