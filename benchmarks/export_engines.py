"""Every backend and precision of the shipped students: engine size, final-image PSNR vs torch, domain FID and
prompt adherence, and denoiser latency at batch 1 and 8 (medians, engines of a backend timed side by side).

    python benchmarks/export_engines.py                      # every shipped student
    python benchmarks/export_engines.py --models shapes32-slimflow --n 256
    python benchmarks/export_engines.py --models shapes32-consistency-4step   # adds / replaces one model's table

Bundles are exported with the speed gate recording but not refusing (so that every engine can be measured);
the table says which engines the gate would refuse. Writes benchmarks/results/export/{results.json,results.md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from fewstep.core.imaging import psnr, to_uint8
from fewstep.core.manifest import Manifest
from fewstep.evaluation.evaluate import EVAL_PROMPT_SEED, adherence, eval_set
from fewstep.evaluation.quality import fid_kid, judge_features
from fewstep.evaluation.train_judge import load_judge
from fewstep.export.bundle import BundleExport
from fewstep.export.config import ExportConfig
from fewstep.export.engine_build import side_by_side
from fewstep.export.gates import side_by_side_ms, speed_inputs
from fewstep.models.pipeline import TorchPipeline, sampling_times
from fewstep.runtime.engine import BackendUnavailable
from fewstep.runtime.generator import Generator
from fewstep.runtime.registry import get_backend, load_engine
from fewstep.runtime.text import RuntimeTextEncoder

OUT = Path(__file__).resolve().parent / "results" / "export"
TARGETS = ("onnx", "openvino", "coreml", "executorch")
PRECISIONS = ("fp32", "fp16", "int8", "int8w", "palette4")


def export(model: str, root: Path, threads: int) -> tuple[BundleExport, Manifest]:
    cfg = ExportConfig(to=TARGETS, precision=PRECISIONS, quantizer=("nncf", "ort"), speed_gate=False,
                       calibration_prompts=64, threads=threads)  # fmt: skip
    job = BundleExport(model, root / model, cfg, f"benchmarks/export_engines.py --models {model}", print)
    return job, job.run()


def evaluate_engine(gen: Generator, prompts: list[str], batch: int = 64) -> np.ndarray:
    return gen.generate_float(prompts, list(range(len(prompts))), batch_size=batch)


def measure(model: str, root: Path, n: int, runs: int, threads: int) -> dict:
    job, bundle_manifest = export(model, root, threads)
    manifest = bundle_manifest.to_json()
    bundle = root / model
    judge, _ = load_judge("shapes32-judge")
    space = judge_features("shapes32-judge")
    items = [eval_set("shapes", n, EVAL_PROMPT_SEED).item(i) for i in range(n)]
    real, prompts, labels = np.stack([i[0] for i in items]), [i[1] for i in items], [i[2] for i in items]
    pipe = TorchPipeline.from_checkpoint(model)  # the export released its own after writing the engines
    t0 = time.perf_counter()
    with torch.no_grad():
        ref = np.concatenate([
            pipe.sample(pipe.encoder.encode(prompts[i : i + 64]), list(range(i, min(i + 64, n))),
                        sampling_times(pipe.spec, None), pipe.default_guidance).numpy()
            for i in range(0, n, 64)
        ])  # fmt: skip
    torch_s = time.perf_counter() - t0
    ref_u8 = to_uint8(ref)
    rows = [{"engine": "torch (reference)", "backend": "torch", "precision": "fp32", "size_bytes": None,
             **fid_kid(real, ref_u8, space), "adherence": float(np.mean(adherence("shapes", judge, ref_u8, labels))),
             "ms_per_image_end_to_end": round(1e3 * torch_s / n, 2)}]  # fmt: skip
    text = RuntimeTextEncoder.from_bundle(bundle, bundle_manifest.text_encoder, threads)
    calib, _ = job.reference.calibration()
    engines, entries = {}, manifest["engines"] + [dict(r, files={}) for r in manifest["refused"]]
    for e in manifest["engines"]:
        try:
            entry = bundle_manifest.engine(e["id"])
            opts = side_by_side(get_backend(e["backend"]))
            engines[e["id"]] = load_engine(e["backend"], bundle / entry.main_file, entry, threads=threads, **opts)
        except BackendUnavailable as why:
            e["not_run"] = str(why)
    for e in entries:
        row = {"engine": e["id"], "backend": e["backend"] if "backend" in e else e["id"].split("-")[0],
               "precision": e.get("precision", e["id"].split("-")[1]), "size_bytes": e.get("size_bytes"),
               "speed_gate": e.get("gates", {}).get("speed", {}), "parity_gate": e.get("gates", {}).get("parity", {}),
               "refused": e.get("reason")}  # fmt: skip
        if e["id"] in engines:
            gen = Generator(bundle_manifest, engines[e["id"]], text, bundle_manifest.engine(e["id"]))
            t0 = time.perf_counter()
            x = evaluate_engine(gen, prompts)
            row["ms_per_image_end_to_end"] = round(1e3 * (time.perf_counter() - t0) / n, 2)
            u8 = to_uint8(x)
            row.update(psnr_db_vs_torch=round(psnr(x, ref), 2), **fid_kid(real, u8, space),
                       adherence=float(np.mean(adherence("shapes", judge, u8, labels))))  # fmt: skip
        else:
            row["not_run"] = e.get("not_run") or e.get("reason")
            if row["backend"] == "coreml" and e["files"]:
                from fewstep.export.targets.coreml import describe

                row["coreml_spec"] = describe(bundle / next(iter(e["files"])))
        rows.append(row)
    # denoiser latency: per backend, every engine side by side (interleaved) on the sampler's real inputs
    latency: dict[str, dict[int, dict[str, float]]] = {}
    for backend in sorted({e["backend"] for e in manifest["engines"] if e["id"] in engines}):
        group = {k: v for k, v in engines.items() if v.backend == backend}
        for batch in (1, 8):
            latency.setdefault(backend, {})[batch] = side_by_side_ms(group, speed_inputs(calib, batch), runs)
    for row in rows:
        for batch in (1, 8):
            ms = latency.get(row["backend"], {}).get(batch, {}).get(row["engine"])
            if ms is not None:
                row[f"denoiser_ms_b{batch}"] = round(ms, 3)
                fp32 = latency[row["backend"]][batch].get(f"{row['engine'].split('-')[0]}-fp32")
                row[f"speedup_vs_fp32_b{batch}"] = round(fp32 / ms, 3) if fp32 else None
    fp32_size = {e["backend"]: e["size_bytes"] for e in manifest["engines"] if e["precision"] == "fp32"}
    for row in rows:
        base = fp32_size.get(row["backend"])
        if row.get("size_bytes") and base:
            row["size_vs_fp32"] = round(row["size_bytes"] / base, 3)
    return {"model": model, "params": manifest["model"]["params"], "sampler": manifest["sampler"],
            "images": n, "measured": time.strftime("%Y-%m-%d"), "manifest": manifest, "rows": rows}  # fmt: skip


def markdown(results: list[dict], machine: str, threads: int) -> str:
    lines = ["# Engines of the shipped students: size, parity, quality, latency", "",
             f"Machine: {machine}; {threads} threads. Command: `python benchmarks/export_engines.py`.",
             "PSNR: final images vs the torch student, same prompts and seeds. Domain FID / adherence on "
             f"{results[0]['images']} held-out shapes prompts (prompt i, seed i). Latency: denoiser call, median of "
             "interleaved runs of all engines of a backend in one process, on the sampler's real inputs "
             "(ONNX Runtime without thread spinning, for every engine alike).",
             ""]  # fmt: skip
    for r in results:
        lines += [f"## {r['model']} ({r['params']:,} params, {r['sampler']['rule']} "
                  f"{r['sampler']['default_steps']} step(s))", "",
                  *([f"Measured {r['measured']} (`--models {r['model']}`){_elsewhere(r, machine)}; timings compare "
                     "within this table.", ""] if "measured" in r else []),
                  "| engine | MB | size vs fp32 | PSNR dB | domain FID | adherence | ms b1 | ms b8 | x fp32 b1 | "
                  "x fp32 b8 | speed gate |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for row in r["rows"]:

            def f(k, fmt="{:.2f}", row=row):
                v = row.get(k)
                return "-" if v is None else fmt.format(v)

            gate = row.get("speed_gate", {})
            verdict = "-"
            if "speedup_vs_fp32" in gate:
                ok = gate["speedup_vs_fp32"] >= gate.get("min_speedup", 1.0)
                verdict = f"{'pass' if ok else 'would refuse'} ({gate['speedup_vs_fp32']:.2f}x at export)"
            if row.get("refused"):
                verdict = f"refused: {row['refused']}"
            elif row.get("not_run"):
                verdict = f"not run: {row['not_run'][:60]}"
            mb = "-" if not row.get("size_bytes") else f"{row['size_bytes'] / 1e6:.2f}"
            lines.append(f"| {row['engine']} | {mb} | {f('size_vs_fp32')} | {f('psnr_db_vs_torch', '{:.1f}')} | "
                         f"{f('fid')} | {f('adherence', '{:.1%}')} | {f('denoiser_ms_b1')} | {f('denoiser_ms_b8')} | "
                         f"{f('speedup_vs_fp32_b1')} | {f('speedup_vs_fp32_b8')} | {verdict} |")  # fmt: skip
        lines.append("")
    return "\n".join(lines) + "\n"


def _elsewhere(entry: dict, machine: str) -> str:
    """Names the machine of an entry measured on another CPU than the file's (VMs of one kind differ in ISA)."""
    other = entry.get("machine", machine)
    return "" if other == machine else f" on {other}"


def cpu_name() -> str:
    """CPU model and the instruction sets int8 / bf16 speed depends on (VNNI, AMX)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    model = next((ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("model name")), "?")
    flags = set(next((ln.split(":", 1)[1].split() for ln in info.splitlines() if ln.startswith("flags")), []))
    isa = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8") if f in flags]
    return f"{model} ({' '.join(isa) or 'no AVX2'})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    students = ["shapes32-slimflow", "shapes32-progressive-4step", "shapes32-consistency-4step"]
    parser.add_argument("--models", nargs="+", default=students)
    parser.add_argument("--n", type=int, default=512, help="evaluation prompts")
    parser.add_argument("--runs", type=int, default=100, help="timed runs per engine and batch")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--bundles", default="runs/bench-export", help="where the bundles are written")
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    machine = f"{cpu_name()}, {os.cpu_count()} cores"
    out = Path(args.out)
    # a model measured now replaces its earlier entry; the other models' entries (each timed within itself) stay
    saved = json.loads((out / "results.json").read_text()) if (out / "results.json").is_file() else {}
    earlier, here = saved.get("results", []), machine
    machine = saved.get("machine", machine)  # the file's machine: that of its first measurement
    fresh = {m: {**measure(m, Path(args.bundles), args.n, args.runs, args.threads), "machine": here}
             for m in args.models}  # fmt: skip
    results = [fresh.pop(r["model"], r) for r in earlier] + list(fresh.values())
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"machine": machine, "threads": args.threads,
                                                  "results": results}, indent=2, default=str))  # fmt: skip
    (out / "results.md").write_text(markdown(results, machine, args.threads))
    print(markdown(results, machine, args.threads))


if __name__ == "__main__":
    main()
