"""Model kinds a checkpoint spec can name, each rebuilt from its spec alone, all under the flow contract.

- `unet-flow`: a `UNet2DConditionModel` that predicts velocity (the built-in models; flow-matching UNets);
- `unet-vp`: an eps- or v-prediction UNet (SD 1.x/2.x/SDXL) behind `VPFlowAdapter` (its DDPM alphas come
  from the scheduler config in the spec);
- `transformer-flow`: an SD3-style `SD3Transformer2DModel` flow-matching transformer.
"""

from __future__ import annotations

import torch
from torch import nn

from fewstep.models.contract import Cond, check_inputs
from fewstep.models.unet_flow import UNetFlowModel
from fewstep.models.vp_adapter import DiffusersUNetDenoiser, VPFlowAdapter

KINDS = ("unet-flow", "unet-vp", "transformer-flow")


class TransformerFlowModel(nn.Module):
    """`v = model(x, t, cond)` around an SD3-style transformer (timestep = t * 1000, as diffusers' flow
    schedulers pass `sigmas * num_train_timesteps`); `cond.pooled` feeds its pooled projection."""

    def __init__(self, transformer: nn.Module, timestep_scale: float = 1000.0):
        super().__init__()
        self.transformer = transformer
        self.timestep_scale = timestep_scale

    @property
    def channels(self) -> int:
        return int(self.transformer.config.in_channels)

    guidance_dim = None

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: Cond) -> torch.Tensor:
        check_inputs(x, t, cond, self.channels)
        if cond.pooled is None:
            raise ValueError("an SD3-style transformer needs cond.pooled (the pooled text embedding)")
        return self.transformer(
            hidden_states=x,
            encoder_hidden_states=cond.text,
            pooled_projections=cond.pooled,
            timestep=t * self.timestep_scale,
        ).sample


def alphas_cumprod(scheduler_config: dict) -> torch.Tensor:
    """The DDPM cumulative alphas a scheduler config describes (beta schedule, range, steps)."""
    from diffusers import DDPMScheduler  # train extra

    return DDPMScheduler.from_config(scheduler_config).alphas_cumprod


def network_key(spec: dict) -> str:
    return "transformer" if spec["kind"] == "transformer-flow" else "unet"


def build_network(spec: dict) -> nn.Module:
    """The bare diffusers network of a spec, randomly initialised."""
    kind = spec.get("kind")
    if kind not in KINDS:
        raise ValueError(f"unknown model kind {kind!r}; fewstep builds {', '.join(KINDS)}")
    if kind == "transformer-flow":
        from diffusers import SD3Transformer2DModel  # train extra

        return SD3Transformer2DModel.from_config(spec["transformer"])
    from diffusers import UNet2DConditionModel  # train extra

    return UNet2DConditionModel.from_config(spec["unet"])


def wrap_denoiser(net: nn.Module, spec: dict) -> nn.Module:
    """A diffusers network under the flow contract, as the spec's kind says."""
    kind = spec["kind"]
    scale = float(spec.get("flow", {}).get("timestep_scale", 1000.0))
    if kind == "unet-flow":
        return UNetFlowModel(net, scale)
    if kind == "unet-vp":
        vp = spec["vp"]
        return VPFlowAdapter(DiffusersUNetDenoiser(net), alphas_cumprod(vp["scheduler"]), vp["prediction_type"])
    if kind == "transformer-flow":
        return TransformerFlowModel(net, scale)
    raise ValueError(f"unknown model kind {kind!r}; fewstep builds {', '.join(KINDS)}")


def build_model(spec: dict) -> nn.Module:
    return wrap_denoiser(build_network(spec), spec)


def network_of(model: nn.Module) -> nn.Module:
    """The diffusers network inside a wrapped model (what LoRA and slicing operate on)."""
    if isinstance(model, VPFlowAdapter):
        return model.denoiser.unet
    if isinstance(model, TransformerFlowModel):
        return model.transformer
    return model.unet
