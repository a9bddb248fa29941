"""The SD1.5-config UNet through fewstep's ONNX exporter, then ONNX Runtime, each step in its own process with
its peak resident memory (a thread samples VmRSS every 0.2 s).

    python benchmarks/real_size_unet_onnx.py export PIPELINE_DIR OUT_DIR   # export_fp32 -> OUT_DIR/unet.onnx(.data)
    python benchmarks/real_size_unet_onnx.py run OUT_DIR/unet.onnx          # session load, 3 calls at batch 1

The rows "UNet fp32 ONNX export alone" and "ONNX Runtime: one UNet call" of benchmarks/results/real-size/README.md
are these two steps on a pipeline made by `python -m fewstep.testing.real_pipelines sd15 PIPELINE_DIR`.
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

PEAK = [0]


def _watch() -> None:
    while True:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS"):
                    PEAK[0] = max(PEAK[0], int(line.split()[1]) * 1024)
        time.sleep(0.2)


def export(pipeline: str, out_dir: str) -> None:
    import torch

    from fewstep.export.denoiser import denoiser_from_spec
    from fewstep.export.targets.onnx import export_fp32
    from fewstep.models.diffusers_dir import PipelinePromptEncoder
    from fewstep.models.loading import load_model

    torch.set_num_threads(2)
    t = time.time()
    model, spec = load_model(pipeline)
    denoiser = denoiser_from_spec(model, spec, PipelinePromptEncoder(spec["text_encoder"]))
    print(f"loaded in {time.time() - t:.1f} s, peak {PEAK[0] / 1e9:.2f} GB", flush=True)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t = time.time()
    export_fp32(denoiser, out / "unet.onnx")
    print(f"exported in {time.time() - t:.1f} s, peak {PEAK[0] / 1e9:.2f} GB", flush=True)
    print(sorted((p.name, p.stat().st_size) for p in out.iterdir()))


def run(graph: str) -> None:
    import numpy as np
    import onnxruntime as ort

    t = time.time()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    session = ort.InferenceSession(graph, opts, providers=["CPUExecutionProvider"])
    print(f"session loaded in {time.time() - t:.1f} s, peak {PEAK[0] / 1e9:.2f} GB", flush=True)
    feeds = {
        "x": np.random.randn(1, 4, 64, 64).astype(np.float32),
        "t": np.array([0.5], np.float32),
        "text": np.random.randn(1, 77, 768).astype(np.float32),
        "text_mask": np.ones((1, 77), np.float32),
    }
    for _ in range(3):
        t = time.time()
        session.run(None, feeds)
        print(f"one call at batch 1: {time.time() - t:.2f} s", flush=True)
    print(f"peak {PEAK[0] / 1e9:.2f} GB")


if __name__ == "__main__":
    threading.Thread(target=_watch, daemon=True).start()
    {"export": export, "run": run}[sys.argv[1]](*sys.argv[2:])
