"""ESTIMATED GPU hours and memory per distillation method for Stable-Diffusion-size teachers at 512 px.

Nothing here runs a real SD model (no weights, no GPU on this machine). What is measured:
  1. network evaluations per training step of every method: each method's real loss runs one step on a tiny
     teacher with the denoiser's forward counted (samples through a no-grad forward, samples through a forward
     that is backpropagated);
  2. FLOPs of one forward at 512 px and the tensors autograd saves for backward, for SD 1.5's UNet, SDXL's UNet
     and SD3-medium's transformer built on the meta device (shapes only) under torch's FlopCounterMode.
What is assumed (and scales the result): backward = 2 forwards (1 for LoRA, whose frozen weights need no weight
gradients), an A100-80GB at 40% of its 312 TFLOP/s bf16 peak, bf16 activations, AdamW with fp32 master weights.

    python benchmarks/sd_cost_estimate.py   ->  benchmarks/results/sd_cost_estimate.{json,md}
"""

from __future__ import annotations

import json
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the tests' tiny teacher
OUT = Path(__file__).resolve().parent / "results"
GPU = {"name": "A100-80GB", "peak_bf16_tflops": 312.0, "mfu": 0.40, "memory_gib": 80}
RATE = GPU["peak_bf16_tflops"] * GPU["mfu"] * 1e12  # sustained FLOP/s assumed
BATCH, STEPS = 32, 1000  # the unit of the estimate: 1,000 optimizer steps at global batch 32

# (method, DistillConfig overrides for a one-step run on the tiny teacher)
METHODS = [
    ("reflow", {"student_steps": 1}),
    ("slimflow", {"student_steps": 1, "stage2_steps": 1}),
    ("instaflow", {"student_steps": 1}),
    ("guidance", {"student_steps": 2}),
    ("consistency", {"student_steps": 2, "grid": 8, "skip": 2}),
    ("progressive", {"start_steps": 2, "student_steps": 1}),
    ("dmd", {}),
]


def count_evaluations() -> dict[str, dict[str, float]]:
    """Per method and per sample of the batch: forwards without grad, forwards with grad (backpropagated)."""
    from diffusers import UNet2DConditionModel

    from fewstep.compress.distill import PAIR_METHODS
    from tests.distill_fixtures import distill_tiny, make_tiny_teacher

    counts: dict[str, dict[str, float]] = {}
    original = UNet2DConditionModel.forward
    calls: dict[str, int] = defaultdict(int)

    def counted(self, sample, *args, **kwargs):
        calls["grad" if torch.is_grad_enabled() and self.training else "nograd"] += sample.shape[0]
        return original(self, sample, *args, **kwargs)

    with tempfile.TemporaryDirectory() as tmp:
        teacher, _, pairs = make_tiny_teacher(Path(tmp))
        UNet2DConditionModel.forward = counted
        try:
            for method, extra in METHODS:
                calls.clear()
                fields = {"pairs": str(pairs)} if method in PAIR_METHODS else {}
                distill_tiny(
                    teacher,
                    Path(tmp) / method,
                    method,
                    steps=1,
                    checkpoint_every=1,
                    sample_every=0,  # no sample grids: they would count as evaluations
                    **fields,
                    **extra,
                )
                stages = 2 if method == "slimflow" else 1  # one step of each stage was run: average them
                counts[method] = {k: calls[k] / 4 / stages for k in ("nograd", "grad")}  # batch 4
        finally:
            UNet2DConditionModel.forward = original
    return counts


def _sd_networks() -> dict[str, tuple[torch.nn.Module, tuple]]:
    from diffusers import SD3Transformer2DModel, UNet2DConditionModel

    meta = torch.device("meta")
    with meta:
        sd15 = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8)
        sdxl = UNet2DConditionModel(
            sample_size=128,
            cross_attention_dim=2048,
            attention_head_dim=[5, 10, 20],
            block_out_channels=[320, 640, 1280],
            down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
            up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
            transformer_layers_per_block=[1, 2, 10],
            addition_embed_type="text_time",
            addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=2816,
            use_linear_projection=True,
        )
        sd3 = SD3Transformer2DModel(
            sample_size=128,
            patch_size=2,
            in_channels=16,
            num_layers=24,
            attention_head_dim=64,
            num_attention_heads=24,
            joint_attention_dim=4096,
            caption_projection_dim=1536,
            pooled_projection_dim=2048,
            out_channels=16,
            pos_embed_max_size=192,
        )

    def r(*shape):
        return torch.randn(*shape, device=meta)

    t = torch.tensor([500.0], device=meta)
    xl = {"text_embeds": r(1, 1280), "time_ids": r(1, 6)}
    return {
        "SD 1.5 UNet (512 px, 64x64x4 latents)": (sd15, (r(1, 4, 64, 64), t, r(1, 77, 768))),
        "SDXL UNet at 512 px (64x64x4 latents)": (sdxl, (r(1, 4, 64, 64), t, r(1, 77, 2048), *[None] * 4, xl)),
        "SD3-medium transformer (512 px, 64x64x16)": (sd3, (r(1, 16, 64, 64), r(1, 333, 4096), r(1, 2048), t)),
    }


def network_costs() -> dict[str, dict]:
    from torch.utils.flop_counter import FlopCounterMode

    rows = {}
    for name, (net, args) in _sd_networks().items():
        saved: list[int] = []

        def pack(x, saved=saved):
            saved.append(x.numel() * x.element_size())
            return x

        net.train()
        with FlopCounterMode(display=False) as fc, torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
            net(*args)
        full = sum(saved)
        net.enable_gradient_checkpointing()
        saved.clear()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
            net(*args)
        rows[name] = {
            "params": sum(p.numel() for p in net.parameters()),
            "fwd_tflop": fc.get_total_flops() / 1e12,
            "act_gib_bf16": full / 2 / 2**30,  # saved in fp32 on meta; bf16 training saves half
            "act_gib_bf16_checkpointed": sum(saved) / 2 / 2**30,
        }
    return rows


def estimate(evals: dict, nets: dict) -> list[dict]:
    """GPU hours per 1,000 steps at batch 32 and memory at batch 32, full fine-tuning and LoRA."""
    rows = []
    for net, c in nets.items():
        p = c["params"]
        for method, e in evals.items():
            for mode in ("full", "lora"):
                backward = 2.0 if mode == "full" else 1.0
                flop = c["fwd_tflop"] * 1e12 * (e["nograd"] + e["grad"] * (1 + backward)) * BATCH * STEPS
                # weights: frozen teacher (bf16) + the student (full: fp32 master + grad + 2 Adam states + EMA = 20
                # B/param; LoRA: a frozen bf16 copy), + DMD's trained fake score (another full student)
                trained = 20 * p if mode == "full" else 2 * p
                weights = 2 * p + trained * (2 if method == "dmd" else 1)
                act = c["act_gib_bf16"] * 2**30 * BATCH * (e["grad"] > 0)
                act_ckpt = c["act_gib_bf16_checkpointed"] * 2**30 * BATCH * (e["grad"] > 0)
                rows.append(
                    {
                        "network": net,
                        "method": method,
                        "mode": mode,
                        "gpu_hours_per_1k_steps": flop / RATE / 3600,
                        "weights_gib": weights / 2**30,
                        "memory_gib_batch32": (weights + act) / 2**30,
                        "memory_gib_batch32_checkpointed": (weights + act_ckpt) / 2**30,
                    }
                )
    return rows


def main() -> None:
    torch.set_num_threads(1)
    evals = count_evaluations()
    nets = network_costs()
    rows = estimate(evals, nets)
    result = {
        "label": "ESTIMATE (see the module docstring: counted evaluations x meta-device FLOPs / assumed GPU)",
        "gpu": GPU,
        "batch": BATCH,
        "steps": STEPS,
        "evaluations_per_sample_per_step": evals,
        "networks": nets,
        "rows": rows,
    }
    (OUT / "sd_cost_estimate.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "# Estimated GPU hours and memory per method at 512 px (ESTIMATE, not measured on a GPU)",
        "",
        f"`python benchmarks/sd_cost_estimate.py`. Per 1,000 optimizer steps at global batch {BATCH} on one "
        f"{GPU['name']} assumed to sustain {GPU['mfu']:.0%} of its {GPU['peak_bf16_tflops']:.0f} TFLOP/s bf16 peak. "
        "Counted: network evaluations per step (each method's real loss on a tiny teacher); FLOPs and autograd-saved "
        "activations of one 512 px forward (meta-device networks, torch FlopCounterMode). Assumed: backward = 2 "
        "forwards (LoRA: 1), bf16 activations, fp32 master weights + AdamW + EMA (20 B/param) for full students. "
        "Memory excludes the text encoders and VAE (run once per caption/image and cached by fewstep) and "
        "framework overhead; activations use PyTorch's attention on meta (flash attention needs less).",
        "",
        "| method | no-grad evals / sample | backpropagated evals / sample |",
        "|---|---|---|",
        *[f"| {m} | {e['nograd']:g} | {e['grad']:g} |" for m, e in evals.items()],
        "",
        "| network | params | TFLOP / forward | activations GiB / sample (bf16) | with gradient checkpointing |",
        "|---|---|---|---|---|",
        *[
            f"| {n} | {c['params'] / 1e6:.0f} M | {c['fwd_tflop']:.2f} | {c['act_gib_bf16']:.2f} | "
            f"{c['act_gib_bf16_checkpointed']:.2f} |"
            for n, c in nets.items()
        ],
        "",
        "| network | method | student | GPU h / 1k steps | weights GiB | memory GiB (batch 32) | with checkpointing |",
        "|---|---|---|---|---|---|---|",
        *[
            f"| {r['network'].split(' (')[0]} | {r['method']} | {r['mode']} | {r['gpu_hours_per_1k_steps']:.1f} | "
            f"{r['weights_gib']:.0f} | {r['memory_gib_batch32']:.0f} | {r['memory_gib_batch32_checkpointed']:.0f} |"
            for r in rows
        ],
        "",
        "Pair-based methods (reflow, slimflow, instaflow, dmd) first need teacher trajectory pairs (`fewstep pairs`): "
        "at Heun 16 steps with CFG (62 forwards per pair), 10,000 pairs cost "
        + ", ".join(
            f"{n.split(' (')[0]} {c['fwd_tflop'] * 1e12 * 62 * 1e4 / RATE / 3600:.1f} h" for n, c in nets.items()
        )
        + " (same assumptions).",
        "",
        "Memory above 80 GiB means: a smaller per-GPU batch (gradient accumulation / more GPUs with torchrun), "
        "gradient checkpointing, LoRA, or `--optimizer adamw8bit` (AdamW states 8 -> 2 B/param).",
    ]
    (OUT / "sd_cost_estimate.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
