"""A tiny teacher (MiniLM text states, 16x16 images) and its pair cache, for the distillation tests."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from tests.conftest import TINY_UNET, tiny_spec

TINY_TEACHER = dict(TINY_UNET, encoder_hid_dim=384)
TINY_STUDENT = dict(TINY_TEACHER, block_out_channels=[4, 8], norm_num_groups=2, cross_attention_dim=8)


def make_tiny_teacher(root: Path) -> tuple[Path, Path, Path]:
    """-> (teacher checkpoint, student config json, pair cache dir); a few seconds on one core."""
    from fewstep.compress.pairs import PairsConfig, build_pairs
    from fewstep.models.loading import save_model
    from fewstep.models.unet_flow import build_unet_flow

    torch.manual_seed(0)
    teacher = root / "teacher.safetensors"
    save_model(teacher, build_unet_flow(TINY_TEACHER), tiny_spec(TINY_TEACHER, name="tiny-teacher"))
    student_json = root / "student.json"
    student_json.write_text(json.dumps(TINY_STUDENT))
    pairs = build_pairs(
        PairsConfig(teacher=str(teacher), n=24, steps=2, shard_size=8, batch_size=8), root / "pairs", progress=False
    )
    return teacher, student_json, pairs
