"""OpenVINO exporter: IR (.xml + .bin) converted from the fp32 ONNX graph, in fp32, fp16 (compressed weights),
int8 (NNCF post-training quantization on the IR with the sampler's calibration data) and int8w (weight-only)."""

from __future__ import annotations

import logging
import re

from fewstep.export.registry import Artifact, ExportContext
from fewstep.export.to_onnx import export_fp32, sensitive_nodes

PRECISIONS = ("fp32", "fp16", "int8", "int8w")


def _need_openvino():
    try:
        import openvino as ov
    except ImportError as e:
        raise ImportError("OpenVINO export needs `pip install 'fewstep[export]'` (openvino, nncf)") from e
    return ov


def export(ctx: ExportContext, precision: str) -> Artifact:
    if precision not in PRECISIONS:
        raise ValueError(f"OpenVINO export writes {', '.join(PRECISIONS)}; got {precision!r}")
    ov = _need_openvino()
    if ctx.onnx_fp32 is None:
        ctx.onnx_fp32 = export_fp32(ctx.denoiser, ctx.out_dir / ".denoiser.fp32.tmp.onnx")
    model = ov.convert_model(str(ctx.onnx_fp32))  # keeps the dynamic batch
    info: dict = {"openvino": ov.get_version(), "from": "onnx"}
    if precision in ("int8", "int8w"):
        import nncf
        import onnx

        nncf.set_log_level(logging.WARNING)  # its per-node INFO lines drown the export log
        if precision == "int8":
            if not ctx.calibration:
                raise ValueError("int8 quantization needs calibration data (the student's sampler inputs)")
            keep = sensitive_nodes(onnx.load(str(ctx.onnx_fp32)))
            # OpenVINO names a converted node after the ONNX node, plus suffixes such as "/WithoutBiases"
            patterns = [f"^{re.escape(name)}(/.*)?$" for name in keep]
            model = nncf.quantize(
                model,
                nncf.Dataset(ctx.calibration),
                model_type=nncf.ModelType.TRANSFORMER,
                subset_size=len(ctx.calibration),
                ignored_scope=nncf.IgnoredScope(patterns=patterns, validate=False),
            )
            info.update(quantizer="nncf", nncf=nncf.__version__, kept_float=keep)
        else:
            model = nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM)
            info.update(quantizer="nncf weight compression", weights="int8 asymmetric", activations="float")
    xml = ctx.out_dir / f".denoiser.openvino-{precision}.tmp.xml"
    ov.save_model(model, str(xml), compress_to_fp16=precision == "fp16")
    return Artifact(xml, "openvino", precision, info, extra_files=[xml.with_suffix(".bin")])


def can_run() -> str | None:
    try:
        _need_openvino()
    except ImportError as e:
        return str(e)
    return None
