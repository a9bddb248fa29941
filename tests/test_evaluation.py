"""Quality metrics: FID sanity (disjoint real sets vs degraded ones) and exact adherence logic."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from PIL import Image, ImageFilter

from fewstep.evaluation.adherence import Detected, shapes_adherent
from fewstep.evaluation.evaluate import Setting
from fewstep.evaluation.quality import fid_kid, judge_features
from fewstep.evaluation.train_judge import judge_accuracy, load_judge
from fewstep.models.datasets import ShapesDataset
from fewstep.models.datasets.shapes import ShapeObject, ShapesLabel


@pytest.fixture(scope="module")
def space():
    return judge_features("shapes32-judge")


def _real(seed: int, n: int = 200) -> np.ndarray:
    ds = ShapesDataset(n=n, seed=seed)
    return np.stack([ds.item(i)[0] for i in range(n)])


def _blur(images: np.ndarray, radius: float) -> np.ndarray:
    return np.stack([np.asarray(Image.fromarray(im).filter(ImageFilter.GaussianBlur(radius))) for im in images])


def _noise(images: np.ndarray, sigma: float) -> np.ndarray:
    rng = np.random.default_rng(0)
    return np.clip(images + rng.normal(0, sigma, images.shape), 0, 255).astype(np.uint8)


@pytest.mark.slow
def test_fid_grows_with_degradation_and_real_sets_are_close(space):
    real_a, real_b = _real(100, 400), _real(101, 400)
    floor = fid_kid(real_a, real_b, space)["fid"]
    blurred = [fid_kid(real_a, _blur(real_b, r), space)["fid"] for r in (0.6, 1.0, 1.5, 2.5)]
    noised = [fid_kid(real_a, _noise(real_b, s), space)["fid"] for s in (8, 20, 40, 80)]
    assert all(a < b for a, b in itertools.pairwise(blurred)), blurred
    assert all(a < b for a, b in itertools.pairwise(noised)), noised
    assert floor < 0.5 * blurred[2] and floor < 0.6 * noised[1], (floor, blurred, noised)


def test_kid_is_near_zero_for_real_sets(space):
    real_a, real_b = _real(100), _real(101)
    same = fid_kid(real_a, real_b, space)
    worse = fid_kid(real_a, _blur(real_b, 2.0), space)
    assert abs(same["kid_mean"]) < worse["kid_mean"] / 5


def test_judge_reads_real_images_correctly():
    judge, meta = load_judge("shapes32-judge")
    ds = ShapesDataset(n=300, seed=55)
    items = [ds.item(i) for i in range(len(ds))]
    acc = judge_accuracy("shapes", judge, np.stack([it[0] for it in items]), [it[2] for it in items])
    assert acc["adherence_on_real"] > 0.93 and acc["colour_accuracy"] > 0.98
    assert meta["accuracy"]["adherence_on_real"] > 0.93


def _obj(shape, colour, cell, size="small"):
    return ShapeObject(shape, colour, size, cell)


def test_adherence_logic_on_hand_made_detections():
    a, b = _obj("circle", "red", 3), _obj("square", "blue", 5)  # same row, a left of b
    label = ShapesLabel("black", (a, b), "left of", frozenset())
    assert shapes_adherent(Detected("white", (b, a)), label)  # order of detection is irrelevant
    assert not shapes_adherent(Detected("black", (_obj("circle", "red", 5), _obj("square", "blue", 3))), label)
    assert not shapes_adherent(Detected("black", (a,)), label)  # a shape is missing
    assert not shapes_adherent(Detected("black", (a, b, _obj("cross", "green", 0))), label)  # an extra shape
    assert not shapes_adherent(Detected("black", (_obj("circle", "green", 3), b)), label)  # wrong colour
    sized = ShapesLabel("black", (a, b), "left of", frozenset({"size", "background"}))
    assert not shapes_adherent(Detected("black", (_obj("circle", "red", 3, "large"), b)), sized)
    assert not shapes_adherent(Detected("white", (a, b)), sized)
    one = ShapesLabel("gray", (_obj("triangle", "cyan", 8),), None, frozenset())
    assert shapes_adherent(Detected("gray", (_obj("triangle", "cyan", 8, "large"),)), one)
    assert not shapes_adherent(Detected("gray", (_obj("triangle", "cyan", 7),)), one)


def test_settings_parse_and_count_evaluations():
    s = Setting.parse("euler:4:3")
    assert (s.sampler, s.steps, s.guidance, s.nfe, s.label) == ("euler", 4, 3.0, 8, "euler-4step-w3")
    assert Setting.parse("heun:5:1").nfe == 9
    with pytest.raises(ValueError, match="SAMPLER:STEPS:GUIDANCE"):
        Setting.parse("euler-4")


@pytest.mark.slow
def test_reference_metrics_reuse_real_features_and_match_fid_kid(space):
    """A sweep scores many systems against one real set: its features are computed once, with the same numbers."""
    from fewstep.evaluation.quality import ReferenceMetrics

    real_a, real_b = _real(11, 120), _real(12, 120)
    ref = ReferenceMetrics(real_a, space, kid_subset=50)
    for fake in (real_b, _blur(real_b, 1.5), real_b):  # reset between systems: the third equals the first
        expected = fid_kid(real_a, fake, space, kid_subset=50)
        got = ref.score(fake)
        assert got["fid"] == pytest.approx(expected["fid"], rel=1e-6)
        assert got["kid_mean"] == pytest.approx(expected["kid_mean"], rel=1e-6, abs=1e-9)


def test_paired_adherence_counts_discordant_prompts_and_mcnemar_matches_the_binomial():
    from fewstep.evaluation.paired import mcnemar_exact, paired_adherence

    # 10 prompts: both right on 2, only B right on 3, only A right on 1, both wrong on 4
    a = "11" + "000" + "1" + "0000"
    b = "11" + "111" + "0" + "0000"
    r = paired_adherence(a, b)
    assert (r["only_a"], r["only_b"], r["adherence_a"], r["adherence_b"]) == (1, 3, 0.3, 0.5)
    assert abs(r["difference_b_minus_a"] - 0.2) < 1e-12
    assert abs(r["paired_se"] - (4 - 2**2 / 10) ** 0.5 / 10) < 1e-12
    assert abs(r["mcnemar_p"] - 2 * (1 + 4) / 16) < 1e-12  # P(X <= 1), X ~ Bin(4, 1/2), two-sided
    assert mcnemar_exact(0, 10) == 2 / 1024 and mcnemar_exact(0, 0) == 1.0 and mcnemar_exact(5, 5) == 1.0
    with pytest.raises(ValueError, match="same --n"):
        paired_adherence("101", "10")
    with pytest.raises(ValueError, match="'0' and '1'"):
        paired_adherence("1x", "10")
