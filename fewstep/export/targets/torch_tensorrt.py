"""Torch-TensorRT exporter: the torch denoiser compiled ahead of time (`ir="dynamo"`) into TensorRT engines
embedded in a TorchScript module (`denoiser.{precision}.ts`, default) or an ExportedProgram
(`denoiser.{precision}.ep`, `options["torch_trt_format"] = "exported_program"`).

The result runs in torch with `torch_tensorrt` imported (TorchScript also from C++ with its runtime library): the
runtime's `torch-tensorrt` backend loads the TorchScript form, which needs torch; for the torch-free runtime use
the `tensorrt` exporter. Needs an NVIDIA GPU and `torch-tensorrt`
(`pip install 'fewstep[gpu]'`, NVIDIA's index).

Precision: fp16 casts the module and its image/text inputs to half inside a wrapper whose inputs and outputs
stay float32. Newer Torch-TensorRT (explicit typing by default) takes precision only from the graph's dtypes and
deprecates `enabled_precisions`; older releases read `enabled_precisions`. Both are given, so either builds fp16.
"""

from __future__ import annotations

import copy

from fewstep.export.context import Artifact, ExportContext
from fewstep.export.denoiser import HalfIO
from fewstep.runtime.registry import get_backend

FORMATS = {"torchscript": "ts", "exported_program": "ep"}


def _torch_tensorrt():
    try:
        import torch_tensorrt  # gpu extra
    except ImportError as e:
        raise ImportError(
            "Torch-TensorRT export needs an NVIDIA GPU and `torch-tensorrt` matching your CUDA torch: "
            "pip install 'fewstep[gpu]' (its wheels come from NVIDIA's / PyTorch's indexes)"
        ) from e
    return torch_tensorrt


def export_program(module, examples: tuple, max_batch: int):
    """`torch.export` of the denoiser (or its `HalfIO`) with one batch `Dim` shared by every input, given by
    position: the forward's optional inputs are named extra1..3, not pooled / extra_ids / guidance. Runs on any
    device (tested on CPU); Torch-TensorRT compiles the result."""
    import torch  # train extra

    batch = torch.export.Dim("batch", min=1, max=max_batch)
    return torch.export.export(module, examples, dynamic_shapes=tuple({0: batch} for _ in examples))


def compile_denoiser(ctx: ExportContext, precision: str):
    """-> (compiled torch.fx.GraphModule, its dynamic `torch_tensorrt.Input`s, example CUDA inputs).

    The module is exported first with one shared `torch.export.Dim` for the batch of every input (the
    documented explicit-dynamic-shapes route), so torch.export never sees unrelated per-input batch symbols."""
    import torch  # train extra

    torch_trt = _torch_tensorrt()
    opt, top = int(ctx.options.get("opt_batch", 1)), int(ctx.max_batch)
    if not 1 <= opt <= top:
        raise ValueError(f"Torch-TensorRT profile needs 1 <= opt_batch <= max_batch; got opt {opt}, max {top}")
    specs = ctx.denoiser.inputs
    module = copy.deepcopy(ctx.denoiser).eval().cuda()  # never move the caller's model
    if precision == "fp16":
        module = HalfIO(module)
    dtype = torch.float16 if precision == "fp16" else torch.float32
    inputs = [
        torch_trt.Input(
            min_shape=s.concrete(1), opt_shape=s.concrete(opt), max_shape=s.concrete(top), dtype=torch.float32
        )
        for s in specs
    ]
    examples = tuple(t.cuda() for t in ctx.denoiser.example_inputs(2))  # batch 2: export specializes size-1 axes
    with torch.no_grad():
        program = export_program(module, examples, top)
        compiled = torch_trt.compile(
            program,
            ir="dynamo",
            inputs=inputs,
            enabled_precisions={dtype},
            min_block_size=int(ctx.options.get("min_block_size", 1)),
        )
    return compiled, inputs, list(examples)


def export(ctx: ExportContext, precision: str) -> Artifact:
    fmt = ctx.options.get("torch_trt_format", "torchscript")
    if fmt not in FORMATS:
        raise ValueError(f"torch_trt_format must be one of {', '.join(FORMATS)}; got {fmt!r}")
    problem = get_backend("torch-tensorrt").unavailable_reason()
    if problem:
        raise RuntimeError(f"cannot compile with Torch-TensorRT on this machine: {problem}")
    torch_trt = _torch_tensorrt()
    compiled, trt_inputs, examples = compile_denoiser(ctx, precision)
    out = ctx.out_dir / f"denoiser.{precision}.{FORMATS[fmt]}"
    # torchscript is traced with example tensors (the embedded engines keep their min..max profile); an
    # exported program gets the Input ranges, from which Torch-TensorRT infers its dynamic batch when it retraces
    torch_trt.save(compiled, str(out), output_format=fmt, inputs=examples if fmt == "torchscript" else trt_inputs)
    info = {
        "format": fmt,
        "profile": {"min": 1, "opt": int(ctx.options.get("opt_batch", 1)), "max": int(ctx.max_batch)},
        "torch_tensorrt_version": torch_trt.__version__,
        "io_dtype": "float32",
    }
    return Artifact(out, "torch-tensorrt", precision, info)
