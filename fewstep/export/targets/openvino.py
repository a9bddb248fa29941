"""OpenVINO exporter: IR (.xml + .bin) converted from the fp32 ONNX graph, in fp32, fp16 (compressed weights),
bf16 (fp16-stored weights, computed in bf16 by the runtime where the CPU has it natively), int8 (NNCF
post-training quantization on the IR with the sampler's calibration data), int8w (weight-only) and int4w (4-bit
symmetric weights in groups of 64 where NNCF can, 8-bit elsewhere; weight-only, no calibration)."""

from __future__ import annotations

import logging
import re

from fewstep.export.context import Artifact, ExportContext
from fewstep.export.onnx_files import load_graph
from fewstep.export.targets.onnx import sensitive_nodes, shared_fp32


def _need_openvino():
    try:
        import openvino as ov  # export extra
    except ImportError as e:
        raise ImportError("OpenVINO export needs `pip install 'fewstep[export]'` (openvino, nncf)") from e
    return ov


def export(ctx: ExportContext, precision: str) -> Artifact:
    ov = _need_openvino()
    fp32 = shared_fp32(ctx)
    model = ov.convert_model(str(fp32))  # keeps the dynamic batch
    info: dict = {"openvino": ov.get_version(), "from": "onnx"}
    if precision in ("int8", "int8w", "int4w"):
        import nncf  # export extra

        nncf.set_log_level(logging.WARNING)  # its per-node INFO lines drown the export log
        if precision == "int8":
            calibration = ctx.calibration_inputs()
            if not calibration:
                raise ValueError("int8 quantization needs calibration data (the student's sampler inputs)")
            keep = sensitive_nodes(load_graph(fp32))
            # OpenVINO names a converted node after the ONNX node, plus suffixes such as "/WithoutBiases"
            patterns = [f"^{re.escape(name)}(/.*)?$" for name in keep]
            model = nncf.quantize(
                model,
                nncf.Dataset(calibration),
                model_type=nncf.ModelType.TRANSFORMER,
                subset_size=len(calibration),
                ignored_scope=nncf.IgnoredScope(patterns=patterns, validate=False),
            )
            info.update(quantizer="nncf", nncf=nncf.__version__, kept_float=keep)
        elif precision == "int8w":
            model = nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM)
            info.update(quantizer="nncf weight compression", weights="int8 asymmetric", activations="float")
        else:
            # channels not divisible by 64 (small students) get the largest power-of-two group that divides them
            adjust = nncf.AdvancedCompressionParameters(group_size_fallback_mode=nncf.GroupSizeFallbackMode.ADJUST)
            model = nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT4_SYM, group_size=64, ratio=1.0,
                                          advanced_parameters=adjust)  # fmt: skip
            info.update(quantizer="nncf weight compression", weights="int4 symmetric, groups of 64 (int8 where "
                        "4-bit does not apply)", activations="float")  # fmt: skip
    if precision == "bf16":
        info.update(weights="fp16 (stored)", compute="bf16 (INFERENCE_PRECISION_HINT at load)")
    xml = ctx.out_dir / f".denoiser.openvino-{precision}.tmp.xml"
    ov.save_model(model, str(xml), compress_to_fp16=precision in ("fp16", "bf16"))
    return Artifact(xml, "openvino", precision, info, extra_files=[xml.with_suffix(".bin")])
