"""Tiny random Stable-Diffusion-family pipelines, saved with `save_pretrained` to a local directory.

They have the real layout (`model_index.json`, one folder per component, safetensors weights) and real
diffusers / transformers classes, only with a few thousand parameters, so that the latent-teacher code paths
(loading, distillation, export, runtime) run in seconds on a CPU and without any download. Used by the tests
and by `benchmarks/latent_step_cost.py`.
"""

from __future__ import annotations

import functools
import json
import shutil
import string
from pathlib import Path

import torch

from fewstep.models.datasets import make_dataset

IMAGE_SIZE = 32  # decoded images; the tiny VAE downsamples by 4 -> 8x8 latents
TOKENS = 48  # tokenizer max length (CLIP: 77); shapes captions take at most ~20 tokens here


@functools.lru_cache(maxsize=1)
def _words() -> list[str]:
    """Every word of the built-in shapes captions (and the distillation sample prompts)."""

    ds = make_dataset("shapes", IMAGE_SIZE, 0, 3000, None)
    text = " ".join(ds.caption(i) for i in range(3000)) + " a red circle large blue square white background green"
    words = "".join(c if c.isalnum() else " " for c in text.lower()).split()
    return sorted({w for w in words if all(c in string.ascii_lowercase + string.digits for c in w)})


def _clip_tokenizer(out: Path):
    """A CLIP BPE tokenizer (real CLIPTokenizer code) whose merges make each shapes-caption word one token;
    other text falls back to characters."""
    from transformers import CLIPTokenizer  # train extra

    out.mkdir(parents=True, exist_ok=True)
    chars = list(string.ascii_lowercase + string.digits + ".,!?'-")
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    merges = []
    for word in _words():
        parts = [*word[:-1], word[-1] + "</w>"]
        while len(parts) > 1:  # left to right: ((r e) d</w>)
            merges.append(f"{parts[0]} {parts[1]}")
            parts = [parts[0] + parts[1], *parts[2:]]
            vocab.setdefault(parts[0], len(vocab))
    merges = list(dict.fromkeys(merges))
    vocab.update({"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1})
    (out / "vocab.json").write_text(json.dumps(vocab))
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    tok = CLIPTokenizer(str(out / "vocab.json"), str(out / "merges.txt"), model_max_length=TOKENS)
    for f in ("vocab.json", "merges.txt"):
        (out / f).unlink()
    return tok


def _clip_config(vocab_size: int, hidden: int = 32, projection: int = 32):
    from transformers import CLIPTextConfig  # train extra

    return CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=TOKENS,
        projection_dim=projection,
        bos_token_id=vocab_size - 2,
        eos_token_id=vocab_size - 1,
        pad_token_id=vocab_size - 1,
    )


def _vae(scaling_factor: float = 0.18215, shift_factor: float | None = None):
    from diffusers import AutoencoderKL  # train extra

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(8, 16, 16),
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        layers_per_block=1,
        norm_num_groups=4,
        sample_size=IMAGE_SIZE,
        scaling_factor=scaling_factor,
        shift_factor=shift_factor,
    )


def _ddim(prediction_type: str):
    """SD's DDIM scheduler config (clip_sample off: the flow-time parity tests need the raw update)."""
    from diffusers import DDIMScheduler  # train extra

    return DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                         set_alpha_to_one=False, steps_offset=1, prediction_type=prediction_type)  # fmt: skip


# the latent UNet both SD-style test pipelines share (4 latent channels at 1/4 of the image size)
_UNET = dict(sample_size=IMAGE_SIZE // 4, in_channels=4, out_channels=4, block_out_channels=(16, 32),
             layers_per_block=1, norm_num_groups=8)  # fmt: skip


def tiny_sd_pipeline(out: str | Path, prediction_type: str = "epsilon", seed: int = 0) -> Path:
    """An SD 1.x/2.x-style pipeline (UNet eps- or v-prediction, DDIM scheduler, CLIP, VAE) in `out`."""
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel  # train extra
    from transformers import CLIPTextModel  # train extra

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**_UNET, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
                                attention_head_dim=4)  # fmt: skip
    scheduler = _ddim(prediction_type)
    tok = _clip_tokenizer(Path(out) / ".tok")
    pipe = StableDiffusionPipeline(
        vae=_vae(),
        text_encoder=CLIPTextModel(_clip_config(len(tok))),
        tokenizer=tok,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(out, safe_serialization=True)
    _rm_tree(Path(out) / ".tok")
    return Path(out)


def tiny_sdxl_pipeline(out: str | Path, seed: int = 0) -> Path:
    """An SDXL-style pipeline (UNet with pooled text + size/crop time ids, two CLIP encoders, DDIM, VAE) in `out`."""
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel  # train extra
    from transformers import CLIPTextModel, CLIPTextModelWithProjection  # train extra

    torch.manual_seed(seed)
    time_dim, pooled = 8, 32
    unet = UNet2DConditionModel(
        **_UNET,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=64,  # the two CLIPs' penultimate states side by side (32 + 32)
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=time_dim,
        projection_class_embeddings_input_dim=6 * time_dim + pooled,  # 6 size/crop ids + the pooled text
    )
    scheduler = _ddim("epsilon")
    tok = _clip_tokenizer(Path(out) / ".tok")
    pipe = StableDiffusionXLPipeline(
        vae=_vae(0.13025),  # SDXL's VAE factor
        text_encoder=CLIPTextModel(_clip_config(len(tok))),
        text_encoder_2=CLIPTextModelWithProjection(_clip_config(len(tok), projection=pooled)),
        tokenizer=tok,
        tokenizer_2=tok,
        unet=unet,
        scheduler=scheduler,
    )
    pipe.save_pretrained(out, safe_serialization=True)
    _rm_tree(Path(out) / ".tok")
    return Path(out)


def _t5_tokenizer():
    """A T5 tokenizer (SentencePiece-style Unigram with `▁` word marks and a closing `</s>`, T5's ids for pad, eos
    and unk) whose vocabulary holds each shapes-caption word as one piece; other text falls back to characters."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors  # runtime extra
    from transformers import T5TokenizerFast  # train extra

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -5.0)]
    pieces += [("▁" + w, -1.0) for w in _words()]
    pieces += [(c, -10.0) for c in string.ascii_lowercase + string.digits + ".,!?'-"]
    tok = Tokenizer(models.Unigram(pieces, unk_id=2, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return T5TokenizerFast(tokenizer_object=tok, eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
                           extra_ids=0, model_max_length=512)  # fmt: skip


def _t5_encoder(vocab_size: int, width: int):
    from transformers import T5Config, T5EncoderModel  # train extra

    return T5EncoderModel(T5Config(vocab_size=vocab_size, d_model=width, d_kv=8, d_ff=2 * width, num_layers=2,
                                   num_heads=4, relative_attention_num_buckets=8, relative_attention_max_distance=32,
                                   pad_token_id=0, eos_token_id=1, decoder_start_token_id=0))  # fmt: skip


def tiny_sd3_pipeline(out: str | Path, seed: int = 0, shift: float = 3.0, t5: bool = False) -> Path:
    """An SD3-style flow-matching pipeline (SD3Transformer2DModel, two CLIP encoders, with `t5` a T5 encoder as
    the third, VAE) in `out`. Without T5 the pipeline feeds zeros in its place, as SD3 does."""
    from diffusers import (  # train extra
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )
    from transformers import CLIPTextModelWithProjection  # train extra

    torch.manual_seed(seed)
    # SD3 joins the two CLIP states on the feature axis (32 + 32) and pads them to the joint width
    transformer = SD3Transformer2DModel(
        sample_size=IMAGE_SIZE // 4,
        patch_size=2,
        in_channels=4,
        out_channels=4,
        num_layers=2,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=64,
        caption_projection_dim=16,
        pooled_projection_dim=64,
        pos_embed_max_size=8,
    )
    tok = _clip_tokenizer(Path(out) / ".tok")
    tok_3 = _t5_tokenizer() if t5 else None
    pipe = StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=shift),
        vae=_vae(1.5305, 0.0609),  # SD3's VAE factors
        text_encoder=CLIPTextModelWithProjection(_clip_config(len(tok))),
        tokenizer=tok,
        text_encoder_2=CLIPTextModelWithProjection(_clip_config(len(tok))),
        tokenizer_2=tok,
        text_encoder_3=_t5_encoder(len(tok_3), 64) if t5 else None,  # T5's width = the joint width
        tokenizer_3=tok_3,
    )
    pipe.save_pretrained(out, safe_serialization=True)
    _rm_tree(Path(out) / ".tok")
    return Path(out)


def _rm_tree(path: Path) -> None:

    shutil.rmtree(path, ignore_errors=True)
