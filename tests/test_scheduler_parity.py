"""The adapters against diffusers' own schedulers, step by step."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY_UNET, random_cond

from fewstep.models.samplers import euler
from fewstep.models.unet_flow import build_unet_flow
from fewstep.models.vp_adapter import flow_time_of, from_diffusers_unet


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_euler_on_adapted_vp_model_equals_ddim(prediction_type):
    """DDIM (eta = 0) is Euler in flow time on t = sigma / (alpha + sigma) with x = z / (alpha + sigma)."""
    from diffusers import DDIMScheduler

    torch.manual_seed(0)
    unet = build_unet_flow(TINY_UNET).unet.eval()
    sched = DDIMScheduler(prediction_type=prediction_type, set_alpha_to_one=True, clip_sample=False)
    sched.set_timesteps(10)
    cond = random_cond(2)
    z = torch.randn(2, 3, 16, 16, dtype=torch.float32) * sched.init_noise_sigma
    adapter = from_diffusers_unet(unet, sched).eval()
    ts = torch.cat([flow_time_of(sched.alphas_cumprod, sched.timesteps), torch.zeros(1)])
    abar = sched.alphas_cumprod[sched.timesteps[0]]
    x = z / (abar.sqrt() + (1 - abar).sqrt())  # flow state of the same point
    with torch.no_grad():
        for i, k in enumerate(sched.timesteps):
            out = unet(z, k, encoder_hidden_states=cond.text, encoder_attention_mask=cond.text_mask).sample
            z = sched.step(out, k, z, eta=0.0).prev_sample
            x = euler(adapter, x, ts[i : i + 2], cond)
            prev = sched.timesteps[i + 1] if i + 1 < len(sched.timesteps) else None
            abar_prev = sched.alphas_cumprod[prev] if prev is not None else torch.tensor(1.0)
            scale = abar_prev.sqrt() + (1 - abar_prev).sqrt()
            torch.testing.assert_close(x * scale, z, atol=5e-5, rtol=1e-4)  # float32 rounding over 10 steps


def test_euler_on_flow_model_equals_flow_match_euler_scheduler():
    from diffusers import FlowMatchEulerDiscreteScheduler

    torch.manual_seed(0)
    model = build_unet_flow(TINY_UNET).eval()
    sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)
    sched.set_timesteps(8)
    cond = random_cond(2)
    x0 = torch.randn(2, 3, 16, 16)
    x_sched, x_ours = x0.clone(), x0.clone()
    with torch.no_grad():
        for i, k in enumerate(sched.timesteps):
            out = model.unet(x_sched, k, encoder_hidden_states=cond.text, encoder_attention_mask=cond.text_mask).sample
            x_sched = sched.step(out, k, x_sched).prev_sample
            x_ours = euler(model, x_ours, sched.sigmas[i : i + 2].float(), cond)
            torch.testing.assert_close(x_ours, x_sched, atol=1e-5, rtol=1e-5)
