"""Safe I/O: round trips, and clear refusals of pickles with code, truncated, foreign and mismatched files."""

from __future__ import annotations

import os

import pytest
import torch
from conftest import random_cond, tiny_spec

from fewstep.core.fsio import OutputWriteError, atomic_write, remove_stale_temps
from fewstep.models.checkpoint import (
    CheckpointError,
    load_foreign_state_dict,
    load_state_strict,
    save_tensors,
)
from fewstep.models.loading import load_model, save_model


def _saved(tmp_path, tiny_model, dtype=torch.float32):
    path = tmp_path / "m.safetensors"
    save_model(path, tiny_model, tiny_spec(name="tiny"), dtype=dtype)
    return path


def test_round_trip_keeps_weights_and_spec(tmp_path, tiny_model):
    model, spec = load_model(_saved(tmp_path, tiny_model))
    assert spec["name"] == "tiny" and spec["format"] == "fewstep-checkpoint/1"
    for (k, a), (_, b) in zip(tiny_model.state_dict().items(), model.state_dict().items(), strict=True):
        assert torch.equal(a, b), k


def test_fp16_checkpoint_is_close(tmp_path, tiny_model):
    model, _ = load_model(_saved(tmp_path, tiny_model, torch.float16))
    x, t, c = torch.randn(2, 3, 16, 16), torch.rand(2), random_cond(2)
    with torch.no_grad():
        torch.testing.assert_close(model(x, t, c), tiny_model(x, t, c), atol=5e-3, rtol=5e-3)


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/fewstep_pwned",))


def test_pickle_with_code_is_refused_and_never_runs(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"w": torch.zeros(1), "x": _Evil()}, path)
    if os.path.exists("/tmp/fewstep_pwned"):
        os.remove("/tmp/fewstep_pwned")
    with pytest.raises(CheckpointError, match="refused to load"):
        load_foreign_state_dict(path)
    assert not os.path.exists("/tmp/fewstep_pwned")
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        load_model(path)  # a pickle where a fewstep checkpoint is expected


def test_plain_tensor_files_load_with_weights_only(tmp_path):
    torch.save({"state_dict": {"w": torch.ones(2)}}, tmp_path / "ok.pt")
    assert torch.equal(load_foreign_state_dict(tmp_path / "ok.pt")["w"], torch.ones(2))


def test_truncated_checkpoint_is_named(tmp_path, tiny_model):
    path = _saved(tmp_path, tiny_model)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"m\.safetensors.*truncated or corrupt"):
        load_model(path)


def test_mismatched_and_nonfinite_weights_are_named(tmp_path, tiny_model):
    state = tiny_model.state_dict()
    key = next(k for k in state if k.endswith("conv_in.weight"))
    bad = dict(state, **{key: torch.zeros(1, 2, 3)})
    with pytest.raises(CheckpointError, match=r"wrong shapes.*conv_in\.weight"):
        load_state_strict(tiny_model, bad, "x.safetensors")
    missing = {k: v for k, v in state.items() if k != key}
    with pytest.raises(CheckpointError, match="1 missing"):
        load_state_strict(tiny_model, missing, "x.safetensors")
    nan = dict(state, **{key: torch.full_like(state[key], float("nan"))})
    with pytest.raises(CheckpointError, match="NaN/Inf"):
        load_state_strict(tiny_model, nan, "x.safetensors")


def test_foreign_and_unknown_files(tmp_path):
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(1)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(CheckpointError, match="not written by fewstep"):
        load_model(tmp_path / "foreign.safetensors")
    save_tensors(tmp_path / "judge.safetensors", {"w": torch.zeros(1)}, {"format": "fewstep-judge/1"})
    with pytest.raises(CheckpointError, match="format"):
        load_model(tmp_path / "judge.safetensors")
    with pytest.raises(CheckpointError, match="neither a shipped model"):
        load_model(tmp_path / "nope.safetensors")


def test_failed_write_keeps_the_previous_file(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"old")

    def fail(p):
        p.write_bytes(b"half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OutputWriteError, match=r"f.bin: the disk is full; the previous f.bin .* is intact"):
        atomic_write(path, fail)
    assert path.read_bytes() == b"old" and list(tmp_path.iterdir()) == [path]


def test_resume_cleanup_removes_both_kinds_of_killed_write_temps(tmp_path):
    # ours (`.NAME.RANDOM.tmp`) and the `.tmpXXXXXX` that safetensors' own rename-into-place leaves after a kill
    temps = [".state.safetensors.k2j4h1.tmp", ".tmp82UlwR"]
    kept = ["state.safetensors", ".hidden", ".tmp-notes", "log.tmp", ".tmp82UlwRx"]
    for name in temps + kept:
        (tmp_path / name).write_bytes(b"x")
    assert remove_stale_temps(tmp_path) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(kept)
