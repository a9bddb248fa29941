"""The equal-steps verdict: judged on shapes with the shipped models, the teacher gap's arithmetic, the record's
checks, and one-line errors for prompts it cannot use."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fewstep.core.verdict_record import read_verdict, verdict_label, verdict_summary, write_verdict
from fewstep.evaluation.verdict import _gap, equal_steps_verdict, verdict_prompts
from fewstep.models.pipeline import TorchPipeline


@pytest.mark.slow
def test_a_shipped_four_step_student_is_judged_against_its_teacher_at_four_and_fifty_steps():
    teacher = TorchPipeline.from_checkpoint("shapes32-teacher-v1")  # the shipped progressive student's teacher
    student = TorchPipeline.from_checkpoint("shapes32-progressive-4step")
    prompts = verdict_prompts("shapes", 32)
    assert prompts.real is not None and len(prompts.prompts) == 32 and "held out" in prompts.source
    v = equal_steps_verdict(student, teacher, prompts)
    s, t, f = (v["systems"][k] for k in ("student", "teacher_same_steps", "teacher_full_steps"))
    assert v["steps"] == 4 and v["teacher_full_steps"] == 50 and v["basis"] == "domain FID and adherence"
    assert {"fid", "adherence", "teacher_gap"} <= set(s) and f["teacher_gap"] == 0
    # measured with 64 prompts: gap 13.9 vs 26.3, FID 5.76 vs 8.73 (adherence 32.8% vs 37.5%: the verdict "mixed")
    assert s["teacher_gap"] < 0.75 * t["teacher_gap"]  # it keeps more of the 50-step images than 4 Euler steps
    assert s["fid"] < t["fid"]
    better, worse = s["adherence"] >= t["adherence"], s["adherence"] < t["adherence"] and s["fid"] > t["fid"]
    assert v["outcome"] == ("better" if better else "worse" if worse else "mixed")
    assert v["line"].startswith("verdict: the student at 4 steps is")


def test_teacher_gap_is_the_mean_rms_pixel_distance():
    a = np.zeros((2, 4, 4, 3), np.uint8)
    b = a.copy()
    b[0] = 10  # one image off by 10 everywhere, the other identical
    assert _gap(a, a) == 0 and _gap(b, a) == pytest.approx(5.0)


def test_the_record_is_read_only_for_the_checkpoint_it_measured(tmp_path):
    ckpt = tmp_path / "model.safetensors"
    ckpt.write_bytes(b"weights")
    verdict = {"outcome": "worse", "steps": 4, "student_sha256": "abc", "systems": {}, "line": "verdict: ...",
               "basis": "teacher gap"}  # fmt: skip
    write_verdict(tmp_path, verdict)
    assert read_verdict(ckpt, "abc") == verdict and read_verdict(ckpt) == verdict
    assert read_verdict(ckpt, "other-weights") is None  # retrained since: not its verdict
    assert verdict_label(read_verdict(ckpt)) == "WORSE at 4 steps" and verdict_label(None) == "-"
    assert "student_sha256" not in verdict_summary(verdict)
    (tmp_path / "verdict.json").write_text(json.dumps({"outcome": "great"}))
    assert read_verdict(ckpt) is None  # not a verdict fewstep wrote
    (tmp_path / "verdict.json").write_text("{not json")
    assert read_verdict(ckpt) is None


def test_prompts_it_cannot_use_are_one_line_errors(tmp_path):
    with pytest.raises(ValueError, match="at least 2 prompts"):
        verdict_prompts("shapes", 1)
    with pytest.raises(ValueError, match="needs a folder"):
        verdict_prompts("imagefolder", 8)
