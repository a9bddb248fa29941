"""TensorRT exporter: a serialized engine (`.plan`) built from ONNX with the TensorRT Python API.

- fp32 / fp16 start from the fp32 ONNX graph (`ctx.onnx_fp32`, dynamic batch); fp16 lets TensorRT pick fp16
  kernels (`BuilderFlag.FP16`, TensorRT 10's weak typing) or, with `options["fp16_onnx"]`, builds a strongly
  typed network from an fp16 graph you made (the only fp16 route in TensorRT 11, which removed the flag).
- int8 is *explicit* quantization only: a Q/DQ graph in `options["qdq_onnx"]` built as a strongly typed network.
  TensorRT's calibrators (implicit int8) are deprecated since TensorRT 10.1 and are not used.
- one optimization profile over the batch: min 1, opt `options.get("opt_batch", 1)`, max `ctx.max_batch` (a CFG
  engine sees 2x the images per call: the caller sets max_batch accordingly).

Building needs an NVIDIA GPU and `tensorrt` (`pip install 'fewstep[gpu]'`; its wheels fetch their libraries from
NVIDIA's index). The operator check below needs only `onnx`, so an export can refuse a graph the TensorRT ONNX
parser would reject before anyone reaches a GPU.
"""

from __future__ import annotations

import ctypes
import sys
from pathlib import Path

from fewstep.export.context import Artifact, ExportContext
from fewstep.export.targets.onnx import export as onnx_export
from fewstep.export.targets.onnx import shared_fp32

# Operators the TensorRT ONNX parser supports ("Y" rows of the support matrix in onnx/onnx-tensorrt
# docs/operators.md, TensorRT 10.15 revision: opsets 9-24). The matrix adds per-op restrictions (e.g. Resize modes,
# `axes` as initializers) that a name check cannot see; the parser itself has the last word. RotaryEmbedding,
# RMSNormalization and TensorScatter arrived in 10.15 (onnx-tensorrt CHANGELOG), so an older TensorRT 10 refuses them.
TENSORRT_ONNX_OPS = frozenset(
    {
        "Abs", "Acos", "Acosh", "Add", "And", "ArgMax", "ArgMin", "Asin", "Asinh", "Atan", "Atanh", "Attention",
        "AveragePool", "BatchNormalization", "BlackmanWindow", "Cast", "CastLike", "Ceil", "Celu", "Clip", "Concat",
        "Constant", "ConstantOfShape", "Conv", "ConvTranspose", "Cos", "Cosh", "CumSum", "DeformConv",
        "DepthToSpace", "DequantizeLinear", "Div", "Dropout", "Einsum", "Elu", "Equal", "Erf", "Exp", "Expand",
        "EyeLike", "Flatten", "Floor", "Gather", "GatherElements", "GatherND", "Gelu", "Gemm", "GlobalAveragePool",
        "GlobalLpPool", "GlobalMaxPool", "Greater", "GreaterOrEqual", "GridSample", "GroupNormalization", "GRU",
        "HammingWindow", "HannWindow", "HardSigmoid", "HardSwish", "Hardmax", "Identity", "If", "ImageScaler",
        "InstanceNormalization", "IsInf", "IsNaN", "LayerNormalization", "LeakyRelu", "Less", "LessOrEqual", "Log",
        "LogSoftmax", "Loop", "LRN", "LSTM", "LpNormalization", "LpPool", "MatMul", "Max", "MaxPool", "Mean",
        "MeanVarianceNormalization", "Min", "Mish", "Mod", "Mul", "Neg", "NonMaxSuppression", "NonZero", "Not",
        "OneHot", "Or", "Pad", "ParametricSoftplus", "Pow", "PRelu", "QuantizeLinear", "RandomNormal",
        "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Range", "Reciprocal", "ReduceL1", "ReduceL2",
        "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean", "ReduceMin", "ReduceProd", "ReduceSum",
        "ReduceSumSquare", "Relu", "Reshape", "Resize", "ReverseSequence", "RMSNormalization", "RNN", "RoiAlign",
        "RotaryEmbedding", "Round", "STFT", "ScaledTanh", "Scan", "Scatter", "ScatterElements", "ScatterND", "Selu",
        "Shape", "Shrink", "Sigmoid", "Sign", "Sin", "Sinh", "Size", "Slice", "Softmax", "Softplus", "Softsign",
        "SpaceToDepth", "Split", "Sqrt", "Squeeze", "Sub", "Sum", "Tan", "Tanh", "TensorScatter", "ThresholdedRelu",
        "Tile", "TopK", "Transpose", "Trilu", "Unsqueeze", "Upsample", "Where", "Xor",
    }
)  # fmt: skip
STANDARD_DOMAINS = frozenset({"", "ai.onnx"})
SUBGRAPH_ATTRS = ("then_branch", "else_branch", "body")  # If, Loop, Scan


class TensorRTParseError(ValueError):
    """The TensorRT ONNX parser refused a graph; the message lists each failing node."""


# ---- GPU-free operator check -------------------------------------------------------------------------------


def _load_graph(model_or_path):
    import onnx  # export extra

    if isinstance(model_or_path, onnx.ModelProto):
        return model_or_path
    # weights are irrelevant to an operator check: leave external data on disk
    return onnx.load(str(model_or_path), load_external_data=False)


def unsupported_ops(onnx_model_or_path) -> dict[str, list[str]]:
    """{op type: [node names]} of the nodes the TensorRT ONNX parser cannot import.

    Ops outside the standard domain ("" / "ai.onnx") are all reported, as "domain::OpType" (com.microsoft
    contrib ops included: they exist only in ONNX Runtime). Model-local functions are checked through their
    bodies, If/Loop/Scan through their subgraphs (nodes named "parent/child").
    """
    model = _load_graph(onnx_model_or_path)
    functions = {(f.domain, f.name): f for f in model.functions}
    found: dict[str, list[str]] = {}
    _scan(model.graph.node, functions, found, prefix="", expanding=())
    return found


def _scan(nodes, functions: dict, found: dict[str, list[str]], prefix: str, expanding: tuple) -> None:
    for i, node in enumerate(nodes):
        name = prefix + (node.name or f"#{i}:{node.op_type}")
        key = (node.domain, node.op_type)
        if key in functions and key not in expanding:  # a local function: TensorRT inlines its body
            _scan(functions[key].node, functions, found, name + "/", (*expanding, key))
        elif node.domain not in STANDARD_DOMAINS:
            found.setdefault(f"{node.domain}::{node.op_type}", []).append(name)
        elif node.op_type not in TENSORRT_ONNX_OPS:
            found.setdefault(node.op_type, []).append(name)
        for attr in node.attribute:
            if attr.name in SUBGRAPH_ATTRS and attr.HasField("g"):
                _scan(attr.g.node, functions, found, f"{name}/{attr.name}/", expanding)


def check_for_tensorrt(path) -> None:
    """Raise ValueError naming every operator (and its nodes) that the TensorRT ONNX parser does not support."""
    bad = unsupported_ops(path)
    if bad:
        lines = [
            f"  {op}: {', '.join(names[:5])}{' ...' if len(names) > 5 else ''}" for op, names in sorted(bad.items())
        ]
        raise ValueError(
            f"{path} has operators the TensorRT ONNX parser does not support:\n"
            + "\n".join(lines)
            + "\nRe-export with standard ONNX ops (no onnxruntime contrib / fused ops, e.g. skip ORT graph "
            "optimizations), or serve this graph with ONNX Runtime instead."
        )


def qdq_problems(onnx_model_or_path) -> list[str]:
    """Why a graph cannot become a TensorRT int8 engine: no Q/DQ nodes at all, or zero points that are not int8
    zeros (TensorRT quantization is symmetric and signed; operators.md: Q/DQ zero points must be 0)."""
    from onnx import numpy_helper  # export extra

    model = _load_graph(onnx_model_or_path)
    consts = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        value = [a.t for a in node.attribute if a.name == "value"] if node.op_type == "Constant" else []
        if value:
            consts[node.output[0]] = value[0]
    qdq = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    if not qdq:
        return ["the graph has no QuantizeLinear/DequantizeLinear nodes: it is not explicitly quantized"]
    problems = []
    for node in qdq:
        zp = node.input[2] if len(node.input) > 2 else ""
        if zp not in consts:
            continue  # no zero point (0) or a computed one the parser will judge
        arr = numpy_helper.to_array(consts[zp])
        if arr.dtype.name != "int8" or arr.any():
            problems.append(f"{node.op_type} {node.name or zp}: zero point is {arr.dtype.name} {arr.ravel()[:4]}")
    return problems


# ---- building ----------------------------------------------------------------------------------------------


def _tensorrt():
    try:
        import tensorrt as trt  # gpu extra
    except ImportError as e:
        raise ImportError(
            "TensorRT export needs an NVIDIA GPU and the `tensorrt` package: pip install 'fewstep[gpu]' "
            "(its wheels fetch the TensorRT libraries from NVIDIA's index, pypi.nvidia.com, which must be reachable)"
        ) from e
    return trt


def _cuda_device_problem() -> str | None:
    """None when the NVIDIA driver sees a CUDA device; asked through the driver API (libcuda) so the check
    works without torch or cuda-python."""
    lib_name = "nvcuda.dll" if sys.platform == "win32" else "libcuda.so.1"
    try:
        cuda = ctypes.CDLL(lib_name)
    except OSError:
        return f"no NVIDIA driver here ({lib_name} not found): TensorRT needs an NVIDIA GPU"
    if cuda.cuInit(0) != 0:
        return "the NVIDIA driver is present but CUDA failed to initialise (cuInit): no usable GPU"
    count = ctypes.c_int(0)
    if cuda.cuDeviceGetCount(ctypes.byref(count)) != 0 or count.value < 1:
        return "no CUDA device is visible (check CUDA_VISIBLE_DEVICES)"
    return None


def _source_graph(ctx: ExportContext, precision: str) -> Path:
    if precision == "int8":
        # built from an explicitly quantized (Q/DQ) graph, calibrators are not used: the given one, else NNCF's,
        # symmetric (TensorRT accepts only zero points of 0)
        if not ctx.options.get("qdq_onnx"):
            ctx.options["qdq_onnx"] = _symmetric_qdq_graph(ctx)
        path = Path(ctx.options["qdq_onnx"])
        problems = qdq_problems(path)
        if problems:
            raise ValueError(
                f"{path} cannot be a TensorRT int8 engine:\n  "
                + "\n  ".join(problems)
                + "\nQuantize with symmetric signed int8, e.g. nncf.quantize(..., preset=nncf.QuantizationPreset."
                "PERFORMANCE): NNCF's TRANSFORMER model type defaults to MIXED (asymmetric activations) and "
                "ONNX Runtime's QDQ uses uint8"
            )
    elif precision == "fp16" and ctx.options.get("fp16_onnx"):
        path = Path(ctx.options["fp16_onnx"])
    else:
        path = shared_fp32(ctx)  # the fp32 ONNX graph, written once per export
    if not path.is_file():
        raise FileNotFoundError(f"ONNX graph for the TensorRT {precision} engine not found: {path}")
    return path


def _symmetric_qdq_graph(ctx: ExportContext) -> Path:
    saved = dict(ctx.options)
    ctx.options.update(quantizer="nncf", symmetric=True)
    try:
        return onnx_export(ctx, "int8").path
    finally:
        ctx.options = saved


def batch_profile(ctx: ExportContext) -> dict[str, int]:
    opt, top = int(ctx.options.get("opt_batch", 1)), int(ctx.max_batch)
    if not 1 <= opt <= top:
        raise ValueError(f"TensorRT profile needs 1 <= opt_batch <= max_batch; got opt {opt}, max {top}")
    return {"min": 1, "opt": opt, "max": top}


def _describe(error) -> str:
    """One parser error as "node NAME (OP): CODE: description" (node_name/node_operator are TensorRT 10 API)."""
    name = error.node_name() if hasattr(error, "node_name") else ""
    op = error.node_operator() if hasattr(error, "node_operator") else "?"
    return f"  node {name or error.node()} ({op}): {error.code()}: {error.desc()}"


def _parse(trt, network, logger, path: Path) -> None:
    parser = trt.OnnxParser(network, logger)
    if parser.parse_from_file(str(path)):  # from the file, so external weights next to it are found
        return
    errors = [_describe(parser.get_error(i)) for i in range(parser.num_errors)]
    raise TensorRTParseError(f"the TensorRT ONNX parser refused {path}:\n" + "\n".join(errors or ["  (no details)"]))


def _add_profile(builder, network, config, batch: dict[str, int]) -> dict[str, dict[str, list[int]]]:
    """One optimization profile: the batch axis of every input from min to max, other axes as in the graph."""
    profile = builder.create_optimization_profile()
    shapes = {}
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        dims = list(tensor.shape)
        if not dims or dims[0] != -1:
            raise ValueError(
                f"input {tensor.name!r} has shape {dims}: export the ONNX graph with a dynamic batch axis 0"
            )
        if any(d < 0 for d in dims[1:]):
            raise ValueError(f"input {tensor.name!r} has shape {dims}: only the batch axis may be dynamic")
        shapes[tensor.name] = {k: [batch[k], *dims[1:]] for k in ("min", "opt", "max")}
        profile.set_shape(tensor.name, *(shapes[tensor.name][k] for k in ("min", "opt", "max")))
    config.add_optimization_profile(profile)
    return shapes


def build_plan(path: Path, precision: str, batch: dict[str, int], options: dict) -> tuple[bytes, dict]:
    """Parse `path` and build a serialized engine; -> (plan bytes, what to record about the build)."""
    trt = _tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    weak_fp16 = precision == "fp16" and not options.get("fp16_onnx")
    if weak_fp16 and not hasattr(trt.BuilderFlag, "FP16"):
        raise ValueError(
            f"TensorRT {trt.__version__} has no BuilderFlag.FP16 (weak typing was removed in TensorRT 11): pass an "
            "fp16 ONNX graph as options['fp16_onnx'] (e.g. ModelOpt AutoCast or onnxruntime.transformers.float16 "
            "with keep_io_types=True)"
        )
    # Strong typing takes every precision from the graph's own types (fp32 graph -> fp32 engine, Q/DQ -> int8, an
    # fp16 graph -> fp16); only "fp16 from the fp32 graph" needs weak typing, where BuilderFlag.FP16 lets TensorRT
    # choose fp16 kernels. EXPLICIT_BATCH is not set: TensorRT 10 ignores it (always explicit batch), deprecated.
    network_flags = [] if weak_fp16 else ["STRONGLY_TYPED"]
    flags = sum(1 << int(getattr(trt.NetworkDefinitionCreationFlag, f)) for f in network_flags)
    network = builder.create_network(flags)
    _parse(trt, network, logger, path)
    config = builder.create_builder_config()
    builder_flags = []
    if weak_fp16:
        config.set_flag(trt.BuilderFlag.FP16)
        builder_flags.append("FP16")
    tf32 = bool(options.get("tf32", False))
    if not tf32 and hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)  # TF32 is on by default; keep fp32 layers in real fp32
    elif tf32:
        builder_flags.append("TF32")
    if options.get("workspace_mb"):
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(options["workspace_mb"]) << 20)
    shapes = _add_profile(builder, network, config, batch)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeError(f"TensorRT could not build an engine from {path}; its log above says why")
    info = {"network_flags": network_flags, "builder_flags": builder_flags, "tf32": tf32, "shapes": shapes}
    return bytes(plan), info


def export(ctx: ExportContext, precision: str) -> Artifact:
    source = _source_graph(ctx, precision)
    check_for_tensorrt(source)  # a clear error before any GPU work
    trt = _tensorrt()
    problem = _cuda_device_problem()
    if problem:
        raise RuntimeError(f"cannot build a TensorRT engine on this machine: {problem}")
    batch = batch_profile(ctx)
    plan, built = build_plan(source, precision, batch, ctx.options)
    out = ctx.out_dir / f"denoiser.{precision}.plan"
    out.write_bytes(plan)
    info = {
        "profile": {**batch, "shapes": built.pop("shapes")},
        "tensorrt_version": trt.__version__,
        **built,
        "source_onnx": source.name,
    }
    if precision == "int8":
        info["quantization"] = "explicit Q/DQ"
    return Artifact(out, "tensorrt", precision, info)
