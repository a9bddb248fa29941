"""Network presets: diffusers `UNet2DConditionModel` configs (Stable Diffusion's architecture, scaled down).

Sizes were chosen from measured cost on a 2-core CPU (docs/reference/toolchain.md and `fewstep info`): the teacher
trains to good prompt adherence in about an hour; the students have ~1/4 and ~1/10 of its parameters.
"""

from __future__ import annotations

from dataclasses import dataclass, field

TEXT_DIM = 384  # MiniLM token states


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    unet: dict = field(hash=False)
    image_size: int = 32
    channels: int = 3


def _unet(channels: tuple[int, int, int], groups: int, heads: int, cross_dim: int) -> dict:
    """A three-resolution UNet (32 -> 16 -> 8) with cross-attention only at 8x8 and in the middle block."""
    return {
        "sample_size": 32,
        "in_channels": 3,
        "out_channels": 3,
        "block_out_channels": list(channels),
        "down_block_types": ["DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"],
        "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"],
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "layers_per_block": 1,
        "norm_num_groups": groups,
        "attention_head_dim": heads,  # diffusers' legacy name: the number of heads
        "cross_attention_dim": cross_dim,
        # MiniLM's 384-d states are projected once to the (smaller) cross-attention width.
        "encoder_hid_dim": TEXT_DIM,
        "encoder_hid_dim_type": "text_proj",
    }


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("teacher", "shapes/digits teacher, 32x32 RGB", _unet((32, 64, 64), 16, 4, 128)),
        Preset("student-s", "slim student, <= 1/4 of the teacher's parameters", _unet((16, 32, 32), 8, 2, 32)),
        Preset("student-xs", "slim student, ~1/10 of the teacher's parameters", _unet((10, 20, 20), 2, 2, 32)),
    )
}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]
