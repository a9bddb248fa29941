"""`imagefolder`: any folder of images with `metadata.jsonl` (Hugging Face ImageFolder convention).

Each line of `metadata.jsonl` is `{"file_name": "a.png", "text": "a caption"}`. The whole folder is
validated when it is opened, so that a bad file is named before hours of training, not during them.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

MAX_PIXELS = 64_000_000  # refuse decompression bombs before decoding them


class ImageFolderError(ValueError):
    """A folder that cannot be used as a dataset; the message names the file and what to fix."""


def _center_square(img: Image.Image, size: int) -> Image.Image:
    w, h = img.size
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    return img.crop((left, top, left + s, top + s)).resize((size, size), Image.Resampling.BICUBIC)


class ImageFolderDataset:
    """`item(i)` -> (uint8 image HxWx3, caption, None); images centre-cropped and resized to a square."""

    name = "imagefolder"
    channels = 3

    def __init__(self, root: str | Path, image_size: int = 32):
        self.root = Path(root)
        self.image_size = image_size
        meta = self.root / "metadata.jsonl"
        if not self.root.is_dir():
            raise ImageFolderError(f"imagefolder: {self.root} is not a directory")
        if not meta.is_file():
            raise ImageFolderError(
                f"imagefolder: {meta} is missing; write one JSON object per line: "
                '{"file_name": "img.png", "text": "a caption"}'
            )
        self.files: list[Path] = []
        self.captions: list[str] = []
        root = self.root.resolve()
        for lineno, line in enumerate(meta.read_bytes().splitlines(), start=1):
            if not line.strip():
                continue
            where = f"{meta}:{lineno}"
            try:
                rec = json.loads(line.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise ImageFolderError(f"imagefolder: {where} is not valid UTF-8 JSON: {e}") from None
            if not isinstance(rec, dict) or not isinstance(rec.get("file_name"), str):
                raise ImageFolderError(f"imagefolder: {where} needs a string field 'file_name'")
            text = rec.get("text")
            if not isinstance(text, str) or not text.strip():
                raise ImageFolderError(f"imagefolder: {where} ({rec['file_name']}) has an empty or missing 'text'")
            path = (self.root / rec["file_name"]).resolve()
            if root not in path.parents:
                raise ImageFolderError(f"imagefolder: {where} file_name {rec['file_name']!r} escapes {self.root}")
            if not path.is_file():
                raise ImageFolderError(f"imagefolder: {where} names {path}, which does not exist")
            self._check_image(path, where)
            self.files.append(path)
            self.captions.append(text.strip())
        if not self.files:
            raise ImageFolderError(f"imagefolder: {meta} lists no images")

    @staticmethod
    def _check_image(path: Path, where: str) -> None:
        try:
            with Image.open(path) as img:
                if img.size[0] * img.size[1] > MAX_PIXELS:
                    raise ImageFolderError(
                        f"imagefolder: {path} ({where}) is too large: {img.size}, over {MAX_PIXELS} pixels"
                    )
                img.verify()
        except Image.DecompressionBombError as e:
            raise ImageFolderError(f"imagefolder: {path} ({where}) is too large: {e}") from None
        except (UnidentifiedImageError, OSError, SyntaxError) as e:
            raise ImageFolderError(f"imagefolder: {path} ({where}) is not a readable image: {e}") from None

    def __len__(self) -> int:
        return len(self.files)

    def fingerprint(self) -> str:
        """sha256 over metadata.jsonl and every image's name, size and mtime."""

        h = hashlib.sha256((self.root / "metadata.jsonl").read_bytes())
        for f in self.files:
            st = f.stat()
            h.update(f"{f}:{st.st_size}:{st.st_mtime_ns}".encode())
        return h.hexdigest()

    def label(self, i: int) -> None:
        return None

    def caption(self, i: int) -> str:
        return self.captions[i]

    def item(self, i: int) -> tuple[np.ndarray, str, None]:
        try:
            with Image.open(self.files[i]) as img:
                rgb = _center_square(img.convert("RGB"), self.image_size)
        except (OSError, Image.DecompressionBombError) as e:
            raise ImageFolderError(f"imagefolder: {self.files[i]} could not be decoded: {e}") from None
        return np.asarray(rgb, dtype=np.uint8), self.captions[i], None
