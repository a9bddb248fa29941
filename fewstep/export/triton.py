"""A model repository for NVIDIA Triton Inference Server: `repo/<model>/config.pbtxt` + `repo/<model>/1/model.*`.

`config_pbtxt` writes Triton's ModelConfig in protobuf text format (fields as in triton-inference-server/common
protobuf/model_config.proto; semantics in the server's docs/user_guide/model_configuration.md):

- with `max_batch_size > 0` Triton owns the leading batch axis, so each tensor's `dims` leaves it out; a tensor that
  is only a batch (t of shape [B]) must still have non-empty dims, so it becomes `dims: [ 1 ]` with
  `reshape: { shape: [ ] }` (Triton's documented pattern for [batch-size] tensors);
- with `max_batch_size: 0` the full shape is given, the batch as -1, and Triton does not batch;
- `dynamic_batching` groups requests up to the preferred sizes, waiting at most `max_queue_delay_microseconds`.
"""

from __future__ import annotations

import filecmp
import os
import re
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from fewstep.core.manifest import TensorSpec
from fewstep.export import onnx_files

# platform -> the file name Triton looks for in a version directory (default_model_filename)
PLATFORMS = {"onnxruntime_onnx": "model.onnx", "tensorrt_plan": "model.plan"}
KINDS = ("KIND_AUTO", "KIND_GPU", "KIND_CPU", "KIND_MODEL")
# numpy dtype name -> Triton DataType (the datatypes table of model_configuration.md)
TRITON_DTYPES = {
    "bool": "TYPE_BOOL",
    "uint8": "TYPE_UINT8",
    "uint16": "TYPE_UINT16",
    "uint32": "TYPE_UINT32",
    "uint64": "TYPE_UINT64",
    "int8": "TYPE_INT8",
    "int16": "TYPE_INT16",
    "int32": "TYPE_INT32",
    "int64": "TYPE_INT64",
    "float16": "TYPE_FP16",
    "float32": "TYPE_FP32",
    "float64": "TYPE_FP64",
    "bfloat16": "TYPE_BF16",  # ml_dtypes' name; numpy itself has none
    "object": "TYPE_STRING",  # Triton's BYTES tensors are numpy object arrays
}
_NAME = re.compile(r"^[A-Za-z0-9_.:\-]+$")  # safe unquoted in text format and as a directory name


def triton_dtype(dtype: str) -> str:
    """Triton's TYPE_* name for a numpy dtype name ("float32" -> "TYPE_FP32")."""
    key = dtype if dtype in TRITON_DTYPES else None
    if key is None:
        try:
            key = np.dtype(dtype).name
        except TypeError:
            key = str(dtype)
    if key not in TRITON_DTYPES:
        raise ValueError(f"no Triton datatype for {dtype!r}; supported: {', '.join(TRITON_DTYPES)}")
    return TRITON_DTYPES[key]


def _check_name(what: str, name: str) -> str:
    if not _NAME.match(name):
        raise ValueError(f"{what} {name!r} must use only letters, digits, '_', '.', ':' or '-'")
    return name


def _tensor_block(name: str, spec: TensorSpec, batched: bool) -> list[str]:
    """One `input`/`output` entry: dims without the batch axis when Triton batches."""
    shape = list(spec.shape)
    if not shape or shape[0] != "B" or "B" in shape[1:]:
        raise ValueError(f"tensor {name!r} has shape {shape}: the batch axis 'B' must come first and only once")
    rest = [int(d) for d in shape[1:]]
    if any(d < 1 for d in rest):
        raise ValueError(f"tensor {name!r} has shape {shape}: only the batch axis may be dynamic")
    dims = rest if batched else [-1, *rest]
    lines = [
        "  {",
        f'    name: "{_check_name("tensor name", name)}"',
        f"    data_type: {triton_dtype(spec.dtype)}",
        f"    dims: [ {', '.join(str(d) for d in dims or [1])} ]",
    ]
    if not dims:
        lines.append("    reshape: { shape: [ ] }")  # [B] in the model, [B, 1] in requests
    lines.append("  }")
    return lines


def _tensor_list(field: str, tensors: Mapping[str, TensorSpec], batched: bool) -> list[str]:
    if not tensors:
        raise ValueError(f"a Triton model needs at least one {field}")
    blocks = [_tensor_block(name, spec, batched) for name, spec in tensors.items()]
    lines = [f"{field} ["]
    for i, block in enumerate(blocks):
        lines += [*block[:-1], block[-1] + ("," if i < len(blocks) - 1 else "")]
    return [*lines, "]"]


def _batching(max_batch_size: int, preferred: Sequence[int], max_queue_delay_us: int) -> list[str]:
    if max_batch_size == 0:
        if preferred:
            raise ValueError("preferred_batch_sizes need batching: set max_batch_size >= 1")
        return []
    sizes = sorted(set(int(p) for p in preferred))
    if any(not 1 <= p <= max_batch_size for p in sizes):
        raise ValueError(f"preferred_batch_sizes {sizes} must lie in 1..max_batch_size ({max_batch_size})")
    if max_queue_delay_us < 0:
        raise ValueError(f"max_queue_delay_us must be >= 0; got {max_queue_delay_us}")
    lines = ["dynamic_batching {"]
    if sizes:
        lines.append(f"  preferred_batch_size: [ {', '.join(map(str, sizes))} ]")
    return [*lines, f"  max_queue_delay_microseconds: {int(max_queue_delay_us)}", "}"]


def config_pbtxt(
    model_name: str,
    platform: str,
    inputs: Mapping[str, TensorSpec],
    outputs: Mapping[str, TensorSpec],
    max_batch_size: int,
    preferred_batch_sizes: Sequence[int] = (),
    max_queue_delay_us: int = 0,
    instance_count: int = 1,
    kind: str = "KIND_AUTO",
) -> str:
    """The `config.pbtxt` text for one model. `inputs`/`outputs`: {name: TensorSpec with "B" first}."""
    if platform not in PLATFORMS:
        raise ValueError(f"platform must be one of {', '.join(PLATFORMS)}; got {platform!r}")
    if kind not in KINDS:
        raise ValueError(f"instance kind must be one of {', '.join(KINDS)}; got {kind!r}")
    if platform == "tensorrt_plan" and kind == "KIND_CPU":
        raise ValueError("a TensorRT plan runs only on a GPU: use kind KIND_GPU or KIND_AUTO")
    if max_batch_size < 0 or instance_count < 1:
        raise ValueError(f"need max_batch_size >= 0 and instance_count >= 1; got {max_batch_size}, {instance_count}")
    batched = max_batch_size > 0
    lines = [
        f'name: "{_check_name("model name", model_name)}"',
        f'platform: "{platform}"',
        f"max_batch_size: {int(max_batch_size)}",
        *_tensor_list("input", inputs, batched),
        *_tensor_list("output", outputs, batched),
        *_batching(int(max_batch_size), preferred_batch_sizes, max_queue_delay_us),
        "instance_group [",
        "  {",
        f"    count: {int(instance_count)}",
        f"    kind: {kind}",
        "  }",
        "]",
    ]
    return "\n".join(lines) + "\n"


def _onnx_external_files(path: Path) -> list[str]:
    """Relative locations of an ONNX graph's external weight files (they must sit beside model.onnx)."""
    try:
        model = onnx_files.load_graph(path)
    except Exception as e:  # protobuf's DecodeError and friends: say which file
        raise ValueError(f"{path} is not an ONNX model ({e}); platform onnxruntime_onnx needs one") from e
    return sorted(onnx_files.external_files(path, model))


def _copy_if_changed(src: Path, dst: Path) -> None:
    """Copy src to dst unless an identical file is already there (atomic: a reader never sees half a file)."""
    if dst.is_file() and filecmp.cmp(src, dst, shallow=False):
        return
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def write_triton_repository(
    repo_dir: str | Path,
    model_name: str,
    engine_path: str | Path,
    platform: str,
    inputs: Mapping[str, TensorSpec],
    outputs: Mapping[str, TensorSpec],
    max_batch_size: int,
    preferred_batch_sizes: Sequence[int],
    max_queue_delay_us: int,
    instance_count: int = 1,
    kind: str = "KIND_AUTO",
) -> str:
    """Write `repo_dir/model_name/config.pbtxt` and the engine as `repo_dir/model_name/1/model.onnx|model.plan`
    (an ONNX graph's external weight files go beside it); -> the config text."""
    text = config_pbtxt(
        model_name, platform, inputs, outputs, max_batch_size, preferred_batch_sizes, max_queue_delay_us,
        instance_count, kind,
    )  # fmt: skip
    src = Path(engine_path)
    if not src.is_file():
        raise FileNotFoundError(f"engine file for Triton not found: {src}")
    version_dir = Path(repo_dir) / model_name / "1"
    version_dir.mkdir(parents=True, exist_ok=True)
    _copy_if_changed(src, version_dir / PLATFORMS[platform])
    if platform == "onnxruntime_onnx":
        for location in _onnx_external_files(src):
            (version_dir / location).parent.mkdir(parents=True, exist_ok=True)
            _copy_if_changed(src.parent / location, version_dir / location)
    (version_dir.parent / "config.pbtxt").write_text(text, encoding="utf-8")
    return text
