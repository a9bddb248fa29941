"""Training batches from a captioned dataset: images rendered and captions encoded once, then indexed.

The batch at step k depends only on (seed, k), so a resumed run sees exactly the batches an uninterrupted
run would have seen. The rendered images and text embeddings are cached in the run directory.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..models.checkpoint import CheckpointError, load_tensors, save_tensors
from ..models.contract import Cond
from ..models.datasets import CaptionedImages, to_model_range
from ..models.text_encoders import TextEncoder


class EncodedDataset:
    """All images (uint8) and the text embeddings of all distinct captions, in memory."""

    def __init__(
        self, images: np.ndarray, caption_index: np.ndarray, text: torch.Tensor, mask: torch.Tensor, captions: list[str]
    ):
        self.images, self.caption_index, self.text, self.mask, self.captions = (
            images,
            caption_index,
            text,
            mask,
            captions,
        )

    def __len__(self) -> int:
        return len(self.images)

    @classmethod
    def build(cls, dataset: CaptionedImages, encoder: TextEncoder, cache: Path | None = None) -> EncodedDataset:
        key = {
            "dataset": dataset.name,
            "n": len(dataset),
            "seed": getattr(dataset, "seed", None),
            "image_size": dataset.image_size,
            "encoder": encoder.spec,
            "fingerprint": dataset.fingerprint(),  # changes when a folder's files or a generator's version do
        }
        if cache is not None and cache.is_file():
            try:
                tensors, meta = load_tensors(cache)
                if meta.get("key") == key:
                    return cls(
                        tensors["images"].numpy(),
                        tensors["caption_index"].numpy(),
                        tensors["text"],
                        tensors["mask"],
                        meta["captions"],
                    )
            except CheckpointError:
                pass  # a stale or broken cache is rebuilt, never trusted
        images, captions = [], []
        for i in tqdm(range(len(dataset)), desc="render images", mininterval=2, leave=False):
            img, cap, _ = dataset.item(i)
            images.append(img)
            captions.append(cap)
        distinct = list(dict.fromkeys(captions))
        where = {c: j for j, c in enumerate(distinct)}
        text, mask = [], []
        for i in tqdm(range(0, len(distinct), 256), desc="encode captions", mininterval=2, leave=False):
            c = encoder.encode(distinct[i : i + 256])
            text.append(c.text.half())
            mask.append(c.text_mask.to(torch.uint8))
        enc = cls(
            np.stack(images),
            np.array([where[c] for c in captions], dtype=np.int64),
            torch.cat(text),
            torch.cat(mask),
            distinct,
        )
        if cache is not None:
            save_tensors(
                cache,
                {
                    "images": torch.from_numpy(enc.images),
                    "caption_index": torch.from_numpy(enc.caption_index),
                    "text": enc.text,
                    "mask": enc.mask,
                },
                {"key": key, "captions": distinct},
            )
        return enc

    def batch(self, step: int, batch_size: int, seed: int) -> tuple[torch.Tensor, Cond]:
        """(x0 (B, C, H, W) in [-1, 1], Cond) for training step `step`; deterministic in (seed, step)."""
        idx = np.random.default_rng([seed, step, 7]).integers(0, len(self), size=batch_size)
        x0 = torch.from_numpy(to_model_range(self.images[idx]))
        ci = torch.from_numpy(self.caption_index[idx])
        return x0, Cond(self.text[ci].float(), self.mask[ci].float())
