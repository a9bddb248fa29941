"""Real-size SD-family pipelines with random seeded weights, saved as a diffusers pipeline directory.

The directory has exactly the layout `save_pretrained` writes for a downloaded model (`model_index.json`, one
folder per component, safetensors weights, a CLIP tokenizer in its own vocab.json / merges.txt format with the
real 49,408-token vocabulary size), so loading it as a teacher is the same code path as loading a real one.
Components are built, saved and freed one at a time: peak memory is the largest component, not the pipeline.

    python -m fewstep.testing.real_pipelines sd15 /data/sd15-random     # 3.4 GB UNet, ~1 min on 2 cores
"""

from __future__ import annotations

import argparse
import gc
import json
from pathlib import Path
from typing import Any

import torch

from fewstep.core.resources import gib, require_disk, require_memory
from fewstep.models.diffusers_dir import load_codec, pipeline_spec
from fewstep.models.tiny_decoder import TinyDecoder, latent_layout, save_tiny_decoder
from fewstep.testing.real_configs import CLIP_L, PIPELINES, SOURCES
from fewstep.testing.tiny_pipelines import _words as shapes_words

CLIP_VOCAB = 49408  # CLIP's BPE vocabulary size; ids 49406 / 49407 are <|startoftext|> / <|endoftext|>
CLIP_TOKENS = 77


def _bytes_to_unicode() -> dict[int, str]:
    """CLIP's (GPT-2's) reversible byte -> printable character table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs), strict=True))


def _words() -> list[str]:
    extra = "a an the of in on with and photo painting portrait of cat dog city night sky mountain river forest"
    return sorted(set(shapes_words()) | set(extra.split()))


def clip_tokenizer_files(out: Path, pad_token: str = "<|endoftext|>") -> Path:
    """vocab.json + merges.txt + tokenizer_config.json of a CLIP tokenizer: the 256 byte symbols (plain and
    word-final), merges that make each built-in caption word one token, unused ids up to CLIP's vocabulary
    size, then CLIP's two special tokens at their real ids."""
    from transformers import CLIPTokenizer  # train extra

    out.mkdir(parents=True, exist_ok=True)
    symbols = list(_bytes_to_unicode().values())
    vocab = {s: i for i, s in enumerate(symbols)}
    vocab.update({s + "</w>": len(symbols) + i for i, s in enumerate(symbols)})
    merges: list[str] = []
    for word in _words():
        parts = [*word[:-1], word[-1] + "</w>"]
        while len(parts) > 1:
            merge = f"{parts[0]} {parts[1]}"
            if merge not in merges:
                merges.append(merge)
            parts = [parts[0] + parts[1], *parts[2:]]
            vocab.setdefault(parts[0], len(vocab))
    for i in range(len(vocab), CLIP_VOCAB - 2):
        vocab[f"<|unused{i}|>"] = i
    vocab["<|startoftext|>"], vocab["<|endoftext|>"] = CLIP_VOCAB - 2, CLIP_VOCAB - 1
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    tok = CLIPTokenizer(str(out / "vocab.json"), str(out / "merges.txt"), model_max_length=CLIP_TOKENS,
                        pad_token=pad_token)  # fmt: skip
    tok.save_pretrained(out)
    return out


def _denoiser(cfg: dict[str, Any]) -> tuple[str, Any]:
    from diffusers import SD3Transformer2DModel, UNet2DConditionModel  # train extra

    if "unet" in cfg:
        return "unet", UNet2DConditionModel(**cfg["unet"])
    return "transformer", SD3Transformer2DModel(**cfg["transformer"])


def _text_encoder(cfg: dict[str, Any], index: int) -> Any:
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection  # train extra

    # SD 1.x/2.x read the last/penultimate hidden states; SDXL's second and both of SD3's also the projection
    projected = cfg["pipeline"] == "StableDiffusion3Pipeline" or index == 1
    cls = CLIPTextModelWithProjection if projected else CLIPTextModel
    return cls(CLIPTextConfig(**cfg["text"][index]))


def estimate(name: str) -> dict[str, int]:
    """Parameters of each component (built on the meta device: no memory), as the factory will save them."""
    from diffusers import AutoencoderKL  # train extra

    cfg = config(name)
    with torch.device("meta"):
        parts = {"denoiser": _denoiser(cfg)[1], "vae": AutoencoderKL(**cfg["vae"])}
        for i in range(len(cfg["text"])):
            parts[f"text_encoder{'' if i == 0 else f'_{i + 1}'}"] = _text_encoder(cfg, i)
    return {k: sum(p.numel() for p in m.parameters()) for k, m in parts.items()}


def config(name: str) -> dict[str, Any]:
    if name not in PIPELINES:
        raise ValueError(f"unknown real config {name!r}; choose one of {', '.join(PIPELINES)}")
    return PIPELINES[name]


def save_real_pipeline(name: str, out: str | Path, seed: int = 0, dtype: torch.dtype = torch.float32) -> Path:
    """Build `name`'s pipeline (see `real_configs.PIPELINES`) with weights seeded by `seed`, one component at a time,
    and save it to `out` as `save_pretrained` would. Refuses up front when memory or disk cannot hold it."""
    import diffusers  # train extra

    cfg = config(name)
    out = Path(out)
    sizes = estimate(name)
    width = torch.finfo(dtype).bits // 8
    require_disk(sum(sizes.values()) * width, out, f"the {name} pipeline")
    # built in fp32, then (for fp16) a copy in `dtype`: the largest component's bytes and some slack
    copy = 0 if dtype == torch.float32 else width
    require_memory(int(max(sizes.values()) * (4 + copy) * 1.1), f"building {name}'s largest component")
    out.mkdir(parents=True, exist_ok=True)
    index: dict[str, Any] = {"_class_name": cfg["pipeline"], "_diffusers_version": diffusers.__version__}

    def save(folder: str, module: Any, library: str) -> None:
        module.to(dtype).save_pretrained(out / folder, safe_serialization=True)
        index[folder] = [library, type(module).__name__]

    torch.manual_seed(seed)
    folder, net = _denoiser(cfg)
    save(folder, net, "diffusers")
    del net
    gc.collect()
    torch.manual_seed(seed + 1)
    save("vae", diffusers.AutoencoderKL(**cfg["vae"]), "diffusers")
    for i, tower in enumerate(cfg["text"]):
        suffix = "" if i == 0 else f"_{i + 1}"
        torch.manual_seed(seed + 2 + i)
        save(f"text_encoder{suffix}", _text_encoder(cfg, i), "transformers")
        gc.collect()
        # OpenAI's CLIP-L tokenizer pads with <|endoftext|>, the OpenCLIP ones (ViT-H, bigG) with "!" (id 0)
        clip_tokenizer_files(out / f"tokenizer{suffix}", "<|endoftext|>" if tower is CLIP_L else "!")
        index[f"tokenizer{suffix}"] = ["transformers", "CLIPTokenizer"]
    sched_cls, sched_args = cfg["scheduler"]
    getattr(diffusers, sched_cls)(**sched_args).save_pretrained(out / "scheduler")
    index["scheduler"] = ["diffusers", sched_cls]
    if cfg["pipeline"] == "StableDiffusionPipeline":
        index.update(safety_checker=[None, None], feature_extractor=[None, None], requires_safety_checker=False)
    elif cfg["pipeline"] == "StableDiffusion3Pipeline":
        index.update(text_encoder_3=[None, None], tokenizer_3=[None, None])
    else:
        index.update(force_zeros_for_empty_prompt=True)
    (out / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", choices=sorted(PIPELINES))
    parser.add_argument("out", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", choices=("float32", "float16"), default="float32")
    args = parser.parse_args(argv)
    sizes = estimate(args.name)
    print(f"{args.name} ({SOURCES[args.name]}): " + ", ".join(f"{k} {v / 1e6:.1f}M" for k, v in sizes.items())
          + f"; {gib(sum(sizes.values()) * (4 if args.dtype == 'float32' else 2))} of weights")  # fmt: skip
    save_real_pipeline(args.name, args.out, args.seed, getattr(torch, args.dtype))
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()


def save_taesd_size_decoder(pipeline: str | Path, out: str | Path, seed: int = 0) -> Path:
    """A fewstep tiny decoder with TAESD's decoder layout (64 channels, 3 blocks per upsampling, 1.22M
    parameters) for `pipeline`'s VAE, random seeded weights: `fewstep export --tiny-decoder OUT` bundles it."""
    spec = pipeline_spec(pipeline)
    codec = load_codec(spec)
    assert codec is not None  # every SD-family pipeline has a VAE
    torch.manual_seed(seed)
    channels, factor = latent_layout(spec)
    decoder = TinyDecoder(channels, factor, channels=64, blocks=3)
    out = Path(out)
    save_tiny_decoder(out, decoder, spec, codec, {"note": "random seeded weights in TAESD's decoder layout"})
    return out
