"""diffusers `UNet2DConditionModel` used directly as a flow model (velocity prediction).

Timestep scaling: the UNet's sinusoidal time embedding was designed for integer steps in [0, 1000), so flow
time t in [0, 1] is passed as `t * timestep_scale` (default 1000), exactly as diffusers' SD3/FLUX flow
schedulers do (`FlowMatchEulerDiscreteScheduler.timesteps = sigmas * num_train_timesteps`).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from fewstep.models.contract import Cond, check_inputs


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
        return self.unet(x, t * self.timestep_scale, **unet_kwargs(self.unet, cond, x.dtype)).sample


def unet_kwargs(unet: nn.Module, cond: Cond, dtype: torch.dtype) -> dict:
    """A `Cond` as the keyword arguments of `UNet2DConditionModel.forward`: text states and mask, the
    embedded guidance scale (`timestep_cond`), and SDXL's added conditioning (pooled text + size/crop ids)."""
    kwargs = {"encoder_hidden_states": cond.text, "encoder_attention_mask": cond.text_mask}
    gdim = unet.config.time_cond_proj_dim
    if gdim is not None:
        if cond.guidance is None:
            raise ValueError("this model has an embedded guidance input: set cond.guidance (Cond.with_guidance(w))")
        kwargs["timestep_cond"] = guidance_embedding(cond.guidance, gdim).to(dtype)
    extra = unet.config.addition_embed_type
    if extra == "text_time":
        if cond.pooled is None or cond.extra_ids is None:
            raise ValueError("this SDXL-style UNet needs cond.pooled and cond.extra_ids (size/crop ids)")
        kwargs["added_cond_kwargs"] = {"text_embeds": cond.pooled.to(dtype), "time_ids": cond.extra_ids.to(dtype)}
    elif extra is not None:
        raise NotImplementedError(f"UNets with addition_embed_type={extra!r} are not supported")
    return kwargs


def build_unet_flow(unet_config: dict) -> UNetFlowModel:
    from diffusers import UNet2DConditionModel  # train extra

    return UNetFlowModel(UNet2DConditionModel(**unet_config))
