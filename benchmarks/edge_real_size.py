"""A mobile-sized real student on ExecuTorch: the block-removed BK-SDM-Tiny UNet at 512x512 (64x64 latents), the
CLIP ViT-L text encoder and a TAESD-size tiny decoder, each lowered to a `.pte` (XNNPACK) in fp32 and int8, against
torch eager and ONNX Runtime fp32 on the same inputs. Random seeded weights in the published shapes: size, parity
and latency are real, image quality is not (it needs the trained weights).

    python benchmarks/edge_real_size.py                        # all three stages
    python benchmarks/edge_real_size.py --stages unet --runs 3

Per stage and engine: file size, max |error| vs torch eager, median latency at batch 1 (2 threads), and the peak
resident memory of a fresh process that loads the `.pte` and runs it once (torch and ExecuTorch imported: the
Python bindings need both; an app linking the C++ runtime does not carry torch). Writes
benchmarks/results/edge/{real_size.json,real_size.md}.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from diffusers import UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from fewstep.export.targets.executorch import lower
from fewstep.export.targets.onnx import export_graph
from fewstep.models.tiny_decoder import TinyDecoder
from fewstep.testing.real_configs import BK_SDM_TINY_UNET, CLIP_L

OUT = Path(__file__).resolve().parent / "results" / "edge"
NODE_COUNTS = ("delegated_nodes", "non_delegated_nodes", "delegated_subgraphs")
PHONE_BUDGET = 4 << 30  # a 4 GB phone; an app gets well under half of it


class UNetDenoiser(torch.nn.Module):
    """The UNet as a student's sampler calls it: latents, t in [0, 1], the text encoder's hidden states."""

    def __init__(self, unet: UNet2DConditionModel):
        super().__init__()
        self.unet = unet.eval()

    def forward(self, x: torch.Tensor, t: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        return self.unet(x, t * 999, encoder_hidden_states=text, return_dict=False)[0]


class TextEncoder(torch.nn.Module):
    def __init__(self, model: CLIPTextModel):
        super().__init__()
        self.model = model.eval()

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=ids, return_dict=False)[0]


def stages(names: list[str]) -> dict[str, tuple[torch.nn.Module, tuple, list[tuple]]]:
    """{stage: (module, example inputs, calibration inputs)}; seeded random weights and inputs."""
    g = torch.Generator().manual_seed(0)
    out = {}
    if "unet" in names:
        torch.manual_seed(0)
        unet = UNetDenoiser(UNet2DConditionModel(**BK_SDM_TINY_UNET))

        def unet_inputs(seed: int) -> tuple:
            r = torch.Generator().manual_seed(seed)
            return (
                torch.randn(1, 4, 64, 64, generator=r),
                torch.rand(1, generator=r),
                torch.randn(1, 77, 768, generator=r),
            )

        out["unet"] = (unet, unet_inputs(0), [unet_inputs(s) for s in range(1, 5)])
    if "text_encoder" in names:
        torch.manual_seed(0)
        text = TextEncoder(CLIPTextModel(CLIPTextConfig(**CLIP_L)))
        ids = lambda: torch.randint(0, CLIP_L["vocab_size"], (1, 77), generator=g)  # noqa: E731
        out["text_encoder"] = (text, (ids(),), [(ids(),) for _ in range(4)])
    if "tiny_decoder" in names:
        torch.manual_seed(0)
        decoder = TinyDecoder(4, 8, channels=64, blocks=3).eval()
        lat = lambda: torch.randn(1, 4, 64, 64, generator=g)  # noqa: E731
        out["tiny_decoder"] = (decoder, (lat(),), [(lat(),) for _ in range(4)])
    return out


def median_ms(fn, runs: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return round(1e3 * float(np.median(times)), 2)


# VmHWM, not ru_maxrss: Linux carries ru_maxrss over an exec, so a child forked from a large parent reports the
# parent's size
PRINT_PEAK = 'print(next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmHWM:")))'
IMPORTS = "import sys, torch\nfrom executorch.runtime import Runtime\ntorch.set_num_threads(2)\n"
PEAK_SCRIPT = (IMPORTS + "args = torch.load(sys.argv[2], weights_only=True)\n"
               "method = Runtime.get().load_program(sys.argv[1]).load_method('forward')\n"
               "method.execute(list(args))\n" + PRINT_PEAK + "\n")  # fmt: skip
BASELINE_SCRIPT = IMPORTS + "Runtime.get()\n" + PRINT_PEAK + "\n"


def peak_rss(pte: Path, args: tuple, tmp: Path) -> int:
    """Peak resident bytes of a fresh process loading `pte` and running it once."""
    inputs = tmp / "inputs.pt"
    torch.save(list(args), inputs)
    done = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, str(pte), str(inputs)], capture_output=True, text=True,
                          check=True)  # fmt: skip
    return int(done.stdout.strip().splitlines()[-1])


def measure_stage(name: str, module, args: tuple, calibration: list[tuple], runs: int, tmp: Path) -> list[dict]:
    from executorch.runtime import Runtime

    with torch.no_grad():
        reference = module(*args)
        rows = [{"stage": name, "engine": "torch eager fp32", "params": sum(p.numel() for p in module.parameters()),
                 "ms_b1": median_ms(lambda: module(*args), runs)}]  # fmt: skip
    scale = float(reference.abs().max())
    for precision, calib in (("fp32", None), ("int8", calibration)):
        t0 = time.perf_counter()
        buffer, info = lower(module, args, calib)
        lower_s = time.perf_counter() - t0
        pte = tmp / f"{name}.{precision}.pte"
        pte.write_bytes(buffer)
        del buffer
        method = Runtime.get().load_program(pte).load_method("forward")
        got = method.execute(list(args))[0]
        rows.append({"stage": name, "engine": f"executorch {precision}", "bytes": pte.stat().st_size,
                     "max_abs_error": float((got - reference).abs().max()), "output_scale": scale,
                     "ms_b1": median_ms(lambda m=method: m.execute(list(args)), runs), "lower_s": round(lower_s, 1),
                     "peak_rss_bytes": peak_rss(pte, args, tmp),
                     **{k: info[k] for k in NODE_COUNTS}})  # fmt: skip
        del method
        pte.unlink()
    rows.append(onnx_row(name, module, args, reference, runs, tmp))
    return rows


def onnx_row(name: str, module, args: tuple, reference: torch.Tensor, runs: int, tmp: Path) -> dict:
    import onnxruntime as ort

    names = [f"in{i}" for i in range(len(args))]
    batch2 = tuple(torch.cat([a, a]) for a in args)  # the exporter's dynamic batch needs an example of 2
    path = export_graph(module, batch2, tmp / f"{name}.onnx", names, ["out"])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = 2, 1
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    feed = {n: a.numpy() for n, a in zip(names, args, strict=True)}
    got = session.run(None, feed)[0]
    size = sum(f.stat().st_size for f in tmp.glob(f"{name}.onnx*"))
    row = {"stage": name, "engine": "onnxruntime fp32", "bytes": size,
           "max_abs_error": float(np.abs(got - reference.numpy()).max()),
           "ms_b1": median_ms(lambda: session.run(None, feed), runs)}  # fmt: skip
    for f in tmp.glob(f"{name}.onnx*"):
        f.unlink()
    return row


def markdown(result: dict) -> str:
    lines = ["# A mobile-sized real student on ExecuTorch (x86)", "",
             f"Machine: {result['machine']}; 2 threads; {result['date']}; commit {result['commit']}. "
             f"Command: `{result['command']}`. Random seeded weights in the published shapes.", "",
             "| stage | engine | MB | max abs error (output scale) | ms, batch 1 | peak RSS MB "
             "| delegated / other nodes |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in result["rows"]:
        mb = f"{r['bytes'] / 1e6:.1f}" if "bytes" in r else f"({r['params'] / 1e6:.1f}M params)"
        err = f"{r['max_abs_error']:.2g} ({r['output_scale']:.2g})" if "output_scale" in r else (
            f"{r['max_abs_error']:.2g}" if "max_abs_error" in r else "-")  # fmt: skip
        rss = f"{r['peak_rss_bytes'] / 1e6:.0f}" if "peak_rss_bytes" in r else "-"
        nodes = f"{r['delegated_nodes']} / {r['non_delegated_nodes']}" if "delegated_nodes" in r else "-"
        lines.append(f"| {r['stage']} | {r['engine']} | {mb} | {err} | {r['ms_b1']} | {rss} | {nodes} |")
    lines += ["", result["fits"], ""]
    return "\n".join(lines)


def fits(rows: list[dict], baseline: int) -> str:
    """What the int8 programs of all stages add up to, next to a 4 GiB phone; `baseline`: the resident bytes of a
    process that has only imported torch and ExecuTorch's runtime (what an app linking the C++ runtime lacks)."""
    int8 = [r for r in rows if r["engine"] == "executorch int8"]
    total = sum(r["bytes"] for r in int8)
    largest = max(int8, key=lambda r: r["peak_rss_bytes"])
    own = largest["peak_rss_bytes"] - baseline
    return (
        f"All int8 programs together hold {total / 2**20:.0f} MiB of weights, {total / PHONE_BUDGET:.0%} of a "
        f"4 GiB phone. The largest stage ({largest['stage']}) peaked at {largest['peak_rss_bytes'] / 2**20:.0f} "
        f"MiB resident, or {own / 2**20:.0f} MiB over the {baseline / 2**20:.0f} MiB that importing torch and the "
        "runtime costs. The weights fit on the phone, but the stage as run here does not fit in an app's share "
        "of 4 GiB. Phone latency needs a phone: the times above are this x86 CPU's."
    )


def baseline_rss() -> int:
    """Peak resident bytes of a fresh process that imports torch and ExecuTorch's runtime and loads nothing."""
    done = subprocess.run([sys.executable, "-c", BASELINE_SCRIPT], capture_output=True, text=True, check=True)
    return int(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stages", default="unet,text_encoder,tiny_decoder")
    parser.add_argument("--runs", type=int, default=5, help="timed runs per engine (median)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, (module, inputs, calibration) in stages(args.stages.split(",")).items():
            print(f"{name}: measuring", flush=True)
            rows += measure_stage(name, module, inputs, calibration, args.runs, Path(tmp))
            print(json.dumps(rows[-4:], indent=1), flush=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    result = {"machine": f"{platform.processor() or platform.machine()}, {_cpu()}", "date": time.strftime("%Y-%m-%d"),
              "commit": commit, "command": "python benchmarks/edge_real_size.py " + " ".join(sys.argv[1:]),
              "rows": rows, "baseline_rss_bytes": (base := baseline_rss()), "fits": fits(rows, base)}  # fmt: skip
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "real_size.json").write_text(json.dumps(result, indent=2) + "\n")
    (OUT / "real_size.md").write_text(markdown(result))
    print(markdown(result))


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


if __name__ == "__main__":
    main()
