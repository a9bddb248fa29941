"""Where a batch-1 denoiser call spends its time in ONNX Runtime, and what ORT's own graph tools change.

    python benchmarks/ort_denoiser_profile.py      # after benchmarks/runtime_serving.py has exported the bundle

For the int8 and fp32 ONNX engines of the 4-step student: median ms per call at batch 1 (2 threads, 1 thread,
the batch dimension fixed to 1 at load with `add_free_dimension_override_by_name`), the kernel count per call
and the share of time per operator type from ORT's profiler, and the fp32 graph after ORT's transformer
optimizer (`onnxruntime.transformers.optimizer`, `unet` and `bert` fusions) with the fusions it found.
Writes benchmarks/results/runtime/ort_denoiser_profile.json.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from ort_thread_spinning import inputs  # benchmarks/ is on sys.path when run as a script

from fewstep.runtime.bench import machine

OUT = Path(__file__).resolve().parent / "results" / "runtime" / "ort_denoiser_profile.json"


def options(threads: int = 2, batch_one: bool = False, profile: bool = False) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads, opts.log_severity_level = threads, 1, 3
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1")  # as the runtime serves
    if batch_one:
        opts.add_free_dimension_override_by_name("B", 1)
    opts.enable_profiling = profile
    return opts


def median_ms(session: ort.InferenceSession, feeds: dict, runs: int) -> float:
    for _ in range(20):
        session.run(None, feeds)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        session.run(None, feeds)
        times.append(time.perf_counter() - t0)
    return round(1e3 * float(np.median(times)), 3)


def kernel_profile(path: str, feeds: dict, runs: int) -> dict:
    session = ort.InferenceSession(path, options(profile=True), providers=["CPUExecutionProvider"])
    for _ in range(runs):
        session.run(None, feeds)
    trace = session.end_profiling()
    per_op, count = collections.Counter(), collections.Counter()
    for event in json.loads(Path(trace).read_text()):
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            per_op[event["args"]["op_name"]] += event["dur"]
            count[event["args"]["op_name"]] += 1
    os.remove(trace)
    total = sum(per_op.values())
    return {"kernels_per_call": sum(count.values()) // runs,
            "time_share_by_op": {op: round(d / total, 3) for op, d in per_op.most_common(12)},
            "kernels_per_call_by_op": {op: count[op] // runs for op, _ in per_op.most_common(12)}}  # fmt: skip


def transformer_fusions(path: str, feeds: dict, runs: int) -> dict:
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    reference = ort.InferenceSession(path, options(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    out = {}
    for model_type in ("unet", "bert"):
        fusion = FusionOptions(model_type)
        if model_type == "unet":  # the CUDA-only fusions (GroupNorm, NHWC conv, BiasSplitGelu...) off: CPU engine
            for flag in ("group_norm", "skip_group_norm", "nhwc_conv", "bias_splitgelu", "bias_add"):
                setattr(fusion, f"enable_{flag}", False)
        model = optimize_model(path, model_type=model_type, num_heads=0, hidden_size=0, opt_level=0,
                               optimization_options=fusion, use_gpu=False)  # fmt: skip
        with tempfile.TemporaryDirectory() as tmp:
            fused = str(Path(tmp) / "fused.onnx")
            model.save_model_to_file(fused)
            session = ort.InferenceSession(fused, options(), providers=["CPUExecutionProvider"])
            diff = float(np.abs(session.run(None, feeds)[0] - reference).max())
            out[model_type] = {"fusions": {k: v for k, v in model.get_fused_operator_statistics().items() if v},
                               "ms_b1": median_ms(session, feeds, runs), "max_abs_diff": diff}  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", default="runs/bench-runtime/shapes32-progressive-4step")
    parser.add_argument("--runs", type=int, default=200)
    args = parser.parse_args()
    feeds = inputs(1, np.random.default_rng(0))
    result = {"machine": machine(), "bundle": args.bundle, "engines": {}}
    for engine in ("onnx-int8-ort", "onnx-fp32"):
        path = str(Path(args.bundle) / f"denoiser.{engine}.onnx")
        timed = {label: median_ms(ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"]), feeds,
                                  args.runs)
                 for label, opts in (("ms_b1_2_threads", options()), ("ms_b1_1_thread", options(threads=1)),
                                     ("ms_b1_batch_dim_fixed_to_1", options(batch_one=True)))}  # fmt: skip
        result["engines"][engine] = timed | kernel_profile(path, feeds, 50)
        if engine == "onnx-fp32":
            result["engines"][engine]["transformer_optimizer"] = transformer_fusions(path, feeds, args.runs)
        print(json.dumps({engine: result["engines"][engine]}), flush=True)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
