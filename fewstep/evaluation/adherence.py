"""Exact prompt-adherence checks from judge predictions."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fewstep.models.datasets.shapes import BACKGROUND_NAMES, COLOUR_NAMES, GRID, SHAPES, SIZES, ShapeObject, ShapesLabel


@dataclass(frozen=True)
class Detected:
    background: str
    objects: tuple[ShapeObject, ...]  # one per occupied cell


def decode_shapes(logits: dict[str, torch.Tensor]) -> list[Detected]:
    shape = logits["shape"].argmax(-1)  # (B, 9): 0 = empty cell
    colour = logits["colour"].argmax(-1)
    size = logits["size"].argmax(-1)
    bg = logits["background"].argmax(-1)
    out = []
    for b in range(shape.shape[0]):
        objs = tuple(
            ShapeObject(SHAPES[int(shape[b, c]) - 1], COLOUR_NAMES[int(colour[b, c])], SIZES[int(size[b, c])], c)
            for c in range(GRID * GRID)
            if int(shape[b, c]) > 0
        )
        out.append(Detected(BACKGROUND_NAMES[int(bg[b])], objs))
    return out


def _matches(obj: ShapeObject, want: ShapeObject, with_size: bool) -> bool:
    return obj.shape == want.shape and obj.colour == want.colour and (not with_size or obj.size == want.size)


def _relation_holds(a: ShapeObject, b: ShapeObject, relation: str) -> bool:
    return {
        "left of": a.col < b.col,
        "right of": a.col > b.col,
        "above": a.row < b.row,
        "below": a.row > b.row,
    }[relation]


def shapes_adherent(det: Detected, label: ShapesLabel) -> bool:
    """True iff the image holds exactly the named shapes with the named colours (and size/background where the
    caption names them), at the named cell (one shape) or in the named relation (two shapes)."""
    with_size = "size" in label.named
    if "background" in label.named and det.background != label.background:
        return False
    if len(det.objects) != len(label.objects):
        return False
    if len(label.objects) == 1:
        (obj,), (want,) = det.objects, label.objects
        return obj.cell == want.cell and _matches(obj, want, with_size)
    a_want, b_want = label.objects
    for a, b in (det.objects, det.objects[::-1]):
        if _matches(a, a_want, with_size) and _matches(b, b_want, with_size) and _relation_holds(a, b, label.relation):
            return True
    return False


def digits_adherent(logits: dict[str, torch.Tensor], digits: list[int]) -> list[bool]:
    pred = logits["digit"].argmax(-1).tolist()
    return [p == d for p, d in zip(pred, digits, strict=True)]
