"""Built-in datasets. Each has `len()`, `item(i) -> (uint8 HxWx3, caption, label)` and `caption(i)`."""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from fewstep.models.datasets.digits import DigitsDataset
from fewstep.models.datasets.imagefolder import ImageFolderDataset, ImageFolderError
from fewstep.models.datasets.shapes import ShapesDataset, ShapesLabel


class CaptionedImages(Protocol):
    name: str
    channels: int
    image_size: int

    def __len__(self) -> int: ...
    def caption(self, i: int) -> str: ...
    def item(self, i: int) -> tuple[np.ndarray, str, Any]: ...
    def fingerprint(self) -> str: ...


DATASETS = ("shapes", "digits", "imagefolder")


def make_dataset(
    name: str, image_size: int = 32, seed: int = 0, size: int = 50_000, path: str | None = None
) -> CaptionedImages:
    """Build a dataset by name: `shapes` (size items), `digits`, or `imagefolder` (needs `path`)."""
    if name == "shapes":
        return ShapesDataset(n=size, seed=seed, image_size=image_size)
    if name == "digits":  # the test split is kept for evaluation (fewstep eval --dataset digits)
        return DigitsDataset(seed=0, image_size=image_size, split="train")
    if name == "imagefolder":
        if not path:
            raise ValueError("dataset 'imagefolder' needs a folder: pass --data-path DIR (with metadata.jsonl)")
        return ImageFolderDataset(path, image_size=image_size)
    raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")


def to_model_range(images: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W, C) -> float32 (N, C, H, W) in [-1, 1], the range every model sees."""
    return images.astype(np.float32).transpose(0, 3, 1, 2) / 127.5 - 1.0


__all__ = [
    "DATASETS",
    "CaptionedImages",
    "DigitsDataset",
    "ImageFolderDataset",
    "ImageFolderError",
    "ShapesDataset",
    "ShapesLabel",
    "make_dataset",
    "to_model_range",
]
