"""ONNX exporter: the denoiser as an ONNX graph with a dynamic batch (fp32), an fp16 copy, and int8 QDQ
graphs from NNCF post-training quantization (default) or ONNX Runtime's `quantize_static` (for comparison).

Both quantizers get the same calibration data (the student's own sampler inputs, see `calibration.py`) and
keep the same sensitive layers in float: the first and last convolutions and the time / guidance embedding.
"""

from __future__ import annotations

import gc
import logging
from pathlib import Path

import numpy as np

from fewstep.export import onnx_files
from fewstep.export.context import SHARED_FP32_ONNX, Artifact, ExportContext
from fewstep.export.denoiser import Denoiser
from fewstep.export.onnx_files import EXTERNAL_DATA_ABOVE, load_graph

OPSET = 20
QUANTIZERS = ("nncf", "ort")  # the onnxruntime backend offers both (`Backend.quantizers`), one engine each
# layers kept in float by int8 quantization: parameter-name fragments of the modules they belong to
SENSITIVE = ("conv_in.", "conv_out.", "time_embedding.")
MAX_BATCH = 4096


_need_onnx = onnx_files.need_onnx


def export_fp32(denoiser: Denoiser, path: Path) -> Path:
    """The denoiser with a dynamic batch on every input; checked and shape-inferred."""
    names = denoiser.input_names
    outputs = [s.name for s in denoiser.outputs]
    return export_graph(denoiser, denoiser.example_inputs(2), path, names, outputs)


def export_graph(module, args: tuple, path: Path, input_names: list[str], output_names: list[str],
                 max_batch: int = MAX_BATCH) -> Path:  # fmt: skip
    """`torch.onnx.export` (dynamo) of any graph fewstep writes: dim 0 of every non-scalar input is one dynamic
    batch (up to `max_batch`), then `finish_onnx`. `args` are example inputs with a batch of at least 2. Weights
    over `EXTERNAL_DATA_ABOVE` bytes are streamed to `<path>.data` (see `onnx_files`)."""
    import torch  # train extra

    _need_onnx()
    batch = torch.export.Dim("batch", min=1, max=max_batch)
    dynamic = tuple(None if a.ndim == 0 else {0: batch} for a in args)
    tensors = [*module.parameters(), *module.buffers()]
    external = sum(t.numel() * t.element_size() for t in tensors) > EXTERNAL_DATA_ABOVE
    onnx_files.remove(path)
    with torch.no_grad():
        torch.onnx.export(module.eval(), tuple(args), str(path), input_names=input_names, output_names=output_names,
                          dynamic_shapes=dynamic, opset_version=OPSET, dynamo=True, external_data=external,
                          verbose=False)  # fmt: skip
    _forget_rewriter_graphs()
    return finish_onnx(path)


def _forget_rewriter_graphs() -> None:
    """The exporter's optimizer runs onnxscript's module-level rewrite rules, whose pattern matchers keep the last
    graph they matched (onnxscript 0.7), and through it every weight of the exported model: at SD1.5 size a
    second 3.4 GB UNet kept alive until the next export. Drop those references."""
    try:
        from onnxscript.rewriter._matcher import SimplePatternMatcher  # comes with torch.onnx's exporter
    except ImportError:
        return
    for obj in gc.get_objects():
        if isinstance(obj, SimplePatternMatcher):
            for name in ("_graph", "_current_node", "_match", "_tracer"):
                if name in obj.__dict__:
                    setattr(obj, name, None)


def finish_onnx(path: Path) -> Path:
    """Every graph fewstep writes: exporter metadata stripped, full checker run, shapes inferred, saved in place.
    A graph with external weights is checked and shape-inferred by path: its weights never enter memory."""
    onnx = _need_onnx()
    model = strip_metadata(load_graph(path))
    if not onnx_files.external_files(path, model):
        onnx.checker.check_model(model, full_check=True)
        onnx.save(onnx.shape_inference.infer_shapes(model), str(path))
        return path
    onnx.save_model(model, str(path))  # the graph only; the weights stay where they are
    del model
    onnx.checker.check_model(str(path), full_check=True)
    onnx.shape_inference.infer_shapes_path(str(path))
    return path


def strip_metadata(model):
    """Drop the exporter's per-node stack traces and name scopes: they doubled the file of a small UNet."""
    for node in model.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    for value in (*model.graph.input, *model.graph.output, *model.graph.value_info):
        del value.metadata_props[:]
    for init in model.graph.initializer:
        del init.metadata_props[:]
    return model


def to_fp16(src: Path, dst: Path) -> Path:
    """Weights and compute in fp16, inputs and outputs kept fp32 (the runtime feeds float32 everywhere). A graph
    with external weights is converted without in-memory shape inference (2 GiB limit): `finish_onnx` ran it."""
    onnx = _need_onnx()
    from onnxruntime.transformers.float16 import convert_float_to_float16  # export extra

    external = bool(onnx_files.external_files(src))
    model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True, disable_shape_infer=external)
    return onnx_files.save(model, dst, external=onnx_files.weight_bytes(model) > EXTERNAL_DATA_ABOVE)


def sensitive_nodes(model) -> list[str]:
    """Names of Conv / Gemm / MatMul nodes whose weights belong to a SENSITIVE module."""
    keep = []
    for node in model.graph.node:
        if node.op_type in ("Conv", "Gemm", "MatMul") and any(f in i for i in node.input for f in SENSITIVE):
            keep.append(node.name)
    return keep


def quantize_nncf(
    src: Path, dst: Path, calibration: list[dict[str, np.ndarray]], keep_float: list[str], symmetric: bool = False
) -> dict:
    """NNCF post-training quantization of the ONNX graph (QDQ, int8 weights per channel). `symmetric`: all
    zero points 0 (NNCF's PERFORMANCE preset), which TensorRT's explicit quantization requires."""
    onnx = _need_onnx()
    try:
        import nncf  # export extra
    except ImportError as e:
        raise ImportError("int8 quantization with NNCF needs `pip install 'fewstep[export]'` (nncf)") from e
    from nncf.onnx.quantization.backend_parameters import BackendParameters  # export extra
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters  # export extra

    nncf.set_log_level(logging.WARNING)  # its per-node INFO lines drown the export log
    external = bool(onnx_files.external_files(src))
    # a graph with external weights is handed over without them; NNCF reads them from the directory
    model = onnx.load(str(src), load_external_data=not external)
    advanced = AdvancedQuantizationParameters(
        backend_params={BackendParameters.EXTERNAL_DATA_DIR: str(src.parent.resolve())} if external else {}
    )
    quantized = nncf.quantize(
        model,
        nncf.Dataset(calibration),
        model_type=nncf.ModelType.TRANSFORMER,  # lowest error on attention UNets (docs/reference/toolchain.md)
        preset=nncf.QuantizationPreset.PERFORMANCE if symmetric else None,  # None: the model type's (MIXED)
        subset_size=len(calibration),
        ignored_scope=nncf.IgnoredScope(names=keep_float, validate=False),
        advanced_parameters=advanced,
    )
    del model
    onnx_files.save(quantized, dst, external=onnx_files.weight_bytes(quantized) > EXTERNAL_DATA_ABOVE)
    return {"quantizer": "nncf", "nncf": nncf.__version__, "model_type": "transformer",
            "preset": "performance" if symmetric else "mixed"}  # fmt: skip


def _prepare_for_ort_quantization(src: Path, dst: Path) -> None:
    """Dynamo graphs need two fixes first (docs/reference/toolchain.md): stale value_info breaks ORT's shape
    inference, and initializers shared by several nodes (GroupNorm's scale/bias) are refused by `quantize_static`."""
    onnx = _need_onnx()
    model = onnx.load(str(src))
    external = onnx_files.weight_bytes(model) > EXTERNAL_DATA_ABOVE
    del model.graph.value_info[:]
    inits = {i.name: i for i in model.graph.initializer}
    seen: set[str] = set()
    for node in model.graph.node:
        for k, name in enumerate(node.input):
            if name not in inits:
                continue
            if name in seen:
                copy = onnx.TensorProto()
                copy.CopyFrom(inits[name])
                copy.name = f"{name}__{node.name}_{k}"
                model.graph.initializer.append(copy)
                node.input[k] = copy.name
            seen.add(name)
    onnx_files.save(model, dst, external)


class _Reader:
    """ORT's CalibrationDataReader over a list of input dicts."""

    def __init__(self, items: list[dict[str, np.ndarray]]):
        self._it = iter(items)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)


def quantize_ort(src: Path, dst: Path, calibration: list[dict[str, np.ndarray]], keep_float: list[str]) -> dict:
    """ONNX Runtime static quantization (QDQ): u8 activations x s8 weights per channel (ORT's fast CPU pair)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static  # export extra

    prepared = dst.with_name(dst.name + ".prep.onnx")
    try:
        _prepare_for_ort_quantization(src, prepared)
        quantize_static(
            str(prepared),
            str(dst),
            _Reader(calibration),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
            calibrate_method=CalibrationMethod.MinMax,
            # only the GEMM-heavy ops: quantizing every op (ORT's default) cost ~13 dB of final-image PSNR
            op_types_to_quantize=["Conv", "Gemm", "MatMul"],
            nodes_to_exclude=keep_float,
            use_external_data_format=bool(onnx_files.external_files(prepared)),
        )
    finally:
        onnx_files.remove(prepared)
    return {"quantizer": "ort", "format": "QDQ", "activations": "uint8", "weights": "int8 per channel",
            "ops": ["Conv", "Gemm", "MatMul"]}  # fmt: skip


def shared_fp32(ctx: ExportContext) -> Path:
    """The fp32 ONNX graph of this export, written once: OpenVINO and TensorRT engines start from it too."""
    if ctx.onnx_fp32 is None:
        ctx.onnx_fp32 = export_fp32(ctx.denoiser, ctx.out_dir / SHARED_FP32_ONNX)
    return ctx.onnx_fp32


def export(ctx: ExportContext, precision: str) -> Artifact:
    shared_fp32(ctx)
    assert ctx.onnx_fp32 is not None
    if precision == "fp32":
        return Artifact(ctx.onnx_fp32, "onnxruntime", "fp32", {"opset": OPSET})
    if precision == "fp16":
        path = to_fp16(ctx.onnx_fp32, ctx.out_dir / ".denoiser.fp16.tmp.onnx")
        return Artifact(path, "onnxruntime", "fp16", {"opset": OPSET, "io": "float32"})
    quantizer = ctx.options.get("quantizer", "nncf")
    if quantizer not in QUANTIZERS:
        raise ValueError(f"unknown int8 quantizer {quantizer!r}; choose {' or '.join(QUANTIZERS)}")
    calibration = ctx.calibration_inputs()
    if not calibration:
        raise ValueError("int8 quantization needs calibration data (the student's sampler inputs)")
    keep = sensitive_nodes(load_graph(ctx.onnx_fp32))
    path = ctx.out_dir / f".denoiser.int8.{quantizer}.tmp.onnx"
    if quantizer == "nncf":
        info = quantize_nncf(ctx.onnx_fp32, path, calibration, keep, symmetric=ctx.options.get("symmetric", False))
    else:
        info = quantize_ort(ctx.onnx_fp32, path, calibration, keep)
    return Artifact(path, "onnxruntime", "int8", {"opset": OPSET, **info, "kept_float": keep})
