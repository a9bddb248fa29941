"""fewstep info: presets (parameters, FLOPs), shipped models, or what one checkpoint or engine bundle holds.

Torch-free except for the presets' parameter and FLOP counts: checkpoints are described from their safetensors
header, bundles from their manifest."""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path
from typing import Any

from fewstep.commands import Command, add_command
from fewstep.core.errors import install_hint
from fewstep.core.manifest import MANIFEST, Manifest, read_manifest, verify_file
from fewstep.core.safetensors_header import HeaderError, fewstep_metadata
from fewstep.core.shipped import SHIPPED
from fewstep.runtime.registry import get_backend

EPILOG = """examples:
  fewstep info                                   # presets (needs the train extra) and the shipped models
  fewstep info shapes32-slimflow-4step           # a checkpoint's spec: network, sampler, how it was trained
  fewstep info bundles/slimflow                  # a bundle: its engines, their gates, which run here
  fewstep info bundles/slimflow --verify         # ... and check every file against its sha256
  fewstep info bundles/slimflow --json           # the manifest itself"""


def register(sub: argparse._SubParsersAction, command: Command) -> None:
    p = add_command(sub, command, EPILOG)
    p.add_argument("model", nargs="?", metavar="MODEL|BUNDLE", help="a checkpoint, run directory, shipped model "
                   "name or engine bundle directory (optional)")  # fmt: skip
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--verify", action="store_true", help="bundles: check every listed file against its sha256")
    p.set_defaults(run=run)


def preset_costs() -> list[dict[str, Any]]:
    import torch  # train extra: the presets are torch networks
    from torch.utils.flop_counter import FlopCounterMode  # train extra

    from fewstep.models.contract import Cond  # train extra (torch)
    from fewstep.models.presets import PRESETS, TEXT_DIM  # train extra (torch)
    from fewstep.models.unet_flow import build_unet_flow  # train extra (diffusers)

    rows = []
    for p in PRESETS.values():
        torch.manual_seed(0)
        model = build_unet_flow(p.unet).eval()
        x = torch.zeros(1, p.channels, p.image_size, p.image_size)
        cond = Cond(torch.zeros(1, 32, TEXT_DIM), torch.ones(1, 32))
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x, torch.full((1,), 0.5), cond)
        rows.append({"preset": p.name, "description": p.description,
                     "params": sum(q.numel() for q in model.parameters()),
                     "gflop_per_image": counter.get_total_flops() / 1e9,
                     "channels": p.unet["block_out_channels"]})  # fmt: skip
    return rows


def shipped() -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for name, path in SHIPPED.items():
        if not path.is_file():
            rows.append({"name": name, "status": f"missing ({path})"})
            continue
        try:
            meta = fewstep_metadata(path)
        except HeaderError as e:
            rows.append({"name": name, "status": f"unreadable: {e}"})
            continue
        row: dict[str, Any] = {"name": name, "path": str(path), "size_mb": round(path.stat().st_size / 1e6, 2),
                               "kind": meta.get("kind")}  # fmt: skip
        if "params" in meta:
            row.update(params=meta["params"], trained_steps=meta.get("training", {}).get("step"))
            row["method"] = meta.get("training", {}).get("method")
            row["sampler"] = {k: meta.get("sampler", {}).get(k) for k in ("rule", "default_steps")}
        if "accuracy" in meta:
            row["held_out_accuracy"] = meta["accuracy"]
        rows.append(row)
    return rows


def checkpoint_path(name: str) -> Path:
    """A shipped name, a .safetensors file or a run directory (its model.safetensors)."""
    if name in SHIPPED:
        return SHIPPED[name]
    path = Path(name)
    if path.is_dir():
        if (path / "model_index.json").is_file():
            raise ValueError(f"{path} is a diffusers pipeline directory: `fewstep info` describes fewstep checkpoints "
                             "and bundles; a pipeline's configs are in its own JSON files")  # fmt: skip
        path = path / "model.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"{name!r} is neither a shipped model ({', '.join(SHIPPED)}), a checkpoint file, a "
                                "run directory nor an engine bundle")  # fmt: skip
    return path


def run(args: argparse.Namespace) -> int:
    if args.model and (Path(args.model) / MANIFEST).is_file():
        return _bundle(Path(args.model), args.json, args.verify)
    if args.model:
        try:
            meta = fewstep_metadata(checkpoint_path(args.model))
        except HeaderError as e:
            raise ValueError(str(e)) from None
        print(json.dumps(meta, indent=2))
        return 0
    have_torch = importlib.util.find_spec("torch") is not None
    info = {"presets": preset_costs() if have_torch else [], "shipped": shipped()}
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    if info["presets"]:
        teacher = next(r["params"] for r in info["presets"] if r["preset"] == "teacher")
        print("network presets (diffusers UNet2DConditionModel, 32x32 RGB, MiniLM text states):")
        print(f"  {'preset':<12} {'params':>10} {'vs teacher':>11} {'GFLOP/image':>12}  channels")
        for r in info["presets"]:
            print(f"  {r['preset']:<12} {r['params']:>10,} {r['params'] / teacher:>10.2f}x"
                  f" {r['gflop_per_image']:>12.3f}  {r['channels']}")  # fmt: skip
    else:
        print(f"network presets: their parameter and FLOP counts need torch ({install_hint('train')})")
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


def _runs_here(backend: str) -> str:
    try:
        reason = get_backend(backend).unavailable_reason()
    except ValueError as e:  # a backend this fewstep does not know
        return f"no: {e}"
    return "yes" if reason is None else f"no: {reason}"


def listed_files(m: Manifest) -> dict[str, str]:
    """Every file the manifest lists, with its sha256."""
    files = {m.text_encoder.file: m.text_encoder.sha256, **{t.file: t.sha256 for t in m.text_encoder.tokenizers}}
    files.update({d.file: d.sha256 for d in m.decoders.values()})
    for e in m.engines:
        files.update(e.files)
    return files


def _bundle(root: Path, as_json: bool, verify: bool) -> int:
    m = read_manifest(root)
    if verify:
        for name, sha in listed_files(m).items():
            verify_file(root, name, sha)  # raises BundleError naming the file
    if as_json:
        print(m.dumps(), end="")
        return 0
    s, img = m.sampler, m.image
    guidance = s.guidance.mode + (f" {s.guidance.range}" if s.guidance.range else "")
    print(
        f"{m.model.name}: {m.model.method or m.model.role or 'model'}, {m.model.params or 0:,} params, "
        f"{s.rule} {s.steps()} step(s), guidance {guidance}"
    )
    print(
        f"  images {img.channels}x{img.height}x{img.width} ({img.space}); text encoder {m.text_encoder.kind}, "
        f"{m.text_encoder.max_tokens} tokens" + (f"; decoders: {', '.join(m.decoders)}" if m.decoders else "")
    )
    print(f"  {'engine':<22} {'backend':<15} {'MB':>7} {'PSNR dB':>8} {'vs fp32':>8}  runs here")
    for e in m.engines:
        par, spd = e.gates.get("parity", {}), e.gates.get("speed", {})
        psnr = f"{par['psnr_db']:.1f}" if "psnr_db" in par else "-"
        speed = f"{spd['speedup_vs_fp32']:.2f}x" if "speedup_vs_fp32" in spd else "-"
        print(f"  {e.id:<22} {e.backend:<15} {e.size_bytes / 1e6:>7.2f} {psnr:>8} {speed:>8}  {_runs_here(e.backend)}")
    for r in m.refused:
        print(f"  refused {r.id}: {r.reason}")
    made = m.created_by
    print(f"  made by fewstep {made.get('fewstep', '?')} on {made.get('machine', '?')}: {made.get('command', '?')}")
    if verify:
        print(f"  verified: {len(listed_files(m))} files match their sha256")
    return 0
