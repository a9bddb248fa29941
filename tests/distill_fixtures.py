"""A tiny teacher (MiniLM text states, 16x16 images) and its pair cache, and a few-step distillation run,
for the distillation tests."""

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


def distill_tiny(teacher, out: Path, method: str, resume: bool = False, **overrides) -> Path:
    """A few optimizer steps of `method` from `teacher` (a checkpoint or pipeline directory) into `out`."""
    from fewstep.compress.distill import distill, get_method
    from fewstep.core.config import field_names

    fields = dict(teacher=str(teacher), student="same", dataset_size=32, steps=4, batch_size=4, checkpoint_every=2,
                  sample_every=4, warmup_steps=1, verdict_prompts=2)  # fmt: skip
    known = field_names(get_method(method).config)  # the tiny defaults of the fields this method has
    cfg = get_method(method).config(**{**{k: v for k, v in fields.items() if k in known}, **overrides})
    return distill(cfg, out, resume=resume, progress=False)
