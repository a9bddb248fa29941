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


@pytest.fixture(scope="session")
def tiny_teacher_files(tmp_path_factory):
    """(teacher checkpoint, student config json, pair cache dir) of the tiny distillation teacher, built once per
    session; read it, do not change it (`tiny_teacher` gives a private copy)."""
    from tests.distill_fixtures import make_tiny_teacher

    return make_tiny_teacher(tmp_path_factory.mktemp("tiny-teacher"))


@pytest.fixture
def tiny_teacher(tiny_teacher_files, tmp_path):
    """A private copy of the tiny teacher and its pairs, for a test that moves or damages them."""
    import shutil

    teacher, student, pairs = tiny_teacher_files
    root = tmp_path / "tiny-teacher"
    root.mkdir()
    shutil.copyfile(teacher, root / teacher.name)
    shutil.copyfile(student, root / student.name)
    shutil.copytree(pairs, root / pairs.name)
    return root / teacher.name, root / student.name, root / pairs.name


@pytest.fixture(scope="session")
def served_bundle(tmp_path_factory):
    """A one-engine (ONNX fp32) bundle of a tiny CFG model, exported once per session; read it, do not change it."""
    from fewstep.export.bundle import BundleExport
    from fewstep.export.config import ExportConfig
    from fewstep.models.loading import save_model
    from fewstep.models.unet_flow import build_unet_flow
    from tests.distill_fixtures import TINY_TEACHER

    root = tmp_path_factory.mktemp("served")
    torch.manual_seed(1)
    ckpt = root / "tiny.safetensors"
    cfg_sampler = {"rule": "euler", "timesteps": [1.0, 0.5, 0.0], "guidance": {"mode": "cfg", "default_scale": 3.0}}
    save_model(ckpt, build_unet_flow(TINY_TEACHER), tiny_spec(TINY_TEACHER, name="tiny-cfg", sampler=cfg_sampler))
    cfg = ExportConfig(to=("onnx",), precision=("fp32",), parity_prompts=2, max_batch=8)
    BundleExport(str(ckpt), root / "b", cfg, "test", log=lambda _m: None).run()
    return root / "b"
