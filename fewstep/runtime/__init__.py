"""The torch-free runtime: numpy + one inference backend. It must never import torch, diffusers or transformers.

`Generator.from_bundle(DIR).generate(prompts, seeds)` runs an engine bundle written by `fewstep export`;
the HTTP server, `fewstep bench` and more backends come with the runtime issue on top of it.
"""

from ..noise import renoise_np, seeded_noise_np
from .bundle import BundleError, read_manifest
from .engine import BackendUnavailable, Engine, EngineInputError
from .generator import Generator
from .samplers import consistency_np, euler_np

__all__ = [
    "BackendUnavailable",
    "BundleError",
    "Engine",
    "EngineInputError",
    "Generator",
    "consistency_np",
    "euler_np",
    "read_manifest",
    "renoise_np",
    "seeded_noise_np",
]
