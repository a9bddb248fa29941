"""ONNX graphs on disk, at any size: a protobuf file holds at most 2 GiB, so graphs whose weights pass
`EXTERNAL_DATA_ABOVE` keep them in one side file, `<graph>.onnx.data`, and every check reads them by path
(never the whole model in memory). Small graphs stay one self-contained file.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

EXTERNAL_DATA_ABOVE = 3 << 29  # 1.5 GiB of weights; protobuf's hard limit is 2 GiB, the graph's nodes need room too
DATA_SUFFIX = ".data"


def need_onnx() -> Any:
    try:
        import onnx  # export extra
    except ImportError as e:
        raise ImportError("ONNX export needs `pip install 'fewstep[export]'` (onnx, onnxscript, onnxruntime)") from e
    return onnx


def data_name(path: Path) -> str:
    """The side file's name for a graph: `denoiser.onnx-fp32.onnx` -> `denoiser.onnx-fp32.onnx.data`."""
    return path.name + DATA_SUFFIX


def load_graph(path: Path) -> Any:
    """The graph's nodes and initializer descriptions, without reading external weights."""
    return need_onnx().load(str(path), load_external_data=False)


def external_files(path: Path, model: Any | None = None) -> list[str]:
    """Relative locations of a graph's external weight files, in first-use order (empty for one-file graphs)."""
    from onnx.external_data_helper import uses_external_data  # export extra

    model = load_graph(path) if model is None else model
    seen: dict[str, None] = {}
    for tensor in model.graph.initializer:
        if uses_external_data(tensor):
            for entry in tensor.external_data:
                if entry.key == "location":
                    seen.setdefault(entry.value)
    return list(seen)


def graph_files(path: Path) -> list[Path]:
    """The graph file and its external weight files: what a bundle must hash, copy and delete together."""
    return [path, *(path.parent / name for name in external_files(path))]


def save(model: Any, path: Path, external: bool) -> Path:
    """Write `model` to `path`; with `external`, every weight goes to `<path>.data` (replaced if present)."""
    onnx = need_onnx()
    if external:
        (path.parent / data_name(path)).unlink(missing_ok=True)  # onnx appends to an existing data file
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data_name(path), size_threshold=1024)  # fmt: skip
    else:
        onnx.save_model(model, str(path))
    return path


def weight_bytes(model: Any) -> int:
    """Bytes of the initializers (inline or external) of a graph loaded with or without its data."""
    from onnx.external_data_helper import uses_external_data  # export extra

    total = 0
    for t in model.graph.initializer:
        if uses_external_data(t):
            total += int(next((e.value for e in t.external_data if e.key == "length"), 0))
        else:
            total += len(t.raw_data) if t.raw_data else _elements(t) * 4
    return total


def _elements(tensor: Any) -> int:
    n = 1
    for d in tensor.dims:
        n *= d
    return n


def relocate(src: Path, dst: Path, copy: bool = False) -> list[Path]:
    """Move (or, with `copy`, copy) a graph and its weight file to `dst` and `dst.data`, rewriting
    the location the graph records; -> the new files, graph first."""
    data = external_files(src)
    if len(data) > 1:
        raise ValueError(f"{src} keeps its weights in {len(data)} files; fewstep writes one (`{data_name(src)}`)")
    # a copy, not a hard link: onnx refuses weight files with several links (a known hard-link attack)
    put = shutil.copyfile if copy else os.replace
    if not data:
        put(src, dst)
        return [dst]
    new_data = dst.parent / data_name(dst)
    put(src.parent / data[0], new_data)
    model = load_graph(src)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = new_data.name
    need_onnx().save_model(model, str(dst))  # the graph only: its weights are already in place
    if not copy:
        src.unlink()
    return [dst, new_data]


def remove(path: Path) -> None:
    """Delete a graph and its weight file: fewstep only writes the side file under `data_name` (see `save` and
    `relocate`), so a half-written graph need not be readable to be removed."""
    (path.parent / data_name(path)).unlink(missing_ok=True)
    path.unlink(missing_ok=True)
