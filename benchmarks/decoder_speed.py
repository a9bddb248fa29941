"""Image decoders at real size: SD's VAE decoder vs fewstep's tiny (TAESD-layout) decoder, 512 px, on this CPU.

At one or two denoiser steps the decoder is a large share of a latent model's latency; this measures how large, at
the size real users run, with the graphs a bundle holds (fewstep's `ImageDecoder` / `TinyImageDecoder` exported by
`export_decoder_onnx`), in ONNX Runtime (CPU provider) and torch eager. Speed does not depend on the weights' values,
so both networks are random-initialised with the real architectures (SD 1.x/2.x's AutoencoderKL config; the
TinyDecoder that `fewstep distill-decoder` trains for a 4-channel, 8x-downsampling VAE): this measures time and
FLOPs, not image quality.

    python benchmarks/decoder_speed.py [--threads 2] [--runs 5]  ->  benchmarks/results/decoder_speed.{json,md}
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
OUT = Path(__file__).resolve().parent / "results"
SIDE, LATENT = 512, 64  # SD 1.x at 512 px: 4 x 64 x 64 latents


def sd_vae():
    """SD 1.x/2.x's VAE architecture (the `vae/config.json` of those pipelines), random weights."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=2,
        norm_num_groups=32,
        sample_size=SIDE,
        scaling_factor=0.18215,
    ).eval()


def decoders() -> dict[str, torch.nn.Module]:
    from fewstep.export.decoder import ImageDecoder, TinyImageDecoder
    from fewstep.models.diffusers_dir import LatentCodec
    from fewstep.models.tiny_decoder import TinyDecoder

    spec = {
        "image": {"channels": 4, "height": LATENT, "width": LATENT},
        "latent": {"decoded": {"channels": 3, "height": SIDE, "width": SIDE}},
    }
    torch.manual_seed(0)
    return {
        "SD VAE decoder": ImageDecoder(LatentCodec(sd_vae(), 0.18215), spec),
        "tiny decoder (TAESD layout)": TinyImageDecoder(TinyDecoder(4, 8), spec),
    }


def graph_params(module: torch.nn.Module) -> int:
    """Parameters the decoder graph uses (an ImageDecoder holds the whole VAE, encoder included)."""
    vae = getattr(module, "vae", None)
    parts = [vae.decoder, vae.post_quant_conv] if vae is not None else [module]
    return sum(p.numel() for part in parts for p in part.parameters())


def gflop(module: torch.nn.Module, latents: torch.Tensor) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module(latents)
    return counter.get_total_flops() / 1e9


def timed(fn, runs: int) -> list[float]:
    fn()  # warm-up
    out = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        out.append((time.perf_counter() - start) * 1e3)
    return out


def main() -> None:
    import onnxruntime as ort

    from fewstep.export.decoder import export_decoder_onnx

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    latents = torch.randn(1, 4, LATENT, LATENT, generator=torch.Generator().manual_seed(0))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, module in decoders().items():
            path = export_decoder_onnx(module, Path(tmp) / "decoder.onnx", max_batch=16)
            opts = ort.SessionOptions()
            opts.intra_op_num_threads, opts.inter_op_num_threads = args.threads, 1
            session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
            feed = {"latents": latents.numpy()}
            ort_ms = timed(lambda s=session, f=feed: s.run(None, f), args.runs)
            with torch.no_grad():
                torch_ms = timed(lambda m=module: m(latents), args.runs)
            rows.append(
                {
                    "decoder": name,
                    "params": graph_params(module),
                    "gflop_per_image": round(gflop(module, latents), 1),
                    "onnx_mb": round(path.stat().st_size / 1e6, 1),
                    "ort_ms_p50": round(statistics.median(ort_ms), 1),
                    "ort_ms_runs": [round(v, 1) for v in ort_ms],
                    "torch_ms_p50": round(statistics.median(torch_ms), 1),
                }
            )
            print(rows[-1], flush=True)
    vae, tiny = rows
    result = {
        "what": f"one {SIDE}x{SIDE} image from 4x{LATENT}x{LATENT} latents, batch 1, random weights (speed only)",
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "threads": args.threads,
            "onnxruntime": ort.__version__,
            "torch": torch.__version__,
        },
        "command": f"python benchmarks/decoder_speed.py --threads {args.threads} --runs {args.runs}",
        "decoders": rows,
        "tiny_speedup_ort": round(vae["ort_ms_p50"] / tiny["ort_ms_p50"], 1),
        "tiny_flop_ratio": round(vae["gflop_per_image"] / tiny["gflop_per_image"], 1),
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "decoder_speed.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        f"# Image decoders at {SIDE} px on this CPU ({args.threads} threads)",
        "",
        f"`{result['command']}`; {result['what']}.",
        "",
        "| decoder | params | GFLOP/image | ONNX MB | ORT ms (p50) | torch ms (p50) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['decoder']} | {r['params']:,} | {r['gflop_per_image']} | {r['onnx_mb']} | "
            f"{r['ort_ms_p50']} | {r['torch_ms_p50']} |"
        )
    lines += [
        "",
        f"The tiny decoder is {result['tiny_speedup_ort']}x faster in ONNX Runtime "
        f"({result['tiny_flop_ratio']}x fewer FLOPs).",
    ]
    (OUT / "decoder_speed.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
