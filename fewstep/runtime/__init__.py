"""The torch-free runtime: numpy + one inference backend. It must never import torch, diffusers or transformers.

`Generator.from_bundle(DIR).generate(prompts, seeds)` runs an engine bundle written by `fewstep export`;
`bench.py` measures it and `server.py` (with `batcher.py`) serves it over HTTP (the serve extra).
"""

from fewstep.core.manifest import BundleError, read_manifest
from fewstep.core.noise import renoise_np, seeded_noise_np
from fewstep.runtime.engine import BackendUnavailable, Engine, EngineInputError
from fewstep.runtime.generator import Generator
from fewstep.runtime.samplers import consistency_np, euler_np

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
