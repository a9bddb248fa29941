"""Image grids, PNG helpers and image PSNR (numpy + pillow only, so the runtime can use them too)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from fewstep.core.fsio import atomic_write

# output pixels an image decoder is given at once: two 512x512 images. At 512x512 the SD VAE decoder's
# activations are ~1 GB per image, so a batch of 4-24 decoded together could fill a 24 GB machine.
DECODE_PIXELS = 1 << 19


def decode_chunks(n: int, pixels_per_image: int) -> list[slice]:
    """Slices of a batch of `n` samples that keep each image-decoder call under DECODE_PIXELS output pixels."""
    step = max(1, DECODE_PIXELS // max(1, pixels_per_image))
    return [slice(i, min(i + step, n)) for i in range(0, n, step)]


def to_uint8(x: np.ndarray) -> np.ndarray:
    """float (N, C, H, W) in [-1, 1] -> uint8 (N, H, W, C)."""
    out: np.ndarray = np.clip((x.transpose(0, 2, 3, 1) + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8)
    return out


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two image batches in [-1, 1] (clipped, mapped to [0, 1] with peak 1); inf if equal."""
    x = (np.clip(a, -1, 1) + 1) / 2
    y = (np.clip(b, -1, 1) + 1) / 2
    mse = float(np.mean((x.astype(np.float64) - y) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(1.0 / mse)


def make_grid(images: np.ndarray, nrow: int | None = None, scale: int = 4, pad: int = 2) -> Image.Image:
    """uint8 (N, H, W, C) -> one PIL image, `nrow` images per row, each upscaled `scale`x (nearest)."""
    if images.ndim != 4 or images.dtype != np.uint8:
        raise ValueError(f"make_grid expects uint8 (N, H, W, C); got {images.dtype} {images.shape}")
    n, h, w, _ = images.shape
    nrow = nrow or int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / nrow))
    hs, ws = h * scale, w * scale
    grid = Image.new("RGB", (nrow * (ws + pad) + pad, rows * (hs + pad) + pad), (255, 255, 255))
    for i, img in enumerate(images):
        tile = Image.fromarray(img[..., :3] if img.shape[-1] >= 3 else img[..., 0]).convert("RGB")
        tile = tile.resize((ws, hs), Image.Resampling.NEAREST)
        grid.paste(tile, (pad + (i % nrow) * (ws + pad), pad + (i // nrow) * (hs + pad)))
    return grid


def captioned_grid(images: np.ndarray, captions: list[str], nrow: int, scale: int = 4) -> Image.Image:
    """A grid with each row's caption written to its left (one caption per row of seeds)."""
    grid = make_grid(images, nrow=nrow, scale=scale)
    text_w = int(ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(max(captions, key=len, default=""))) + 12
    out = Image.new("RGB", (grid.width + text_w, grid.height), (255, 255, 255))
    out.paste(grid, (text_w, 0))
    draw = ImageDraw.Draw(out)
    tile = images.shape[1] * scale + 2
    for r, caption in enumerate(captions):
        draw.text((4, 2 + r * tile + tile // 2 - 6), caption, fill=(0, 0, 0))
    return out


def save_png(image: Image.Image, path: str | Path) -> Path:
    """Atomic PNG write (a reader never sees half an image)."""
    atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))
    return Path(path)
