"""The torch-free runtime: numpy + one inference backend. It must never import torch, diffusers or transformers.

So far it holds the numpy samplers that engines will run; bundles, backends, `fewstep generate BUNDLE`,
`bench` and `serve` are added by the runtime issue on top of them.
"""

from ..noise import renoise_np, seeded_noise_np
from .samplers import consistency_np, euler_np

__all__ = ["consistency_np", "euler_np", "renoise_np", "seeded_noise_np"]
