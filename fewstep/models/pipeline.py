"""Prompts + seeds -> images with a torch flow model: the reference every engine is compared against."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from fewstep.core.imaging import decode_chunks, to_uint8
from fewstep.core.sampling_rules import resolve_guidance as resolve_sampler_guidance
from fewstep.core.sampling_rules import schedule, validate_request
from fewstep.models.contract import FlowModel
from fewstep.models.diffusers_dir import LatentCodec, load_codec
from fewstep.models.loading import load_model
from fewstep.models.samplers import consistency, get_sampler, interval, seeded_noise, seeded_renoise
from fewstep.models.text_encoders import TextEncoder, load_text_encoder


def sampling_times(spec: dict, steps: int | None) -> torch.Tensor:
    """The model's own schedule or `steps` evenly spaced (consistency: on its grid); see `sampling_rules`."""
    return torch.from_numpy(schedule(spec["sampler"], steps))


def resolve_guidance(spec: dict, guidance: float | None) -> float:
    """Check a requested CFG scale against the model's guidance mode; None -> its default."""
    return resolve_sampler_guidance(spec["sampler"], guidance)


class TorchPipeline:
    """A flow model, its text encoder and its spec; `generate` is deterministic per (prompt, seed).
    Latent models (spec `latent`) sample latents and decode them with their VAE (`codec`, loaded from the
    spec when not given)."""

    def __init__(self, model: FlowModel, spec: dict, encoder: TextEncoder, codec: LatentCodec | None = None):
        self.model, self.spec, self.encoder = model, spec, encoder
        self.codec = codec if codec is not None or "latent" not in spec else load_codec(spec)
        img = spec["image"]
        self.shape = (img["channels"], img["height"], img["width"])

    @classmethod
    def from_checkpoint(cls, name_or_path: str | Path) -> TorchPipeline:
        model, spec = load_model(name_or_path)
        return cls(model, spec, load_text_encoder(spec["text_encoder"]))

    def release(self) -> None:
        """Drop the torch networks (an export that needs only their ONNX graphs from here on); the spec stays."""
        self.model = self.encoder = self.codec = None  # type: ignore[assignment]

    @property
    def default_guidance(self) -> float:
        return resolve_guidance(self.spec, None)

    @property
    def guidance_mode(self) -> str:
        return self.spec["sampler"].get("guidance", {}).get("mode", "cfg")

    @torch.no_grad()
    def sample(
        self, cond, seeds: list[int], times: torch.Tensor, guidance: float, sampler: str | None = None
    ) -> torch.Tensor:
        """Run the model's sampler rule on encoded prompts -> x0 (B, C, H, W) in [-1, 1]."""
        noise = seeded_noise(seeds, self.shape)
        rule = self.spec["sampler"].get("rule")
        if rule == "consistency":
            return consistency(self.model, noise, times, cond, seeded_renoise(seeds, self.shape))
        if rule == "interval":
            return interval(self.model, noise, times, cond)
        if self.guidance_mode == "embedded":
            return get_sampler(sampler or "euler")(self.model, noise, times, cond.with_guidance(guidance))
        null = self.encoder.null(len(seeds)) if guidance != 1.0 else None
        return get_sampler(sampler or "euler")(self.model, noise, times, cond, guidance, null)

    @torch.no_grad()
    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Samples -> images in [-1, 1]: the VAE decoder for latent models (a few images per call, see
        `decode_chunks`), identity in pixel space."""
        if self.codec is None:
            return x
        per_image = x.shape[-1] * x.shape[-2] * self.codec_factor**2
        return torch.cat([self.codec.decode(x[c]) for c in decode_chunks(len(x), per_image)])

    @property
    def codec_factor(self) -> int:
        latent = self.spec.get("latent", {})
        return int(latent.get("downsample", 8))

    @torch.no_grad()
    def generate(
        self,
        prompts: list[str],
        seeds: list[int],
        steps: int | None = None,
        guidance: float | None = None,
        sampler: str | None = None,
        batch_size: int = 64,
        on_batch: Callable[[int], None] | None = None,
    ) -> np.ndarray:
        """-> uint8 (N, H, W, C). `steps` None = the model's own schedule (a student's trained steps)."""
        guidance = resolve_guidance(self.spec, guidance)
        validate_request(prompts, seeds, 1 if steps is None else steps, guidance)
        if sampler is not None:
            get_sampler(sampler)  # unknown names fail before any work
            rule = self.spec["sampler"].get("rule", "euler")
            if rule != "euler":
                raise ValueError(f"a model with the {rule} rule samples with its own rule; leave --sampler out")
        times = sampling_times(self.spec, steps)
        out = []
        for i in range(0, len(prompts), batch_size):
            p, s = prompts[i : i + batch_size], seeds[i : i + batch_size]
            x = self.sample(self.encoder.encode(p), s, times, guidance, sampler)
            out.append(to_uint8(self.decode(x).numpy()))
            if on_batch:
                on_batch(len(p))
        return np.concatenate(out)
