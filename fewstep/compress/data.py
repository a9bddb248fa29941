"""Training batches from a captioned dataset: images rendered and captions encoded once, then indexed.

The batch at step k depends only on (seed, k), so a resumed run sees exactly the batches an uninterrupted
run would have seen. The rendered images and text embeddings are cached in the run directory. For latent
teachers the images are encoded once by the pipeline's VAE and batches hold latents.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from fewstep.core.imaging import decode_chunks
from fewstep.models.checkpoint import CheckpointError, load_tensors, save_tensors
from fewstep.models.contract import Cond
from fewstep.models.datasets import CaptionedImages, to_model_range
from fewstep.models.text_encoders import TextEncoder

OPTIONAL = ("pooled", "extra_ids", "latents")  # pooled text / SDXL ids per caption; VAE latents per image


def encode_latents(codec, images: np.ndarray, desc: str = "encode images (VAE)") -> torch.Tensor:
    """uint8 (N, H, W, C) images -> the denoiser's latents (N, c, h, w), through the VAE encoder a few images per
    call (`decode_chunks`): its activations grow with the pixels, and 32 images of 512x512 at once need many GB."""
    parts = decode_chunks(len(images), images.shape[1] * images.shape[2])
    chunks = [codec.encode(torch.from_numpy(to_model_range(images[c])))
              for c in tqdm(parts, desc=desc, mininterval=2, leave=False)]  # fmt: skip
    return torch.cat(chunks)


class EncodedDataset:
    """All images (uint8; latents too for latent teachers) and the embeddings of all distinct captions."""

    def __init__(self, images: np.ndarray, caption_index: np.ndarray, text: torch.Tensor, mask: torch.Tensor,
                 captions: list[str], pooled: torch.Tensor | None = None, extra_ids: torch.Tensor | None = None,
                 latents: torch.Tensor | None = None):  # fmt: skip
        self.images, self.caption_index, self.text, self.mask, self.captions = (
            images,
            caption_index,
            text,
            mask,
            captions,
        )
        self.pooled, self.extra_ids, self.latents = pooled, extra_ids, latents

    def __len__(self) -> int:
        return len(self.images)

    @classmethod
    def build(cls, dataset: CaptionedImages, encoder: TextEncoder, cache: Path | None = None,
              codec=None) -> EncodedDataset:  # fmt: skip
        key = {
            "dataset": dataset.name,
            "n": len(dataset),
            "seed": getattr(dataset, "seed", None),
            "image_size": dataset.image_size,
            "encoder": encoder.spec,
            "fingerprint": dataset.fingerprint(),  # changes when a folder's files or a generator's version do
            "codec": None if codec is None else [codec.fingerprint, codec.scaling_factor, codec.shift_factor],
        }  # fmt: skip
        if cache is not None and cache.is_file():
            try:
                tensors, meta = load_tensors(cache)
                if meta.get("key") == key:
                    return cls(tensors["images"].numpy(), tensors["caption_index"].numpy(), tensors["text"],
                               tensors["mask"], meta["captions"], *(tensors.get(k) for k in OPTIONAL))  # fmt: skip
            except CheckpointError:
                pass  # a stale or broken cache is rebuilt, never trusted
        images, captions = [], []
        for i in tqdm(range(len(dataset)), desc="render images", mininterval=2, leave=False):
            img, cap, _ = dataset.item(i)
            images.append(img)
            captions.append(cap)
        distinct = list(dict.fromkeys(captions))
        where = {c: j for j, c in enumerate(distinct)}
        conds = []
        for i in tqdm(range(0, len(distinct), 256), desc="encode captions", mininterval=2, leave=False):
            conds.append(encoder.encode(distinct[i : i + 256]))
        c = Cond.cat(conds)
        images = np.stack(images)
        latents = None
        if codec is not None:
            latents = encode_latents(codec, images).half()
        enc = cls(images, np.array([where[c] for c in captions], dtype=np.int64), c.text.half(),
                  c.text_mask.to(torch.uint8), distinct, None if c.pooled is None else c.pooled.half(),
                  c.extra_ids, latents)  # fmt: skip
        if cache is not None:
            tensors = {"images": torch.from_numpy(enc.images), "caption_index": torch.from_numpy(enc.caption_index),
                       "text": enc.text, "mask": enc.mask}  # fmt: skip
            tensors.update({k: getattr(enc, k) for k in OPTIONAL if getattr(enc, k) is not None})
            save_tensors(cache, tensors, {"key": key, "captions": distinct})
        return enc

    def batch(self, step: int, batch_size: int, seed: int) -> tuple[torch.Tensor, Cond]:
        """(x0 (B, C, H, W): images in [-1, 1] or latents, Cond) for training step `step`; deterministic in
        (seed, step)."""
        idx = np.random.default_rng([seed, step, 7]).integers(0, len(self), size=batch_size)
        if self.latents is not None:
            x0 = self.latents[torch.from_numpy(idx)].float()
        else:
            x0 = torch.from_numpy(to_model_range(self.images[idx]))
        ci = torch.from_numpy(self.caption_index[idx])
        return x0, Cond(self.text[ci].float(), self.mask[ci].float(),
                        None if self.pooled is None else self.pooled[ci].float(), None,
                        None if self.extra_ids is None else self.extra_ids[ci].float())  # fmt: skip
