"""The real-size chain on this machine, one command per stage, each timed with its peak resident memory:
build an SD-family pipeline at its published config (random seeded weights) -> a short LoRA consistency
distillation with gradient checkpointing -> export (ONNX Runtime and OpenVINO; fp32, fp16, int8, int8w) ->
torch-free generation at the model's own size -> `fewstep bench`.

    python benchmarks/real_size_chain.py sd15 --work /data/real   # ~1 h on 2 cores; results/real-size/sd15.json

Each stage is a separate process run under `/usr/bin/time -v` (peak RSS of that process). Stages whose output
already exists are skipped (delete the directory to rerun it). Quality is not measured: the weights are random.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

from fewstep.core.manifest import IN_PROGRESS  # the marker of an unfinished export

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "real-size"


def timed(name: str, cmd: list[str], log: Path) -> dict:
    """Run `cmd` under /usr/bin/time -v; -> wall seconds, peak RSS, return code (output in `log`)."""
    print(f"[{time.strftime('%H:%M:%S')}] {name}: {' '.join(cmd)}", flush=True)
    t0 = time.perf_counter()
    with open(log, "w") as f:
        rc = subprocess.run(["/usr/bin/time", "-v", *cmd], stdout=f, stderr=subprocess.STDOUT).returncode
    wall = time.perf_counter() - t0
    text = log.read_text(errors="replace")
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    out = {"stage": name, "command": " ".join(cmd), "wall_s": round(wall, 1), "rc": rc,
           "peak_rss_gb": round(int(rss.group(1)) * 1024 / 1e9, 2) if rss else None}  # fmt: skip
    if rc:
        out["tail"] = text[-1500:]
    print(f"    -> {out['wall_s']} s, peak {out['peak_rss_gb']} GB, rc {rc}", flush=True)
    return out


def served(name: str, cmd: list[str], port: int, log: Path, requests: int = 3) -> dict:
    """Start `fewstep serve`, wait for /readyz, time `requests` sequential POST /v1/generate (one 512x512 image
    each), read the server's peak RSS (VmHWM), stop it."""
    import urllib.request

    print(f"[{time.strftime('%H:%M:%S')}] {name}: {' '.join(cmd)}", flush=True)
    t0 = time.perf_counter()
    with open(log, "w") as f:
        server = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT)
    out: dict = {"stage": name, "command": " ".join(cmd), "rc": 0}
    try:
        while True:
            if server.poll() is not None:
                return {**out, "rc": server.returncode, "tail": log.read_text(errors="replace")[-1500:]}
            try:
                if urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5).status == 200:
                    break
            except OSError:
                time.sleep(1)
        out["ready_s"] = round(time.perf_counter() - t0, 1)
        latencies = []
        for i in range(requests):
            body = json.dumps({"prompt": "a red circle", "seed": i}).encode()
            req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/generate", body,
                                         {"content-type": "application/json"})  # fmt: skip
            t1 = time.perf_counter()
            with urllib.request.urlopen(req, timeout=900) as r:
                png = r.read()
            latencies.append(round(time.perf_counter() - t1, 2))
            out["png_bytes"] = len(png)
        out["request_s"] = latencies
        hwm = re.search(r"VmHWM:\s+(\d+) kB", Path(f"/proc/{server.pid}/status").read_text())
        out["peak_rss_gb"] = round(int(hwm.group(1)) * 1024 / 1e9, 2) if hwm else None
    finally:
        server.terminate()
        server.wait(timeout=60)
    out["wall_s"] = round(time.perf_counter() - t0, 1)
    print(f"    -> ready in {out['ready_s']} s, requests {out['request_s']} s, peak {out['peak_rss_gb']} GB",
          flush=True)  # fmt: skip
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("name", help="a config of fewstep.testing.real_configs (sd15, sd-turbo, ...)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/fewstep-real"))
    ap.add_argument("--distill-steps", type=int, default=2)
    ap.add_argument("--student-steps", type=int, default=4)
    ap.add_argument("--precision", default="fp32,fp16,int8,int8w")
    ap.add_argument(
        "--runtime-python",
        default=sys.executable,
        help="python of a runtime-only environment (no torch) for generate and bench",
    )
    ap.add_argument("--engines", default="", help="comma-separated engine ids to generate with and bench (default all)")
    ap.add_argument("--serve-all", action="store_true", help="serve every engine (default: the first one)")
    ap.add_argument("--port", type=int, default=8765)
    ap.add_argument("--to", default="onnx,openvino", help="export targets (an interrupted export resumes, keeping "
                    "the engines it finished: e.g. --to openvino after an OOM in an ONNX engine)")  # fmt: skip
    ap.add_argument("--bench-batches", default="1,4", help="batch sizes for fewstep bench")
    ap.add_argument("--skip", default="", help="comma-separated runtime stages not to run: generate, bench, serve")
    ap.add_argument("--sample-every", type=int, default=0, help="distillation sample grids (0: none; at random "
                    "weights they show noise, and 24 images at 512x512 take minutes)")  # fmt: skip
    args = ap.parse_args()
    work = args.work / args.name
    work.mkdir(parents=True, exist_ok=True)
    py, fewstep = sys.executable, [sys.executable, "-m", "fewstep.cli"]
    rt = [args.runtime_python, "-m", "fewstep.cli"]
    pipe, run, bundle = work / "pipeline", work / "lora", work / "bundle"
    stages: list[dict] = []
    if not (pipe / "model_index.json").is_file():
        stages.append(timed("build pipeline", [py, "-m", "fewstep.testing.real_pipelines", args.name, str(pipe)],
                            work / "build.log"))  # fmt: skip
    if not (run / "model.safetensors").is_file():
        stages.append(timed("LoRA consistency distill", [*fewstep, "distill", "consistency", "--teacher", str(pipe),
                            "--out", str(run), "--student", "same", "--lora-rank", "8", "--gradient-checkpointing",
                            "--batch-size", "1",
                            "--steps", str(args.distill_steps), "--student-steps", str(args.student_steps),
                            "--dataset-size", "4", "--sample-every", str(args.sample_every),
                            "--checkpoint-every", "1000",
                            "--no-progress"], work / "distill.log"))  # fmt: skip
    if not (bundle / "manifest.json").is_file() or (bundle / IN_PROGRESS).exists():
        name = "export" if args.to == "onnx,openvino" else f"export --to {args.to}"
        stages.append(timed(name, [*fewstep, "export", str(run), "--out", str(bundle), "--to", args.to,
                            "--precision", args.precision, "--quantizer", "nncf", "--parity-prompts", "2",
                            "--calibration-prompts", "4", "--speed-gate", "false", "--speed-batch", "1",
                            "--speed-runs", "2"], work / "export.log"))  # fmt: skip
    manifest = json.loads((bundle / "manifest.json").read_text()) if (bundle / "manifest.json").is_file() else {}
    engines = [e["id"] for e in manifest.get("engines", []) if not args.engines or e["id"] in args.engines.split(",")]
    skip = set(args.skip.split(",")) - {""}
    for engine in [] if "generate" in skip else engines:
        for steps in (1, 2, 4):
            label = f"generate {engine} {steps} steps{_where(args)}"
            stages.append(timed(label, [*rt, "generate", str(bundle), "--engine", engine,
                                "--steps", str(steps), "--seeds", "0", "--prompt", "a red circle",
                                "--out", str(work / f"gen-{engine}-{steps}.png")],
                                work / f"gen-{engine}-{steps}.log"))  # fmt: skip
    for engine in [] if "bench" in skip else engines:
        label = f"bench {engine}{_where(args)}"
        stages.append(timed(label, [*rt, "bench", str(bundle), "--engine", engine, "--batch-sizes", args.bench_batches,
                            "--runs", "2", "--warmup", "1", "--no-torch", "--teacher", "none",
                            "--out", str(work / f"bench-{engine}.json")], work / f"bench-{engine}.log"))  # fmt: skip
    for engine in [] if "serve" in skip else engines if args.serve_all else engines[:1]:
        stages.append(served(f"serve {engine}{_where(args)}", [*rt, "serve", str(bundle), "--engine", engine,
                             "--max-batch", "1", "--timeout", "600", "--port", str(args.port)], args.port,
                             work / f"serve-{engine}.log"))  # fmt: skip
    sizes = {e["id"]: e.get("size_bytes") for e in manifest.get("engines", [])}
    benches = {}
    for engine in [e["id"] for e in manifest.get("engines", [])]:
        f = work / f"bench-{engine}.json"
        if f.is_file():
            benches[engine] = json.loads(f.read_text())
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    result = {
        "config": args.name, "date": time.strftime("%Y-%m-%d"), "commit": commit.strip(),
        "machine": f"{platform.machine()} {os.cpu_count()} cores, {_cpu()}",
        "command": "python " + " ".join(sys.argv), "stages": stages, "engine_bytes": sizes,
        "gates": {e["id"]: e.get("gates") for e in manifest.get("engines", [])},
        "refused": manifest.get("refused", []), "bench": benches,
    }  # fmt: skip
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{args.name}.json"
    old = json.loads(path.read_text()) if path.is_file() else {}
    redone = {s["stage"] for s in stages}  # a rerun replaces the stages it ran and keeps the others
    result["stages"] = [s for s in old.get("stages", []) if s["stage"] not in redone] + stages
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {path}")


def _where(args: argparse.Namespace) -> str:
    """Stage-name suffix naming a runtime environment other than this one (e.g. a torch-free venv)."""
    return "" if args.runtime_python == sys.executable else f" ({args.runtime_python})"


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    main()
