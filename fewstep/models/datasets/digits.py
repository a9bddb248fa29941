"""`digits`: scikit-learn's 1,797 handwritten 8x8 digits, upsampled, with captions (works offline)."""

from __future__ import annotations

import numpy as np
from PIL import Image

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
TEMPLATES = ("a handwritten digit {d}", "the number {w}, handwritten", "a drawing of the digit {d}", "{w}")


class DigitsDataset:
    """`item(i)` -> (uint8 image HxWx3, caption, digit). White strokes on black, grey replicated to RGB."""

    name = "digits"
    channels = 3

    def __init__(self, seed: int = 0, image_size: int = 32, split: str = "all"):
        from sklearn.datasets import load_digits  # lazy: only the training side needs scikit-learn

        if split not in ("all", "train", "test"):
            raise ValueError(f"digits: split must be 'all', 'train' or 'test', got {split!r}")
        data = load_digits()
        images, targets = data.images, data.target
        order = np.random.default_rng(seed).permutation(len(targets))
        cut = int(0.8 * len(order))
        order = {"all": order, "train": order[:cut], "test": order[cut:]}[split]
        self.images = images[order]
        self.targets = targets[order].astype(int)
        self.seed, self.image_size, self.split = seed, image_size, split

    def __len__(self) -> int:
        return len(self.targets)

    def fingerprint(self) -> str:
        return f"digits/1 split={self.split}"

    def label(self, i: int) -> int:
        return int(self.targets[i])

    def caption(self, i: int) -> str:
        d = self.label(i)
        t = TEMPLATES[np.random.default_rng([self.seed, i]).integers(len(TEMPLATES))]
        return t.format(d=d, w=NUMBER_WORDS[d])

    def item(self, i: int) -> tuple[np.ndarray, str, int]:
        grey = (self.images[i] / 16.0 * 255.0).astype(np.uint8)
        img = Image.fromarray(grey, mode="L").resize((self.image_size, self.image_size), Image.Resampling.BICUBIC)
        rgb = np.repeat(np.asarray(img)[:, :, None], 3, axis=2)
        return rgb, self.caption(i), self.label(i)
