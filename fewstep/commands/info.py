"""fewstep info: presets (parameters, FLOPs), shipped models, or one checkpoint's description."""

from __future__ import annotations

import argparse
import json

HELP = "list network presets with parameter counts and FLOPs, the shipped models, or describe a checkpoint"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help=HELP, description=HELP)
    p.add_argument("model", nargs="?", help="a checkpoint or shipped model name to describe (optional)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(run=run)


def preset_costs() -> list[dict]:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from fewstep.models.contract import Cond
    from fewstep.models.presets import PRESETS, TEXT_DIM
    from fewstep.models.unet_flow import build_unet_flow

    rows = []
    for p in PRESETS.values():
        torch.manual_seed(0)
        model = build_unet_flow(p.unet).eval()
        x = torch.zeros(1, p.channels, p.image_size, p.image_size)
        cond = Cond(torch.zeros(1, 32, TEXT_DIM), torch.ones(1, 32))
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x, torch.full((1,), 0.5), cond)
        rows.append(
            {
                "preset": p.name,
                "description": p.description,
                "params": sum(q.numel() for q in model.parameters()),
                "gflop_per_image": counter.get_total_flops() / 1e9,
                "channels": p.unet["block_out_channels"],
            }
        )
    return rows


def shipped() -> list[dict]:
    from fewstep.models.checkpoint import CheckpointError, load_tensors
    from fewstep.models.loading import SHIPPED

    rows = []
    for name, path in SHIPPED.items():
        if not path.is_file():
            rows.append({"name": name, "status": f"missing ({path})"})
            continue
        try:
            _, meta = load_tensors(path)
        except CheckpointError as e:
            rows.append({"name": name, "status": f"unreadable: {e}"})
            continue
        row = {
            "name": name,
            "path": str(path),
            "size_mb": round(path.stat().st_size / 1e6, 2),
            "kind": meta.get("kind"),
        }
        if "params" in meta:
            row.update(params=meta["params"], trained_steps=meta.get("training", {}).get("step"))
            row["method"] = meta.get("training", {}).get("method")
            row["sampler"] = {k: meta.get("sampler", {}).get(k) for k in ("rule", "default_steps")}
        if "accuracy" in meta:
            row["held_out_accuracy"] = meta["accuracy"]
        rows.append(row)
    return rows


def run(args: argparse.Namespace) -> int:
    if args.model:
        from fewstep.models.checkpoint import load_tensors
        from fewstep.models.loading import resolve_checkpoint

        _, meta = load_tensors(resolve_checkpoint(args.model))
        print(json.dumps(meta, indent=2))
        return 0
    info = {"presets": preset_costs(), "shipped": shipped()}
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    teacher = next(r["params"] for r in info["presets"] if r["preset"] == "teacher")
    print("network presets (diffusers UNet2DConditionModel, 32x32 RGB, MiniLM text states):")
    print(f"  {'preset':<12} {'params':>10} {'vs teacher':>11} {'GFLOP/image':>12}  channels")
    for r in info["presets"]:
        print(
            f"  {r['preset']:<12} {r['params']:>10,} {r['params'] / teacher:>10.2f}x"
            f" {r['gflop_per_image']:>12.3f}  {r['channels']}"
        )
    print("\nshipped models:")
    width = max(len(r["name"]) for r in info["shipped"])
    for r in info["shipped"]:
        if "status" in r:
            print(f"  {r['name']:<{width}} {r['status']}")
        elif "params" in r:
            sampler = f"{r['sampler']['rule']} {r['sampler']['default_steps']} step(s)"
            print(f"  {r['name']:<{width}} {r['method']}, {r['params']:,} params, {r['trained_steps']} training steps, "
                  f"samples with {sampler}, {r['size_mb']} MB")  # fmt: skip
        else:
            acc = ", ".join(f"{k} {v:.3f}" for k, v in r.get("held_out_accuracy", {}).items())
            print(f"  {r['name']:<{width}} {r['kind']}, {r['size_mb']} MB, held-out: {acc}")
    return 0
