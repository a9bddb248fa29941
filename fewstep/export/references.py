"""The torch student's side of every gate, computed once per export and only when needed: the inputs its own
sampler feeds the denoiser (int8 calibration, speed-gate batches) and its final images (the parity reference)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from fewstep.core.prompts import read_prompts_file
from fewstep.export.calibration import calibration_prompts, record_sampler_inputs
from fewstep.export.config import ExportConfig
from fewstep.models.pipeline import TorchPipeline, sampling_times

PARITY_SEED = 4321  # prompts for the parity gate: a shapes seed apart from calibration (1234) and evaluation


class StudentReference:
    def __init__(self, pipe: TorchPipeline, cfg: ExportConfig, log: Callable[[str], None]):
        self.pipe, self.cfg, self.log = pipe, cfg, log
        self.parity_prompts = calibration_prompts(cfg.parity_prompts, cfg.calibration_dataset, PARITY_SEED)
        self._calibration: tuple[list[dict[str, np.ndarray]], dict[str, Any]] | None = None
        self._images: np.ndarray | None = None
        self._latents: torch.Tensor | None = None

    def calibration(self) -> tuple[list[dict[str, np.ndarray]], dict[str, Any]]:
        """(one input dict per denoiser call of the student's sampler, a summary recorded in the manifest)."""
        if self._calibration is None:
            prompts = self._calibration_prompts()
            self.log(f"calibration: running the student's sampler on {len(prompts)} prompts")
            self._calibration = record_sampler_inputs(self.pipe, prompts, list(range(len(prompts))))
        return self._calibration

    def _calibration_prompts(self) -> list[str]:
        if self.cfg.calibration_prompts_file:
            return read_prompts_file(self.cfg.calibration_prompts_file)[: self.cfg.calibration_prompts]
        return calibration_prompts(self.cfg.calibration_prompts, self.cfg.calibration_dataset)

    def images(self) -> np.ndarray:
        """The torch student's final images (float) for the parity prompts, seeds 0..n-1."""
        if self._images is None:
            p = self.parity_prompts
            times, w = sampling_times(self.pipe.spec, None), self.pipe.default_guidance
            with torch.no_grad():
                x = self.pipe.sample(self.pipe.encoder.encode(p), list(range(len(p))), times, w)
                self._latents = x
                self._images = self.pipe.decode(x).numpy()  # latent models: the images, as the runtime's
        return self._images

    def latents(self) -> np.ndarray:
        """The student's samples before decoding (latent models: what an image decoder is fed)."""
        self.images()
        assert self._latents is not None
        return self._latents.numpy()
