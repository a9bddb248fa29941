"""The training loop: a tiny teacher learns, a killed run resumes to the same weights, failures are clear."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import TINY_UNET, tiny_spec
from safetensors import safe_open

from fewstep.compress.data import EncodedDataset
from fewstep.compress.flow_matching import FlowMatchingLoss
from fewstep.compress.teacher import TeacherConfig, train_teacher
from fewstep.compress.trainer import LoopConfig, TrainingDivergedError, TrainingLoop, read_metrics
from fewstep.models.checkpoint import CheckpointError
from fewstep.models.datasets import ShapesDataset
from fewstep.models.loading import load_model, model_sha256, save_model
from fewstep.models.unet_flow import build_unet_flow


class _InfGrad(torch.autograd.Function):
    """Adds 0 to the loss and an infinite gradient to w."""

    @staticmethod
    def forward(ctx, w):
        ctx.shape = w.shape
        return w.sum() * 0

    @staticmethod
    def backward(ctx, grad):
        return torch.full(ctx.shape, float("inf"))


def _overflowing_gradient(w: torch.Tensor) -> torch.Tensor:
    return _InfGrad.apply(w)


class _Interrupted(Exception):
    pass


def _loop(out, encoder, steps=6, stop_at=None, lr=2e-3, every=2, data=None):
    torch.manual_seed(0)
    model = build_unet_flow(dict(TINY_UNET, encoder_hid_dim=384))
    data = data or EncodedDataset.build(ShapesDataset(n=24, seed=0, image_size=16), encoder)

    def on_step(step):
        if step == stop_at:
            raise _Interrupted

    def save(where, ema, step):
        save_model(where / "model.safetensors", ema, tiny_spec(dict(TINY_UNET, encoder_hid_dim=384)))

    cfg = LoopConfig(
        steps=steps, batch_size=8, lr=lr, warmup_steps=2, checkpoint_every=every, log_every=1, sample_every=0
    )
    loss = FlowMatchingLoss(encoder.null(1), cond_dropout=0.2)
    return TrainingLoop(model, loss, lambda s: data.batch(s, 8, 0), cfg, out, save, on_step=on_step), data


@pytest.mark.slow
def test_tiny_teacher_loss_decreases(tmp_path, encoder):
    loop, _ = _loop(tmp_path, encoder, steps=80, every=80)
    loop.run(progress=False)
    losses = [m["loss"] for m in read_metrics(tmp_path)]
    assert len(losses) == 80
    first, last = sum(losses[:15]) / 15, sum(losses[-15:]) / 15
    assert last < 0.6 * first, (first, last)


def test_resume_after_interruption_equals_uninterrupted_run(tmp_path, encoder):
    full, data = _loop(tmp_path / "full", encoder)
    full.run(progress=False)
    broken, _ = _loop(tmp_path / "broken", encoder, stop_at=5, data=data)
    with pytest.raises(_Interrupted):
        broken.run(progress=False)  # killed after step 5; last checkpoint at step 4
    resumed, _ = _loop(tmp_path / "broken", encoder, data=data)
    resumed.run(resume=True, progress=False)
    assert resumed.step == 6
    for (k, a), (_, b) in zip(full.model.state_dict().items(), resumed.model.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    for (k, a), (_, b) in zip(full.ema.state_dict().items(), resumed.ema.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    assert [m["step"] for m in read_metrics(tmp_path / "broken")] == [1, 2, 3, 4, 5, 6]
    a, _ = load_model(tmp_path / "full" / "model.safetensors")
    b, _ = load_model(tmp_path / "broken" / "model.safetensors")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def test_existing_run_needs_resume_and_same_settings(tmp_path, encoder):
    loop, data = _loop(tmp_path, encoder, steps=2)
    loop.run(progress=False)
    again, _ = _loop(tmp_path, encoder, steps=4, data=data)
    with pytest.raises(FileExistsError, match="--resume"):
        again.run(progress=False)
    other, _ = _loop(tmp_path, encoder, steps=4, lr=1e-3, data=data)
    with pytest.raises(CheckpointError, match=r"other settings.*lr"):
        other.run(resume=True, progress=False)


def test_nonfinite_losses_are_skipped_then_stop_keeping_the_checkpoint(tmp_path, encoder):
    loop, _ = _loop(tmp_path, encoder, steps=40)
    real = loop.loss_fn

    def flaky(model, batch, g):
        loss, logs = real(model, batch, g)
        return (loss * float("nan"), logs) if loop.step >= 3 else (loss, logs)

    loop.loss_fn = flaky
    with (
        pytest.warns(UserWarning, match="non-finite loss"),
        pytest.raises(TrainingDivergedError, match="last good checkpoint"),
    ):
        loop.run(progress=False)
    assert read_metrics(tmp_path)[-1]["step"] == 3  # the last real update
    model, _ = load_model(tmp_path / "model.safetensors")  # checkpoints hold only good weights
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_train_teacher_writes_a_complete_run(tmp_path):
    cfg = TeacherConfig(
        dataset_size=16, steps=3, batch_size=4, checkpoint_every=3, sample_every=3, preset="student-xs", sample_steps=2
    )
    path = train_teacher(cfg, tmp_path, progress=False)
    _, spec = load_model(path)
    assert spec["training"]["step"] == 3 and spec["text_encoder"]["kind"] == "minilm"
    for name in ("config.yaml", "metrics.jsonl", "state.safetensors", "training_curve.png", "samples/step_0000003.png"):
        assert (tmp_path / name).is_file(), name


def test_mixed_precision_and_gpu_requests_are_checked():
    with pytest.raises(ValueError, match="needs a GPU"):
        LoopConfig(mixed_precision="bf16")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="sees no CUDA GPU"):
            TrainingLoop(build_unet_flow(TINY_UNET), None, None, LoopConfig(device="cuda"), "unused", None)


def test_nonfinite_gradient_with_finite_loss_is_skipped(tmp_path, encoder):
    loop, _ = _loop(tmp_path, encoder, steps=4, every=4)
    real = loop.loss_fn

    def poisoned(model, batch, g):
        loss, logs = real(model, batch, g)
        if loop.step == 3:  # the last step: a finite loss whose gradient overflows to inf
            loss = loss + _overflowing_gradient(next(model.parameters()))
        return loss, logs

    loop.loss_fn = poisoned
    with pytest.warns(UserWarning, match="non-finite"):
        loop.run(progress=False)
    assert all(torch.isfinite(p).all() for p in loop.model.parameters())
    assert loop.step == 4
    with safe_open(str(tmp_path / "state.safetensors"), "pt") as f:
        assert json.loads(f.metadata()["fewstep"])["step"] == 4  # the skipped last step still ends with a checkpoint


def test_teacher_resume_refuses_a_changed_dataset_before_any_work(tmp_path):
    cfg = TeacherConfig(dataset_size=8, steps=1, batch_size=2, checkpoint_every=1, sample_every=0, preset="student-xs")
    train_teacher(cfg, tmp_path, progress=False)
    with pytest.raises(CheckpointError, match=r"other settings.*data_seed"):
        train_teacher(TeacherConfig(**{**cfg.__dict__, "data_seed": 5, "steps": 2}), tmp_path, resume=True)
    with pytest.raises(FileExistsError, match="--resume"):
        train_teacher(cfg, tmp_path)
    train_teacher(TeacherConfig(**{**cfg.__dict__, "steps": 2}), tmp_path, resume=True, progress=False)
    assert load_model(tmp_path / "model.safetensors")[1]["training"]["step"] == 2


def test_teacher_fine_tune_starts_from_init_weights_and_refuses_another_network_or_encoder(tmp_path):
    base = TeacherConfig(dataset_size=8, steps=2, batch_size=2, checkpoint_every=2, sample_every=0, preset="student-xs")
    first = train_teacher(base, tmp_path / "a", progress=False)
    tuned = train_teacher(
        TeacherConfig(**{**base.__dict__, "init": str(first), "steps": 1, "lr": 1e-9, "seed": 7}),
        tmp_path / "b",
        progress=False,
    )
    scratch = train_teacher(TeacherConfig(**{**base.__dict__, "steps": 1, "seed": 7}), tmp_path / "c", progress=False)
    start, _ = load_model(first)
    assert load_model(tuned)[1]["training"]["init"] == {"from": str(first), "sha256": model_sha256(first)}
    for name, model in (("tuned", load_model(tuned)[0]), ("scratch", load_model(scratch)[0])):
        pairs = zip(model.parameters(), start.parameters(), strict=True)
        close = all(torch.allclose(p, q, atol=1e-6) for p, q in pairs)
        assert close == (name == "tuned"), name
    with pytest.raises(CheckpointError, match="--preset"):
        train_teacher(TeacherConfig(**{**base.__dict__, "init": str(first), "preset": "student-s"}), tmp_path / "d")
    with pytest.raises(CheckpointError, match="text encoder"):
        train_teacher(TeacherConfig(**{**base.__dict__, "init": str(first), "max_tokens": 48}), tmp_path / "e")
