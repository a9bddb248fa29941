"""Built-in data: determinism, labels that match captions, and clear errors for bad image folders."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from fewstep.core.imaging import to_uint8
from fewstep.models.datasets import DigitsDataset, ImageFolderError, make_dataset, to_model_range
from fewstep.models.datasets.shapes import CELL_PHRASES, RELATION_PHRASES, ShapesDataset, ShapesLabel


def test_shapes_is_deterministic_per_seed_and_index():
    a, b = ShapesDataset(n=50, seed=3), ShapesDataset(n=50, seed=3)
    for i in (0, 17, 49):
        ia, ca, la = a.item(i)
        ib, cb, lb = b.item(i)
        assert ca == cb == a.caption(i) and la == lb and np.array_equal(ia, ib)
    assert a.caption(0) != ShapesDataset(n=50, seed=4).caption(0) or not np.array_equal(
        a.item(0)[0], ShapesDataset(n=50, seed=4).item(0)[0]
    )


def test_shapes_captions_name_what_the_label_holds():
    ds = ShapesDataset(n=300, seed=0)
    two = 0
    for i in range(len(ds)):
        img, caption, label = ds.item(i)
        assert img.shape == (32, 32, 3) and img.dtype == np.uint8
        for o in label.objects:
            assert f"{o.colour} {o.shape}" in caption
            assert ("size" in label.named) == (f"{o.size} {o.colour} {o.shape}" in caption)
        assert ("background" in label.named) == (f"{label.background} background" in caption)
        if len(label.objects) == 2:
            two += 1
            a, b = label.objects
            assert RELATION_PHRASES[label.relation] in caption
            assert {
                "left of": a.col < b.col,
                "right of": a.col > b.col,
                "above": a.row < b.row,
                "below": a.row > b.row,
            }[label.relation]
            assert (a.shape, a.colour) != (b.shape, b.colour)
        else:
            assert CELL_PHRASES[label.objects[0].cell] in caption
        assert ShapesLabel.from_dict(label.to_dict()) == label
    assert 0.5 < two / len(ds) < 0.7  # two_shape_fraction = 0.6


def test_shapes_are_drawn_where_the_label_says():
    ds = ShapesDataset(n=40, seed=1)
    for i in range(len(ds)):
        img, _, label = ds.item(i)
        bg = np.median(img.reshape(-1, 3), axis=0)
        for o in label.objects:
            r0, c0 = int((o.row + 0.5) * 32 / 3), int((o.col + 0.5) * 32 / 3)
            patch = img[r0 - 2 : r0 + 3, c0 - 2 : c0 + 3].reshape(-1, 3).astype(float)
            assert np.abs(patch - bg).sum(1).max() > 60  # something other than background at the cell centre


def test_range_conversions_round_trip():
    img = ShapesDataset(n=2).item(0)[0][None]
    x = to_model_range(img)
    assert x.shape == (1, 3, 32, 32) and x.min() >= -1 and x.max() <= 1
    np.testing.assert_array_equal(to_uint8(x), img)


def test_digits_offline_with_captions():
    ds = make_dataset("digits")
    img, caption, digit = ds.item(0)
    assert len(ds) == 1437 and img.shape == (32, 32, 3) and 0 <= digit <= 9  # the 80% train split
    test = DigitsDataset(split="test")
    assert len(test) == 360 and not {im.tobytes() for im in ds.images} & {im.tobytes() for im in test.images}
    assert (
        str(digit) in caption
        or ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"][digit] in caption
    )


def _folder(tmp_path, lines, images=("a.png",)):
    for name in images:
        Image.new("RGB", (40, 30), (200, 10, 10)).save(tmp_path / name)
    (tmp_path / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return tmp_path


def test_imagefolder_loads_valid_folder(tmp_path):
    ds = make_dataset("imagefolder", path=str(_folder(tmp_path, [json.dumps({"file_name": "a.png", "text": "red"})])))
    img, caption, _ = ds.item(0)
    assert img.shape == (32, 32, 3) and caption == "red" and tuple(img[5, 5]) == (200, 10, 10)


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ([json.dumps({"file_name": "missing.png", "text": "x"})], "does not exist"),
        ([json.dumps({"file_name": "a.png", "text": "  "})], "empty or missing 'text'"),
        ([json.dumps({"file_name": "a.png"})], "empty or missing 'text'"),
        (["{not json"], "not valid UTF-8 JSON"),
        ([json.dumps({"file_name": "../escape.png", "text": "x"})], "escapes"),
        ([json.dumps({"text": "x"})], "file_name"),
        ([], "lists no images"),
    ],
)
def test_imagefolder_bad_folders_name_the_problem(tmp_path, lines, message):
    with pytest.raises(ImageFolderError, match=message):
        make_dataset("imagefolder", path=str(_folder(tmp_path, lines)))


def test_imagefolder_corrupt_image_and_missing_metadata(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (tmp_path / "metadata.jsonl").write_text(json.dumps({"file_name": "bad.png", "text": "x"}))
    with pytest.raises(ImageFolderError, match=r"bad\.png.*not a readable image"):
        make_dataset("imagefolder", path=str(tmp_path))
    (tmp_path / "metadata.jsonl").unlink()
    with pytest.raises(ImageFolderError, match=r"metadata\.jsonl is missing"):
        make_dataset("imagefolder", path=str(tmp_path))
    with pytest.raises(ValueError, match="needs a folder"):
        make_dataset("imagefolder")
    with pytest.raises(ValueError, match="unknown dataset"):
        make_dataset("cifar")
