"""Calibration data for int8 drawn from the student's *own* sampler (docs/concepts/methods/index.md, quantization).

The pipeline runs its real sampler rule (Euler or consistency re-noising) with its real guidance mode over
varied prompts and seeds, and every denoiser call is recorded: the inputs at each of its 1-4 timesteps, both
CFG branches when it runs CFG, the guidance input when it is embedded.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from fewstep.core.sampling_rules import STEP_SIZE_RULES
from fewstep.models.contract import Cond
from fewstep.models.datasets import make_dataset
from fewstep.models.pipeline import TorchPipeline, sampling_times


class _Recorder(nn.Module):
    """Wraps the flow model; stores each call's inputs as numpy arrays named like the engine's inputs."""

    def __init__(self, model: nn.Module, with_guidance: bool):
        super().__init__()
        self.model, self.with_guidance = model, with_guidance
        self.calls: list[dict[str, np.ndarray]] = []

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: Cond) -> torch.Tensor:
        item = {"x": x, "t": t, "text": cond.text, "text_mask": cond.text_mask}
        if self.with_guidance:
            item["guidance"] = cond.guidance
        self.calls.append({k: v.detach().float().cpu().numpy().copy() for k, v in item.items()})
        return self.model(x, t, cond)


def calibration_prompts(n: int, dataset: str = "shapes", seed: int = 1234) -> list[str]:
    """Varied captions of a built-in set (shapes: a seed apart from training and evaluation)."""
    ds = make_dataset(dataset, seed=seed, size=max(n, 1))
    return [ds.caption(i % len(ds)) for i in range(n)]


def record_sampler_inputs(
    pipe: TorchPipeline,
    prompts: list[str],
    seeds: list[int],
    guidance: float | None = None,
    batch_size: int = 8,
) -> tuple[list[dict[str, np.ndarray]], dict]:
    """-> (one input dict per denoiser call, a summary: timesteps seen, calls, samples, guidance)."""
    takes_scalar = pipe.guidance_mode == "embedded" or pipe.spec["sampler"].get("rule") in STEP_SIZE_RULES
    recorder = _Recorder(pipe.model, takes_scalar)
    original = pipe.model
    pipe.model = recorder
    try:
        pipe.generate(prompts, seeds, guidance=guidance, batch_size=batch_size)
    finally:
        pipe.model = original
    ts = sorted({round(float(t), 6) for c in recorder.calls for t in c["t"]}, reverse=True)
    summary = {
        "source": "student sampler",
        "rule": pipe.spec["sampler"].get("rule", "euler"),
        "timesteps": ts,
        "schedule": [round(float(t), 6) for t in sampling_times(pipe.spec, None)],
        "guidance_mode": pipe.guidance_mode,
        "guidance": pipe.default_guidance if guidance is None else guidance,
        "prompts": len(prompts),
        "calls": len(recorder.calls),
        "samples": int(sum(len(c["t"]) for c in recorder.calls)),
    }
    return recorder.calls, summary
