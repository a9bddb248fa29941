"""The published architectures of the SD family, as constructor arguments of the diffusers / transformers classes.

Random weights in these shapes have the real parameter counts, FLOPs, memory and export behaviour (quality needs
the trained weights, which cannot be downloaded here). Every value below is the one in the model's published
`config.json` (Hugging Face repositories named in `SOURCES`); `tests/test_real_configs.py` checks the parameter
counts against the published figures.
"""

from __future__ import annotations

from typing import Any

SOURCES = {
    "sd15": "stable-diffusion-v1-5/stable-diffusion-v1-5",
    "sd21": "stabilityai/stable-diffusion-2-1 (768x768, v-prediction)",
    "sd-turbo": "stabilityai/sd-turbo (SD 2.1 architecture at 512x512)",
    "sdxl": "stabilityai/stable-diffusion-xl-base-1.0",
    "sd3-medium": "stabilityai/stable-diffusion-3-medium-diffusers (without its T5-XXL encoder)",
    "bk-sdm-small": "nota-ai/bk-sdm-small (SD 1.5 with blocks removed)",
    "bk-sdm-tiny": "nota-ai/bk-sdm-tiny",
}

_SD_DOWN = ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",)
_SD_UP = ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3

SD15_UNET: dict[str, Any] = dict(
    sample_size=64, in_channels=4, out_channels=4, block_out_channels=(320, 640, 1280, 1280), layers_per_block=2,
    down_block_types=_SD_DOWN, up_block_types=_SD_UP, cross_attention_dim=768, attention_head_dim=8,
    norm_num_groups=32, norm_eps=1e-5, flip_sin_to_cos=True, freq_shift=0, downsample_padding=1,
)  # fmt: skip
SD21_UNET: dict[str, Any] = dict(
    SD15_UNET, sample_size=96, cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20),
    use_linear_projection=True, upcast_attention=True,
)  # fmt: skip
SD_TURBO_UNET: dict[str, Any] = dict(SD21_UNET, sample_size=64, upcast_attention=False)
SDXL_UNET: dict[str, Any] = dict(
    sample_size=128, in_channels=4, out_channels=4, block_out_channels=(320, 640, 1280), layers_per_block=2,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
    use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816, norm_num_groups=32, flip_sin_to_cos=True, freq_shift=0,
)  # fmt: skip
# BK-SDM (Kim et al. 2023): SD 1.5 with one ResNet+attention pair removed per down stage and per up stage
# (layers_per_block 1, so 2 per up stage), "small" also without the mid block, "tiny" also without the 1280 stage
BK_SDM_SMALL_UNET: dict[str, Any] = dict(SD15_UNET, layers_per_block=1, mid_block_type=None)
BK_SDM_TINY_UNET: dict[str, Any] = dict(
    BK_SDM_SMALL_UNET, block_out_channels=(320, 640, 1280), down_block_types=_SD_DOWN[:3], up_block_types=_SD_UP[1:],
)  # fmt: skip

SD3_MEDIUM_TRANSFORMER: dict[str, Any] = dict(
    sample_size=128, patch_size=2, in_channels=16, out_channels=16, num_layers=24, attention_head_dim=64,
    num_attention_heads=24, joint_attention_dim=4096, caption_projection_dim=1536, pooled_projection_dim=2048,
    pos_embed_max_size=192,
)  # fmt: skip


def vae(sample_size: int, scaling_factor: float = 0.18215, latent_channels: int = 4,
        shift_factor: float | None = None) -> dict[str, Any]:  # fmt: skip
    """SD's AutoencoderKL (83.7M parameters; SD3's has 16 latent channels)."""
    out = dict(
        in_channels=3, out_channels=3, latent_channels=latent_channels, block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2,
        norm_num_groups=32, sample_size=sample_size, scaling_factor=scaling_factor,
    )  # fmt: skip
    if shift_factor is not None:
        out.update(shift_factor=shift_factor, use_quant_conv=False, use_post_quant_conv=False)
    return out


# CLIP text towers: ViT-L/14 (SD 1.x, SDXL's first, SD3's first), OpenCLIP ViT-H/14 (SD 2.x, 23 of its 24 layers
# as published), OpenCLIP ViT-bigG/14 (SDXL's second, SD3's second)
CLIP_L: dict[str, Any] = dict(
    vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
    max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768, bos_token_id=49406, eos_token_id=49407,
    pad_token_id=1,
)  # fmt: skip
OPENCLIP_H: dict[str, Any] = dict(
    CLIP_L, hidden_size=1024, intermediate_size=4096, num_hidden_layers=23, num_attention_heads=16,
    hidden_act="gelu", projection_dim=512,
)  # fmt: skip
OPENCLIP_BIGG: dict[str, Any] = dict(
    CLIP_L, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
    hidden_act="gelu", projection_dim=1280,
)  # fmt: skip

SCHEDULER: dict[str, Any] = dict(
    beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
    steps_offset=1,
)  # fmt: skip

# name -> what the pipeline is made of; "params" are the published denoiser sizes the tests hold the configs to
PIPELINES: dict[str, dict[str, Any]] = {
    "sd15": dict(pipeline="StableDiffusionPipeline", unet=SD15_UNET, text=[CLIP_L], vae=vae(512),
                 scheduler=("PNDMScheduler", dict(SCHEDULER, skip_prk_steps=True)), params=859_520_964),
    "sd21": dict(pipeline="StableDiffusionPipeline", unet=SD21_UNET, text=[OPENCLIP_H], vae=vae(768),
                 scheduler=("DDIMScheduler", dict(SCHEDULER, prediction_type="v_prediction", clip_sample=False,
                                                  set_alpha_to_one=False)), params=865_910_724),
    "sd-turbo": dict(pipeline="StableDiffusionPipeline", unet=SD_TURBO_UNET, text=[OPENCLIP_H], vae=vae(512),
                     scheduler=("EulerDiscreteScheduler", dict(SCHEDULER, prediction_type="v_prediction",
                                                               timestep_spacing="trailing")), params=865_910_724),
    "sdxl": dict(pipeline="StableDiffusionXLPipeline", unet=SDXL_UNET, text=[CLIP_L, OPENCLIP_BIGG],
                 vae=vae(1024, 0.13025), scheduler=("EulerDiscreteScheduler", dict(SCHEDULER,
                                                    timestep_spacing="leading")), params=2_567_463_684),
    "sd3-medium": dict(pipeline="StableDiffusion3Pipeline", transformer=SD3_MEDIUM_TRANSFORMER,
                       text=[CLIP_L, OPENCLIP_BIGG], vae=vae(1024, 1.5305, 16, 0.0609),
                       scheduler=("FlowMatchEulerDiscreteScheduler", dict(shift=3.0)), params=2_028_328_000),
    "bk-sdm-small": dict(pipeline="StableDiffusionPipeline", unet=BK_SDM_SMALL_UNET, text=[CLIP_L], vae=vae(512),
                         scheduler=("PNDMScheduler", dict(SCHEDULER, skip_prk_steps=True)), params=482_346_884),
    "bk-sdm-tiny": dict(pipeline="StableDiffusionPipeline", unet=BK_SDM_TINY_UNET, text=[CLIP_L], vae=vae(512),
                        scheduler=("PNDMScheduler", dict(SCHEDULER, skip_prk_steps=True)), params=323_384_964),
}  # fmt: skip
