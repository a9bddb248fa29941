"""ExecuTorch exporter: the denoiser as a `.pte` program with XNNPACK-delegated kernels, fp32 or int8.

Precisions: "fp32"; "int8", which is PT2E static quantization with XNNPACK's quantizer: int8 per-channel weights,
int8 activations. It is calibrated on the student's own sampler inputs, the same ones the other int8 engines use.
Only convolutions and linear layers are quantized. The residual adds, concatenations and norms stay float, and so
do the layers the ONNX int8 engines keep in float (`conv_in`, `conv_out`, the time embedding).

Why it is done this way (executorch 1.5, torch 2.13):
- fixed batch: `to_edge` narrows a dynamic batch to the example's size (range [2, 2] for a UNet), so a `.pte` has
  one batch, as a CoreML package has: 2 for a CFG student (conditional and unconditional rows together), else 1.
  `options["executorch_batch"]` overrides it. The engine pads smaller calls to it.
- ops XNNPACK does not take run on ExecuTorch's portable CPU kernels. Group norm and the attention mask are
  examples. The artifact records how many nodes were delegated, and which ops were not. An op that the
  installed runtime has no kernel for is refused at export, named with the layer it comes from.
The `.pte` runs on ExecuTorch's C++ runtime (Android, iOS, embedded Linux) and here through its Python bindings.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fewstep.export.context import Artifact, ExportContext, fixed_batch
from fewstep.export.targets.onnx import SENSITIVE

PRECISIONS = ("fp32", "int8")
BATCH_OPTION = "executorch_batch"


class ExecuTorchExportError(RuntimeError):
    """A denoiser that ExecuTorch cannot lower or run, with the operator and the layer it comes from."""


def export(ctx: ExportContext, precision: str) -> Artifact:
    """Lower `ctx.denoiser` and write `ctx.out_dir / denoiser.{precision}.pte`."""
    if precision not in PRECISIONS:
        raise ValueError(f"ExecuTorch precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    batch = fixed_batch(ctx.options, BATCH_OPTION)
    calibration = calibration_batches(ctx.calibration_inputs(), batch) if precision == "int8" else None
    if precision == "int8" and not calibration:
        raise ValueError("int8 ExecuTorch export needs calibration inputs (the student's sampler rows); got none")
    buffer, info = lower(ctx.denoiser, ctx.denoiser.example_inputs(batch), calibration)
    path = Path(ctx.out_dir) / f"denoiser.{precision}.pte"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer)
    return Artifact(path, backend="executorch", precision=precision, info={"fixed_batch": batch, **info})


def lower(module: torch.nn.Module, args: tuple, calibration: list[tuple] | None = None) -> tuple[bytes, dict]:
    """Any module with fixed-shape `args` -> (the `.pte` program's bytes, what to record about it).
    `calibration`: input tuples shaped like `args`; given, the program is int8 (PT2E static, XNNPACK quantizer)."""
    version = _executorch_version()
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner  # edge extra
    from executorch.exir import to_edge_transform_and_lower  # edge extra

    info: dict[str, Any] = {"executorch": version, "delegate": "xnnpack"}
    with torch.no_grad():
        program = torch.export.export(module, args)
        if calibration is not None:
            program, quant = _quantized(program, args, calibration)
            info.update(quant)
        edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
    info.update(delegation(edge.exported_program().graph_module))
    executable = edge.to_executorch()
    check_kernels(executable.exported_program().graph_module)  # its ops are the out-variant kernels it will call
    buffer = executable.buffer
    info["pte_bytes"] = len(buffer)
    return buffer, info


def _executorch_version() -> str:
    try:
        from executorch.version import __version__  # edge extra
    except ImportError as e:
        raise ImportError(f"ExecuTorch export needs executorch ({e}): pip install 'fewstep[edge]'") from e
    return str(__version__)


def calibration_batches(calibration: list[dict[str, np.ndarray]], batch: int) -> list[tuple[torch.Tensor, ...]]:
    """The sampler's calibration rows regrouped into the program's fixed batch (a trailing partial batch is
    dropped; with fewer rows than one batch, the rows are repeated)."""
    if not calibration:
        return []
    names = list(calibration[0])
    rows = {n: np.concatenate([c[n] for c in calibration]) for n in names}
    total = len(rows[names[0]])
    if total < batch:
        rows = {n: np.concatenate([a] * -(-batch // total)) for n, a in rows.items()}
        total = len(rows[names[0]])
    return [tuple(torch.from_numpy(np.ascontiguousarray(rows[n][i : i + batch], dtype=np.float32)) for n in names)
            for i in range(0, total - batch + 1, batch)]  # fmt: skip


def _quantized(program: Any, args: tuple, calibration: list[tuple]) -> tuple[Any, dict]:
    """PT2E: annotate with XNNPACK's quantizer, observe the calibration batches, convert, export again."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (  # edge extra
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e  # edge extra

    config = get_symmetric_quantization_config(is_per_channel=True)
    quantizer = XNNPACKQuantizer()
    for op in (torch.ops.aten.conv2d.default, torch.ops.aten.linear.default):
        quantizer.set_operator_type(op, config)
    quantizer.set_filter_function(lambda node: not in_sensitive_layer(node))
    prepared = prepare_pt2e(program.module(), quantizer)
    for inputs in calibration:
        prepared(*inputs)
    converted = convert_pt2e(prepared)
    info = {"quantizer": "xnnpack-pt2e", "weights": "int8 per-channel symmetric", "activations": "int8 static",
            "quantized_ops": ["conv2d", "linear"], "float_layers": list(SENSITIVE),
            "calibration_batches": len(calibration)}  # fmt: skip
    return torch.export.export(converted, args), info


def in_sensitive_layer(node: Any) -> bool:
    """True for nodes of `conv_in`, `conv_out` or the time embedding (kept in float, as in the ONNX int8 engines)."""
    stack = node.meta.get("nn_module_stack") or {}
    return any(f.rstrip(".") in path.split(".") for path, _ in stack.values() for f in SENSITIVE)


def delegation(graph_module: Any) -> dict:
    """How much of the lowered graph XNNPACK runs: node counts and the ops left to portable kernels."""
    from executorch.devtools.backend_debug import get_delegation_info  # edge extra

    d = get_delegation_info(graph_module)
    left = {op: b.non_delegated for op, b in d.delegation_by_operator.items() if b.non_delegated}
    return {
        "delegated_nodes": d.num_delegated_nodes,
        "non_delegated_nodes": d.num_non_delegated_nodes,
        "delegated_subgraphs": d.num_delegated_subgraphs,
        "non_delegated_ops": dict(sorted(left.items())),
    }


def check_kernels(graph_module: Any, available: set[str] | None = None) -> None:
    """Refuse a program with an operator the ExecuTorch runtime here has no kernel for, naming the operator and
    the layers that use it (loading it would fail with only the operator's name)."""
    if available is None:
        from executorch.runtime import Runtime  # edge extra

        available = Runtime.get().operator_registry.operator_names
    missing: Counter[str] = Counter()
    layers: dict[str, str] = {}
    for node in graph_module.graph.nodes:
        if node.op != "call_function" or not hasattr(node.target, "_schema"):
            continue
        schema = node.target._schema
        name = f"{schema.name}.{schema.overload_name}" if schema.overload_name else schema.name
        if name not in available:
            missing[name] += 1
            layers.setdefault(name, _layer_of(node))
    if missing:
        found = "; ".join(f"{op} ({n}x, first in {layers[op]})" for op, n in missing.items())
        raise ExecuTorchExportError(f"ExecuTorch has no kernel for {found}: replace these layers or export to "
                                    "another target (the other targets of this export are unaffected)")  # fmt: skip


def _layer_of(node: Any) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    if stack:
        path, kind = list(stack.values())[-1]
        return f"layer {path or '(top)'} ({getattr(kind, '__name__', kind)})"
    return f"node {node.name}"
