"""The model contract, adapters for foreign models, presets, text encoders, datasets and samplers."""

from fewstep.models.contract import Cond, FlowModel
from fewstep.models.loading import load_model, save_model
from fewstep.models.pipeline import TorchPipeline
from fewstep.models.presets import PRESETS, get_preset
from fewstep.models.samplers import euler, heun, seeded_noise, uniform_timesteps
from fewstep.models.unet_flow import UNetFlowModel, build_unet_flow
from fewstep.models.vp_adapter import VPFlowAdapter, from_diffusers_unet

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
