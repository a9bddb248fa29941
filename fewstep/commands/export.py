"""fewstep export: a checkpoint -> an engine bundle (ONNX / OpenVINO / CoreML / TensorRT), gated on parity and speed."""

from __future__ import annotations

import argparse
import shlex
import sys
from dataclasses import fields

from fewstep.commands.run_flags import boolean

HELP = "export a model to an engine bundle (ONNX Runtime, OpenVINO, CoreML, TensorRT) with parity and speed gates"
EPILOG = """examples:
  fewstep export shapes32-slimflow --out bundles/slimflow                       # onnx + openvino, fp32/fp16/int8
  fewstep export shapes32-slimflow --out b --to onnx --precision fp32,int8 --quantizer nncf,ort  # compare quantizers
  fewstep export shapes32-progressive-4step --out b --to coreml --precision fp16,palette4   # .mlpackage (any OS)
  fewstep export runs/slimflow --out b --to tensorrt --precision fp16,int8 --triton          # on an NVIDIA GPU
  fewstep export shapes32-slimflow --out b --to onnx,torch --precision fp32    # + torch eager, to compare with
  fewstep export shapes32-slimflow --out b --print-config > export.yaml; fewstep export M --out b --config export.yaml

precisions per target:
  onnx       fp32, fp16, int8 (NNCF or ONNX Runtime QDQ; calibration from the student's own sampler)
  openvino   fp32, fp16, int8 (NNCF), int8w (weight-only)
  coreml     fp32, fp16, int8w (8-bit weights), palette4 (4-bit palettized weights); prediction only on macOS
  tensorrt   fp32, fp16, int8 (explicit Q/DQ from NNCF); builds only on an NVIDIA GPU with TensorRT
  torch-tensorrt  fp32, fp16; NVIDIA GPU only
  torch      fp32, fp16: the network itself (safetensors), run in torch eager by the runtime's torch backend:
             the comparison point (fewstep bench BUNDLE --engine torch-fp32), never picked over a real engine

Gates: every engine's final images are compared with the torch student's (PSNR floors per precision) and
every fp16/int8 engine is timed side by side with the fp32 engine of its backend; an engine that fails is not
written, and the reason is printed and kept under "refused" in manifest.json. Exporting again into the same
bundle reuses what is still valid. Load a bundle with `fewstep.runtime.Generator.from_bundle(DIR)`."""


def register(sub: argparse._SubParsersAction) -> None:
    from fewstep.export.config import ExportConfig

    p = sub.add_parser(
        "export", help=HELP, description=HELP, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("model", nargs="?", help="checkpoint path, run directory or shipped model name")
    p.add_argument("--out", help="bundle directory (created; an existing bundle of the same model is updated)")
    p.add_argument("--config", help="YAML file with the fields below; flags override it")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
    p.add_argument("--force", action="store_true", help="replace a bundle that was exported from another checkpoint")
    p.add_argument("--quiet", action="store_true", help="print only the summary")
    for f in fields(ExportConfig):
        flag = f"--{f.name.replace('_', '-')}"
        if f.type == "bool":
            p.add_argument(flag, dest=f"cfg_{f.name}", default=None, type=boolean, metavar="true|false",
                           help=f"(default: {str(f.default).lower()})")  # fmt: skip
        elif f.type.startswith("tuple"):
            p.add_argument(flag, dest=f"cfg_{f.name}", default=None, type=_csv,
                           help=f"comma-separated (default: {','.join(f.default)})")  # fmt: skip
        else:
            typ = {"int": int, "float": float}.get(str(f.type), str)
            p.add_argument(flag, dest=f"cfg_{f.name}", type=typ, default=None, help=f"(default: {f.default})")
    p.set_defaults(run=run)


def _csv(text: str) -> tuple[str, ...]:
    return tuple(s.strip() for s in text.split(",") if s.strip())


def run(args: argparse.Namespace) -> int:
    import torch

    from fewstep.core.config import load_config, to_yaml
    from fewstep.export.bundle import BundleExport
    from fewstep.export.config import ExportConfig

    overrides = {k[4:]: v for k, v in vars(args).items() if k.startswith("cfg_")}
    cfg = load_config(ExportConfig, args.config, overrides)
    if args.print_config:
        print(to_yaml(cfg), end="")
        return 0
    if not args.model or not args.out:
        raise ValueError("give a MODEL and --out DIR (see `fewstep export --help`)")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    command = "fewstep export " + " ".join(shlex.quote(a) for a in sys.argv[2:])
    log = (lambda _msg: None) if args.quiet else (lambda msg: print(msg, flush=True))
    manifest = BundleExport(args.model, args.out, cfg, command, log, args.force).run()
    print(summary_table(manifest))
    return 0 if manifest["engines"] else 1


def summary_table(manifest: dict) -> str:
    lines = [f"bundle for {manifest['model']['name']} ({manifest['sampler'].get('rule')}, "
             f"{len(manifest['sampler']['timesteps']) - (0 if manifest['sampler'].get('rule') == 'consistency' else 1)}"
             f" step(s), guidance {manifest['sampler'].get('guidance', {}).get('mode', 'cfg')}):",
             f"  {'engine':<22} {'MB':>7} {'PSNR dB':>8} {'vs fp32':>8}  status"]  # fmt: skip
    for e in manifest["engines"]:
        par, spd = e["gates"].get("parity", {}), e["gates"].get("speed", {})
        psnr = f"{par['psnr_db']:.1f}" if "psnr_db" in par else "-"
        speed = f"{spd['speedup_vs_fp32']:.2f}x" if "speedup_vs_fp32" in spd else "-"
        status = "ok" if e.get("verified") else (par.get("status") or "written")
        lines.append(f"  {e['id']:<22} {e['size_bytes'] / 1e6:>7.2f} {psnr:>8} {speed:>8}  {status}")
    for r in manifest["refused"]:
        lines.append(f"  {r['id']:<22} {'':>7} {'':>8} {'':>8}  REFUSED: {r['reason']}")
    for n in manifest.get("notes", []):
        lines.append(f"  note: {n}")
    return "\n".join(lines)
