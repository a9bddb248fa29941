"""CoreML exporter: the denoiser as an ML program `.mlpackage` with fixed shapes.

Precisions: "fp16" (fp16 compute and weights), "int8w" (fp16 program, 8-bit linear weight quantization),
"palette4" (fp16 program, 4-bit k-means palettized weights); "fp32" is also accepted (a reference for parity).
Compressed weights are decompressed to fp16 at load time, so compute is fp16 for all three.

Why it is done this way (coremltools 9.0, torch 2.13):
- torch.export + `run_decompositions({})`: diffusers UNets fail to convert from `torch.jit.trace`.
- fixed batch: a `RangeDim` batch failed to convert. A CFG sampler runs conditional and unconditional rows
  together, so the batch defaults to 2 with `options["cfg"]`, else 1; `options["coreml_batch"]` overrides.
- inputs and output pinned to float32: with fp16 compute and an iOS16+ target the converter otherwise gives an
  ExportedProgram fp16 inputs, while every engine takes float32.
- minimum target macOS13/iOS16: the first whose ML programs have the constexpr ops that compressed weights need.
Conversion runs anywhere; running the package (`MLModel.predict`) needs macOS.

Options read from `ctx.options`: "coreml_batch", "cfg", "coreml_target" (a `coremltools.target` name, default
"macOS13"), "coreml_weight_threshold" (tensors with fewer elements stay fp16; coremltools' default 2048).
"""

from __future__ import annotations

import math
import shutil
import weakref
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np

from fewstep.export.context import Artifact, ExportContext
from fewstep.export.context import fixed_batch as shared_fixed_batch

DEFAULT_TARGET = "macOS13"
DEFAULT_WEIGHT_THRESHOLD = 2048
WEIGHTS = {"fp32": "fp32", "fp16": "fp16", "int8w": "int8", "palette4": "palettized 4-bit"}
# written by coremltools' torch.export path for ExecuTorch debugging; not in the package manifest, CoreML ignores it
_DEBUG_MAPPING = "executorch_debug_handle_mapping.json"
# The uncompressed program of the last context, reused for its other precisions: a bundle asks for fp16, int8w and
# palette4 in turn, and converting a real UNet takes minutes. Dropped with its context (the converted package lives
# in a temporary directory until then); parameters edited or trained in place since then force a new conversion.
_last: dict = {}


def fixed_batch(options: dict) -> int:
    """The batch the package is converted for: "coreml_batch", else 2 for a CFG engine (cond + uncond), else 1."""
    return shared_fixed_batch(options, "coreml_batch")


def export(ctx: ExportContext, precision: str) -> Artifact:
    """Convert `ctx.denoiser` and write `ctx.out_dir / denoiser.{precision}.mlpackage`."""
    if precision not in WEIGHTS:
        raise ValueError(f"CoreML precision must be one of {', '.join(WEIGHTS)}; got {precision!r}")
    ct = _coremltools()
    batch = fixed_batch(ctx.options)
    target_name = str(ctx.options.get("coreml_target", DEFAULT_TARGET))
    threshold = int(ctx.options.get("coreml_weight_threshold", DEFAULT_WEIGHT_THRESHOLD))
    compute = "float32" if precision == "fp32" else "float16"

    base = _converted(ct, ctx, batch, compute, target_name)
    mlmodel = _compress(ct, base, precision, threshold)
    info = {
        "fixed_batch": batch,
        "compute_precision": compute,
        "weights": WEIGHTS[precision],
        "minimum_deployment_target": target_name,
        "specification_version": int(mlmodel.get_spec().specificationVersion),
        "coremltools": ct.__version__,
    }
    if precision in ("int8w", "palette4"):
        info["weight_threshold"] = threshold  # smaller tensors (norms, biases) stay fp16
    mlmodel.short_description = f"fewstep denoiser v = f(x, t, text, text_mask[, guidance]), {precision}"
    mlmodel.user_defined_metadata.update({f"fewstep.{k}": str(v) for k, v in info.items()})

    path = Path(ctx.out_dir) / f"denoiser.{precision}.mlpackage"
    _save(mlmodel, path)
    return Artifact(path, backend="coreml", precision=precision, info=info)


def describe(path: str | Path) -> dict:
    """Spec facts of a saved package, without loading it into CoreML (works on Linux).

    -> {"inputs"/"outputs": {name: {"shape", "dtype"}}, "specification_version", "metadata",
        "weights": {"float16"/"float32"/constexpr op type: {"tensors", "elements", "bytes"[, "bits_per_weight"]}},
        "package_bytes", "weight_file_bytes"}
    Dense weights are the float constants with at least one axis; a constexpr op (palettized, quantized) counts
    the bytes of its stored arrays at their declared bit width, and the elements of the weight it expands to.
    """
    ct = _coremltools()
    from coremltools.converters.mil.frontend.milproto.load import load as load_mil  # export extra

    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"no .mlpackage directory at {path}")
    model = ct.models.MLModel(str(path), skip_model_load=True)
    spec = model.get_spec()
    if spec.WhichOneof("Type") != "mlProgram":
        raise ValueError(f"{path} is a {spec.WhichOneof('Type')} model; describe() reads ML programs only")
    program = load_mil(spec, spec.specificationVersion, file_weights_dir=model.weights_dir)
    return {
        "inputs": {f.name: _feature(f) for f in spec.description.input},
        "outputs": {f.name: _feature(f) for f in spec.description.output},
        "specification_version": int(spec.specificationVersion),
        "metadata": dict(spec.description.metadata.userDefined),
        "weights": _weight_stats(program),
        "package_bytes": _tree_bytes(path),
        "weight_file_bytes": _tree_bytes(Path(model.weights_dir)) if model.weights_dir else 0,
    }


def _coremltools() -> Any:
    try:
        import coremltools  # export extra
    except ImportError as e:
        raise ImportError(f"CoreML export needs coremltools ({e}): pip install 'fewstep[export]'") from e
    return coremltools


def _target(ct: Any, name: str) -> Any:
    try:
        return ct.target[name]
    except KeyError:
        raise ValueError(
            f"unknown coreml_target {name!r}; use a coremltools.target name such as macOS13, macOS14, iOS16, iOS17"
        ) from None


def _converted(ct: Any, ctx: ExportContext, batch: int, compute: str, target_name: str) -> Any:
    """The uncompressed ML program for `ctx`, from the cache when the same context asked for it before."""
    key = (batch, compute, target_name, _fingerprint(ctx.denoiser))
    if _last and _last["ctx"]() is ctx and _last["key"] == key:
        return _last["model"]
    model = _convert(ct, ctx.denoiser, batch, compute, target_name)
    _last.clear()
    _last.update(ctx=weakref.ref(ctx), key=key, model=model)
    weakref.finalize(ctx, _forget_dead_context)
    return model


def _forget_dead_context() -> None:
    if _last and _last["ctx"]() is None:
        _last.clear()  # frees the converted package's temporary directory


def _fingerprint(module: Any) -> tuple:
    """Which tensors the module holds, their version counters (bumped by optimizer steps, copy_) and sums (which
    also catch writes through `.data`, which bypass the counter); cheap next to a conversion."""
    import torch  # train extra

    with torch.no_grad():
        return tuple(
            (id(t), t.data_ptr(), t._version, float(t.double().sum()))
            for t in chain(module.parameters(), module.buffers())
        )


def _convert(ct: Any, denoiser: Any, batch: int, compute: str, target_name: str) -> Any:
    """torch.export -> ML program, inputs named after the denoiser's specs, the output named "v"."""
    import torch  # train extra

    target = _target(ct, target_name)
    args = denoiser.example_inputs(batch)
    program = torch.export.export(denoiser, args).run_decompositions({})
    inputs = [ct.TensorType(name=s.name, shape=s.concrete(batch), dtype=np.dtype(s.dtype)) for s in denoiser.inputs]
    # naming the output here replaces the auto-generated name (e.g. "conv2d_32")
    outputs = [ct.TensorType(name=s.name, dtype=np.dtype(s.dtype)) for s in denoiser.outputs]
    return ct.convert(
        program,
        inputs=inputs,
        outputs=outputs,
        convert_to="mlprogram",
        compute_precision=ct.precision.FLOAT32 if compute == "float32" else ct.precision.FLOAT16,
        minimum_deployment_target=target,
        skip_model_load=True,  # loading needs macOS; the saved package is all we need
    )


def _compress(ct: Any, base: Any, precision: str, threshold: int) -> Any:
    """A new model (the cached base is never modified): compressed weights, or the base's spec as is."""
    import coremltools.optimize.coreml as cto  # export extra

    mlmodel = ct.models.MLModel(base.get_spec(), weights_dir=base.weights_dir, skip_model_load=True)
    if precision == "int8w":
        op = cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8", weight_threshold=threshold)
        return cto.linear_quantize_weights(mlmodel, cto.OptimizationConfig(global_config=op))
    if precision == "palette4":
        op = cto.OpPalettizerConfig(mode="kmeans", nbits=4, weight_threshold=threshold)
        return cto.palettize_weights(mlmodel, cto.OptimizationConfig(global_config=op))
    return mlmodel


def _save(mlmodel: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        shutil.rmtree(path)  # a stale package's files must not survive into the new one
    mlmodel.save(str(path))
    (path / _DEBUG_MAPPING).unlink(missing_ok=True)


def _feature(feature: Any) -> dict:
    from coremltools.proto import FeatureTypes_pb2  # export extra

    kind = feature.type.WhichOneof("Type")
    if kind != "multiArrayType":
        return {"type": kind}
    array = feature.type.multiArrayType
    dtype = FeatureTypes_pb2.ArrayFeatureType.ArrayDataType.Name(array.dataType).lower()
    return {"shape": [int(d) for d in array.shape], "dtype": {"double": "float64"}.get(dtype, dtype)}


def _operations(block: Any):
    for op in block.operations:
        yield op
        for inner in op.blocks:
            yield from _operations(inner)


def _weight_stats(program: Any) -> dict:
    stats: dict[str, dict] = {}

    def add(kind: str, elements: int, nbytes: float) -> None:
        entry = stats.setdefault(kind, {"tensors": 0, "elements": 0, "bytes": 0})
        entry["tensors"] += 1
        entry["elements"] += int(elements)
        entry["bytes"] += math.ceil(nbytes)

    for function in program.functions.values():
        for op in _operations(function):
            if op.op_type.startswith("constexpr_"):
                arrays = [v for v in op.inputs.values() if isinstance(v.val, np.ndarray)]
                add(op.op_type, math.prod(op.outputs[0].shape), sum(_stored_bytes(v) for v in arrays))
            elif op.op_type == "const" and _is_dense_weight(op):
                value = op.outputs[0].val
                add(str(value.dtype), value.size, value.nbytes)
    for kind, entry in stats.items():
        if kind.startswith("constexpr_") and entry["elements"]:
            entry["bits_per_weight"] = round(8 * entry["bytes"] / entry["elements"], 3)
    return stats


def _is_dense_weight(op: Any) -> bool:
    value = op.outputs[0].val
    if not isinstance(value, np.ndarray) or value.dtype.kind != "f" or value.ndim == 0:
        return False
    # a palettized weight's LUT or a quantized weight's scale is part of its constexpr op, not a weight of its own
    return not all(child.op_type.startswith("constexpr_") for child in op.outputs[0].child_ops)


def _stored_bytes(var: Any) -> float:
    """Bytes at the MIL type's bit width (sub-byte types such as uint4 are held unpacked in numpy)."""
    bits = getattr(var.dtype, "get_bitwidth", None)
    return var.val.size * bits() / 8 if callable(bits) else var.val.nbytes


def _tree_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
