"""diffusers `UNet2DConditionModel` used directly as a flow model (velocity prediction).

Timestep scaling: the UNet's sinusoidal time embedding was designed for integer steps in [0, 1000), so flow
time t in [0, 1] is passed as `t * timestep_scale` (default 1000), exactly as diffusers' SD3/FLUX flow
schedulers do (`FlowMatchEulerDiscreteScheduler.timesteps = sigmas * num_train_timesteps`).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .contract import Cond, check_inputs


def guidance_embedding(w: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of the guidance scale w for `timestep_cond` (diffusers' LCM pipelines'
    `get_guidance_scale_embedding`; LCM feeds w - 1 there: convert at the boundary when loading such a UNet)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=w.device) / (half - 1))
    args = (w.float() * 1000.0)[:, None] * freqs[None]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    return torch.nn.functional.pad(emb, (0, dim % 2))


class UNetFlowModel(nn.Module):
    """`v = model(x, t, cond)` around a diffusers `UNet2DConditionModel` trained to predict velocity."""

    def __init__(self, unet: nn.Module, timestep_scale: float = 1000.0):
        super().__init__()
        self.unet = unet
        self.timestep_scale = timestep_scale

    @property
    def channels(self) -> int:
        return int(self.unet.config.in_channels)

    @property
    def guidance_dim(self) -> int | None:
        return self.unet.config.time_cond_proj_dim

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: Cond) -> torch.Tensor:
        check_inputs(x, t, cond, self.channels)
        timestep_cond = None
        if self.guidance_dim is not None:
            if cond.guidance is None:
                raise ValueError("this model has an embedded guidance input: set cond.guidance (Cond.with_guidance(w))")
            timestep_cond = guidance_embedding(cond.guidance, self.guidance_dim).to(x.dtype)
        if self.unet.config.addition_embed_type in ("text_time", "image", "image_hint", "text_image"):
            raise NotImplementedError(
                f"UNets with addition_embed_type={self.unet.config.addition_embed_type!r} (SDXL-style extra "
                "conditioning) are not supported yet; they come with real latent teachers"
            )
        return self.unet(
            x,
            t * self.timestep_scale,
            encoder_hidden_states=cond.text,
            encoder_attention_mask=cond.text_mask,
            timestep_cond=timestep_cond,
        ).sample


def build_unet_flow(unet_config: dict) -> UNetFlowModel:
    from diffusers import UNet2DConditionModel

    return UNetFlowModel(UNet2DConditionModel(**unet_config))
