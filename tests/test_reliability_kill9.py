"""Crash safety under kill -9: teacher training, pair generation, distillation, export and report are SIGKILLed at
seeded random moments (FEWSTEP_KILLS per stage, default 2), every output is checked after each kill (no truncated
file, a bundle complete or refused as incomplete), every run resumes and ends equal to an uninterrupted one; a full
disk during a checkpoint (the kernel's RLIMIT_FSIZE makes the write fail) leaves the previous checkpoint intact."""

from __future__ import annotations

import json
import re
import resource
import signal

import numpy as np
import pytest
import torch

from fewstep.models.checkpoint import load_tensors, read_meta
from tests.kill_harness import KILLS, check_outputs, is_temp, kill_repeatedly, run, run_ok

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny(tiny_teacher_files):
    return tiny_teacher_files


def _same_tensors(a, b, atol: float = 0.0) -> None:
    ta, tb = load_tensors(a)[0], load_tensors(b)[0]
    assert ta.keys() == tb.keys()
    for k in ta:
        assert torch.allclose(ta[k].float(), tb[k].float(), atol=atol, rtol=0), f"{k} differs"


def _survived(log) -> None:
    assert log.kills >= 1, "no kill landed inside the run: the kill window is wrong"
    assert log.files_checked > 0


TEACHER = ["train-teacher", "--preset", "student-xs", "--dataset-size", "64", "--steps", "60", "--batch-size", "8",
           "--checkpoint-every", "5", "--sample-every", "1000", "--sample-steps", "2", "--warmup-steps", "2",
           "--threads", "1", "--no-progress"]  # fmt: skip


def test_teacher_training_survives_kill9(tmp_path):
    duration = run_ok([*TEACHER, "--out", str(tmp_path / "ref")])
    out = tmp_path / "killed"

    def lost_at_most_one_interval(attempt) -> None:
        logged = [int(m) for m in re.findall(r"^step (\d+)/60", attempt.output, re.M)]
        state = out / "state.safetensors"
        saved = read_meta(state)["step"] if state.is_file() else 0
        assert not logged or logged[-1] - saved <= 5, f"logged step {logged[-1]}, checkpoint only {saved}"

    args = [*TEACHER, "--out", str(out)]
    log = kill_repeatedly(args, [*args, "--resume"], duration, out, seed=1, check=lost_at_most_one_interval)
    _survived(log)
    run_ok([*args, "--resume"])
    check_outputs(out)
    assert not [p for p in out.iterdir() if is_temp(p)]
    _same_tensors(out / "model.safetensors", tmp_path / "ref" / "model.safetensors", atol=1e-6)


def test_pair_generation_survives_kill9(tiny, tmp_path):
    teacher = str(tiny[0])
    args = ["pairs", "--teacher", teacher, "--n", "96", "--steps", "6", "--shard-size", "8", "--batch-size", "8",
            "--threads", "1", "--no-progress"]  # fmt: skip
    duration = run_ok([*args, "--out", str(tmp_path / "ref")])
    out = tmp_path / "killed"
    log = kill_repeatedly([*args, "--out", str(out)], [*args, "--out", str(out)], duration, out, seed=2)
    _survived(log)
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("shard_*.safetensors")}
    run_ok([*args, "--out", str(out)])
    for name, mtime in before.items():  # finished shards are kept, not recomputed
        assert (out / name).stat().st_mtime_ns == mtime
    shards = sorted(p.name for p in (tmp_path / "ref").glob("shard_*.safetensors"))
    assert shards == sorted(p.name for p in out.glob("shard_*.safetensors")) and len(shards) == 12
    for name in shards:
        _same_tensors(out / name, tmp_path / "ref" / name)


def test_two_stage_distillation_survives_kill9(tiny, tmp_path):
    teacher, student, pairs = (str(p) for p in tiny)
    args = ["distill", "slimflow", "--teacher", teacher, "--pairs", pairs, "--student", student, "--steps", "30",
            "--anneal-steps", "10", "--stage2-steps", "20", "--batch-size", "4", "--checkpoint-every", "4",
            "--sample-every", "1000", "--threads", "1", "--no-progress", "--verdict-prompts", "0"]  # fmt: skip
    duration = run_ok([*args, "--out", str(tmp_path / "ref")])
    out = tmp_path / "killed"
    log = kill_repeatedly([*args, "--out", str(out)], [*args, "--out", str(out), "--resume"], duration, out, seed=3)
    _survived(log)
    run_ok([*args, "--out", str(out), "--resume"])
    check_outputs(out)
    _same_tensors(out / "model.safetensors", tmp_path / "ref" / "model.safetensors", atol=1e-5)


def test_export_survives_kill9_and_a_bundle_is_complete_or_refused(tiny, tmp_path):
    args = ["export", str(tiny[0]), "--to", "onnx", "--precision", "fp32,int8", "--quantizer", "ort",
            "--speed-gate", "false", "--threads", "1"]  # fmt: skip
    duration = run_ok([*args, "--out", str(tmp_path / "ref")])
    out = tmp_path / "killed"
    log = kill_repeatedly([*args, "--out", str(out)], [*args, "--out", str(out)], duration, out, seed=4)
    _survived(log)
    run_ok([*args, "--out", str(out)])
    assert check_outputs(out) > 3
    ref = json.loads((tmp_path / "ref" / "manifest.json").read_text())
    got = json.loads((out / "manifest.json").read_text())
    assert [e["id"] for e in got["engines"]] == [e["id"] for e in ref["engines"]]
    assert got["engines"][0]["files"] == ref["engines"][0]["files"]  # fp32 ONNX: the same bytes


SWEEP = """
name: kill9
data: {n: 12}
latency: {runs: 2, warmup: 0, batch: 8, threads: 1, memory: false}
grid_prompts: 3
systems:
  - {name: tiny, model: MODEL, steps: [1, 2, 4, 8]}
  - {name: tiny cfg, model: MODEL, steps: [2, 4], guidance: 2.0}
"""


def test_report_survives_kill9(tiny, tmp_path):
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(SWEEP.replace("MODEL", str(tiny[0])))
    args = ["report", str(sweep), "--no-progress"]
    duration = run_ok([*args, "--out", str(tmp_path / "ref")])
    out = tmp_path / "killed"
    log = kill_repeatedly([*args, "--out", str(out)], [*args, "--out", str(out)], duration, out, seed=5)
    _survived(log)
    run_ok([*args, "--out", str(out)])
    check_outputs(out)
    quality = lambda root: [(s["id"], s["status"], s["fid"], s["kid_mean"], s["adherence"]) for s in  # noqa: E731
                            json.loads((root / "results.json").read_text())["systems"]]  # fmt: skip
    assert quality(out) == quality(tmp_path / "ref")


def _full_disk(limit_bytes: int):
    def limit() -> None:  # in the child: writes past the limit fail with EFBIG instead of killing the process
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    return limit


def test_full_disk_during_a_checkpoint_keeps_the_previous_one(tmp_path):
    out = tmp_path / "run"
    args = [*TEACHER, "--out", str(out)]
    args[args.index("--steps") + 1] = "10"
    run_ok(args)
    state = out / "state.safetensors"
    before = state.read_bytes()
    assert read_meta(state)["step"] == 10 and len(before) > 1 << 20
    args[args.index("--steps") + 1] = "20"
    done, _ = run([*args, "--resume"], preexec_fn=_full_disk(1 << 20))
    assert done.returncode == 2, done.stderr[-2000:]
    assert "state.safetensors: the disk is full; the previous state.safetensors (if any) is intact" in done.stderr
    assert "Traceback" not in done.stderr
    assert state.read_bytes() == before and not [p for p in out.iterdir() if is_temp(p)]
    run_ok([*args, "--resume"])  # space again: the run continues from step 10
    assert read_meta(state)["step"] == 20
    assert all(np.isfinite(t.numpy()).all() for t in load_tensors(out / "model.safetensors")[0].values())


def test_kill_count_is_what_the_readme_says():
    assert KILLS >= 2  # the README's figure: 5 stages x FEWSTEP_KILLS kill points
