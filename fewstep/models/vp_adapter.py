"""VP diffusion models (DDPM alphas; eps- or v-prediction) through the flow contract (docs/concepts/flow-contract.md).

For alpha_s = sqrt(abar_s), sigma_s = sqrt(1 - abar_s): flow time t = sigma_s / (alpha_s + sigma_s) and
z_s = (alpha_s + sigma_s) x_t. The diffusion timestep s for a flow time t is found by interpolating the
monotone table t(s) over the model's training steps, so the discrete timesteps of a diffusers scheduler map
exactly onto flow times and Euler in flow time reproduces DDIM (eta = 0) step for step.
"""

from __future__ import annotations

import torch
from torch import nn

from fewstep.models.contract import Cond, FlowModel, check_inputs
from fewstep.models.unet_flow import unet_kwargs


def flow_time_table(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """t(s) = sigma_s / (alpha_s + sigma_s) for every training step s (increasing in s)."""
    abar = alphas_cumprod.double()
    alpha, sigma = abar.sqrt(), (1 - abar).sqrt()
    return sigma / (alpha + sigma)


def flow_time_of(alphas_cumprod: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """Flow times of integer diffusion timesteps (e.g. a diffusers scheduler's `timesteps`)."""
    return flow_time_table(alphas_cumprod)[timesteps.long()].float()


def _interp(x: torch.Tensor, xp: torch.Tensor, fp: torch.Tensor) -> torch.Tensor:
    """np.interp for increasing xp, clamped at both ends (the segment index by counting, which ONNX exports,
    instead of searchsorted, which it does not)."""
    x = x.clamp(xp[0], xp[-1])
    i = (xp[None, :] < x[:, None]).sum(1).clamp(1, len(xp) - 1)
    x0, x1, f0, f1 = xp[i - 1], xp[i], fp[i - 1], fp[i]
    w = ((x - x0) / (x1 - x0)).clamp(0, 1)
    return f0 + w * (f1 - f0)


class VPFlowAdapter(nn.Module):
    """`v = adapter(x_t, t, cond)` for a diffusion model `denoiser(z_s, s, cond) -> eps_hat or v_pred`.

    `denoiser` follows the flow contract's signature but in diffusion terms: (z_s, s in training steps,
    cond). Flow times outside the table's range (t < t(0) or t > t(S-1)) are clamped to its ends: a VP model
    has no exact pure-noise (t = 1) or clean (t = 0) state, so samplers for VP teachers should start at
    `t_table[-1]` (what diffusers' schedulers do) rather than at t = 1.
    """

    def __init__(self, denoiser: FlowModel, alphas_cumprod: torch.Tensor, prediction_type: str = "epsilon"):
        super().__init__()
        if prediction_type not in ("epsilon", "v_prediction"):
            raise ValueError(f"prediction_type must be 'epsilon' or 'v_prediction'; got {prediction_type!r}")
        self.denoiser = denoiser
        self.prediction_type = prediction_type
        abar = alphas_cumprod.double()
        self.register_buffer("abar", abar, persistent=False)
        self.register_buffer("t_table", flow_time_table(abar), persistent=False)
        self.register_buffer("steps", torch.arange(len(abar), dtype=torch.float64), persistent=False)

    @property
    def guidance_dim(self) -> int | None:
        """Width of an embedded guidance input (a guidance-distilled UNet's `time_cond_proj_dim`), else None."""
        unet = getattr(self.denoiser, "unet", None)
        return None if unet is None else unet.config.time_cond_proj_dim

    def diffusion_timestep(self, t: torch.Tensor) -> torch.Tensor:
        """Continuous diffusion step s with t(s) = t."""
        return _interp(t.double(), self.t_table, self.steps)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: Cond) -> torch.Tensor:
        check_inputs(x, t, cond)
        # alpha, sigma exactly from t (VP: alpha^2 + sigma^2 = 1, sigma / alpha = t / (1 - t)), so that
        # x_t = (1 - t) x0_hat + t eps_hat holds at every t; the table only gives the network's timestep.
        t = t.double().clamp(self.t_table[0], self.t_table[-1])
        s = self.diffusion_timestep(t)
        r = ((1 - t) ** 2 + t**2).sqrt()  # hypot, spelled out for the ONNX exporter
        alpha = ((1 - t) / r).view(-1, 1, 1, 1)
        sigma = (t / r).view(-1, 1, 1, 1)
        z = ((alpha + sigma) * x.double()).to(x.dtype)
        # the step in float32 whatever x is: fp16 would round it to 0.5 above 512 (diffusers embeds it in float32)
        out = self.denoiser(z, s.float(), cond).double()
        if self.prediction_type == "epsilon":
            eps_hat = out
            x0_hat = (z.double() - sigma * eps_hat) / alpha
        else:
            x0_hat = alpha * z.double() - sigma * out
            eps_hat = sigma * z.double() + alpha * out
        return (eps_hat - x0_hat).to(x.dtype)


class DiffusersUNetDenoiser(nn.Module):
    """A diffusers `UNet2DConditionModel` as `denoiser(z_s, s, cond)` for `VPFlowAdapter` (raw timesteps)."""

    def __init__(self, unet: nn.Module):
        super().__init__()
        self.unet = unet

    def forward(self, z: torch.Tensor, s: torch.Tensor, cond: Cond) -> torch.Tensor:
        return self.unet(z, s, **unet_kwargs(self.unet, cond, z.dtype)).sample


def from_diffusers_unet(unet: nn.Module, scheduler, prediction_type: str | None = None) -> VPFlowAdapter:
    """Adapt an SD-style eps/v UNet given its diffusers scheduler (DDPM/DDIM/...: reads `alphas_cumprod`)."""
    kind = prediction_type or scheduler.config.prediction_type
    return VPFlowAdapter(DiffusersUNetDenoiser(unet), scheduler.alphas_cumprod, kind)
