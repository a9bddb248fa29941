"""The model contract, adapters for foreign models, presets, text encoders, datasets and samplers."""

from .contract import Cond, FlowModel
from .loading import load_model, save_model
from .pipeline import TorchPipeline
from .presets import PRESETS, get_preset
from .samplers import euler, heun, seeded_noise, uniform_timesteps
from .unet_flow import UNetFlowModel, build_unet_flow
from .vp_adapter import VPFlowAdapter, from_diffusers_unet

__all__ = [
    "PRESETS",
    "Cond",
    "FlowModel",
    "TorchPipeline",
    "UNetFlowModel",
    "VPFlowAdapter",
    "build_unet_flow",
    "euler",
    "from_diffusers_unet",
    "get_preset",
    "heun",
    "load_model",
    "save_model",
    "seeded_noise",
    "uniform_timesteps",
]
