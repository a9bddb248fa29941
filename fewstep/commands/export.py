"""fewstep export: a checkpoint -> an engine bundle (ONNX / OpenVINO / CoreML / TensorRT), gated on parity and speed."""

from __future__ import annotations

import argparse
import shlex
import sys

import torch

from fewstep.commands import Command, add_command
from fewstep.commands.config_flags import add_config_flags, flag_values
from fewstep.core.config import load_config, to_yaml
from fewstep.core.manifest import Manifest
from fewstep.export.bundle import BundleExport
from fewstep.export.config import ExportConfig
from fewstep.runtime.registry import backends

EPILOG = """examples:
  fewstep export shapes32-slimflow --out bundles/slimflow                       # onnx + openvino, fp32/fp16/int8
  fewstep export shapes32-slimflow --out b --to onnx --precision fp32,int8 --quantizer nncf,ort  # compare quantizers
  fewstep export shapes32-progressive-4step --out b --to coreml --precision fp16,palette4   # .mlpackage (any OS)
  fewstep export runs/slimflow --out b --to tensorrt --precision fp16,int8 --triton          # on an NVIDIA GPU
  fewstep export shapes32-slimflow --out b --to onnx,torch --precision fp32    # + torch eager, to compare with
  fewstep export shapes32-slimflow --out b --print-config > export.yaml; fewstep export M --out b --config export.yaml

precisions per target:
{targets}

Gates: every engine's final images are compared with the torch student's (PSNR floors per precision) and
every fp16/int8 engine is timed side by side with the fp32 engine of its backend; an engine that fails is not
written, and the reason is printed and kept under "refused" in manifest.json. Exporting again into the same
bundle reuses what is still valid. Load a bundle with `fewstep.runtime.Generator.from_bundle(DIR)`."""


def register(sub: argparse._SubParsersAction, command: Command) -> None:
    p = add_command(sub, command, EPILOG.format(targets=_targets()))
    p.add_argument("model", nargs="?", help="checkpoint path, run directory or shipped model name")
    p.add_argument("--out", metavar="DIR", help="bundle directory (created; an existing bundle of the same model is "
                   "updated, reusing what is still valid)")  # fmt: skip
    p.add_argument("--config", metavar="YAML", help="a YAML file of the settings below; flags override it")
    p.add_argument("--print-config", action="store_true", help="print the resolved settings as documented YAML, exit")
    p.add_argument("--force", action="store_true", help="replace a bundle that was exported from another checkpoint")
    p.add_argument("--quiet", action="store_true", help="print only the summary")
    add_config_flags(p, ExportConfig)
    p.set_defaults(run=run)


def _targets() -> str:
    return "\n".join(f"  {b.target:<15}{b.description}" for b in backends() if b.exporter is not None)


def run(args: argparse.Namespace) -> int:
    cfg = load_config(ExportConfig, args.config, flag_values(args))
    if args.print_config:
        print(to_yaml(cfg), end="")
        return 0
    if not args.model or not args.out:
        raise ValueError("give a MODEL and --out DIR (see `fewstep export --help`)")
    cfg.check_paths()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    command = "fewstep export " + " ".join(shlex.quote(a) for a in sys.argv[2:])
    log = (lambda _msg: None) if args.quiet else (lambda msg: print(msg, flush=True))
    manifest = BundleExport(args.model, args.out, cfg, command, log, args.force).run()
    print(summary_table(manifest))
    return 0 if manifest.engines else 1


def summary_table(manifest: Manifest) -> str:
    s = manifest.sampler
    lines = [f"bundle for {manifest.model.name} ({s.rule}, {s.steps()} step(s), guidance {s.guidance.mode}):",
             f"  {'engine':<22} {'MB':>7} {'PSNR dB':>8} {'vs fp32':>8}  status"]  # fmt: skip
    for e in manifest.engines:
        par, spd = e.gates.get("parity", {}), e.gates.get("speed", {})
        psnr = f"{par['psnr_db']:.1f}" if "psnr_db" in par else "-"
        speed = f"{spd['speedup_vs_fp32']:.2f}x" if "speedup_vs_fp32" in spd else "-"
        status = "ok" if e.verified else (par.get("status") or "written")
        lines.append(f"  {e.id:<22} {e.size_bytes / 1e6:>7.2f} {psnr:>8} {speed:>8}  {status}")
    for r in manifest.refused:
        lines.append(f"  {r.id:<22} {'':>7} {'':>8} {'':>8}  REFUSED: {r.reason}")
    for n in manifest.notes:
        lines.append(f"  note: {n}")
    return "\n".join(lines)
