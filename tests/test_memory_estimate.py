"""Memory bounds: distillation refuses up front, with the estimate and the ways out, when a configuration cannot
fit; VAE decoding runs in bounded chunks."""

from __future__ import annotations

import pytest

from fewstep.compress.memory_estimate import FIXED_OVERHEAD, estimate
from fewstep.core.resources import ResourceError
from tests.distill_fixtures import distill_tiny

SD15 = 859_520_964


def test_estimate_counts_weights_training_state_and_activations():
    lora = estimate("consistency", SD15, SD15, 8_000_000, 1, 64 * 64, True)
    assert lora.weights == 4 * (2 * SD15 + 8_000_000)  # teacher, student, the target's own (trainable) weights
    assert lora.training == 16 * 8_000_000
    full = estimate("consistency", SD15, SD15, SD15, 1, 64 * 64, True)
    assert full.weights == 4 * SD15 * 3  # a full-weight target is a whole copy
    assert full.total - lora.total == (16 + 4) * (SD15 - 8_000_000)
    assert full.total > 24 * 1024**3  # full-weight consistency of SD1.5 cannot fit 24 GiB
    off = estimate("guidance", SD15, SD15, SD15, 2, 64 * 64, False)
    assert off.activations == 2 * 4 * estimate("guidance", SD15, SD15, SD15, 1, 64 * 64, True).activations
    assert off.total == off.weights + off.training + off.activations + FIXED_OVERHEAD


def test_small_models_are_estimated_small():
    """The demo's run (a 1.4M-parameter 32x32 student, batch 32, no checkpointing) must not be refused: the
    activation term scales with the network, not only with the pixels (a pixel-only term asked 74 GiB)."""
    est = estimate("guidance", 1_400_000, 1_400_000, 1_400_000, 32, 32 * 32, False)
    assert est.total < 2 * 1024**3


def test_a_run_that_cannot_fit_is_refused_before_training(tiny_teacher, tmp_path, monkeypatch):
    monkeypatch.setattr("fewstep.core.resources.available_memory", lambda: 1024**2)
    with pytest.raises(
        ResourceError,
        match=r"fewstep distill progressive at batch 4 needs about .* GiB of memory.*"
        r"try train LoRA adapters .*--gradient-checkpointing, a smaller --batch",
    ):
        distill_tiny(tiny_teacher[0], tmp_path / "run", "progressive", start_steps=4, student_steps=2)
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_vae_decoding_is_chunked_and_gives_the_same_images(tmp_path, monkeypatch):
    import torch

    from fewstep.models.pipeline import TorchPipeline
    from fewstep.testing.tiny_pipelines import tiny_sd_pipeline

    pipe = TorchPipeline.from_checkpoint(tiny_sd_pipeline(tmp_path / "sd"))
    latents = torch.randn(5, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    whole = pipe.decode(latents)
    calls = []
    decode = pipe.codec.decode
    monkeypatch.setattr(pipe.codec, "decode", lambda x: calls.append(len(x)) or decode(x))
    monkeypatch.setattr("fewstep.core.imaging.DECODE_PIXELS", 2 * 32 * 32)  # two 32x32 images per call
    chunked = pipe.decode(latents)
    assert calls == [2, 2, 1]
    torch.testing.assert_close(chunked, whole, atol=1e-5, rtol=0)


def test_vae_encoding_of_a_dataset_is_chunked_and_gives_the_same_latents(tmp_path, monkeypatch):
    import numpy as np
    import torch

    from fewstep.compress.data import encode_latents
    from fewstep.models.pipeline import TorchPipeline
    from fewstep.testing.tiny_pipelines import tiny_sd_pipeline

    codec = TorchPipeline.from_checkpoint(tiny_sd_pipeline(tmp_path / "sd")).codec
    images = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    with torch.no_grad():
        whole = encode_latents(codec, images)
        calls = []
        encode = codec.encode
        monkeypatch.setattr(codec, "encode", lambda x: calls.append(len(x)) or encode(x))
        monkeypatch.setattr("fewstep.core.imaging.DECODE_PIXELS", 2 * 32 * 32)  # two 32x32 images per call
        chunked = encode_latents(codec, images)
    assert calls == [2, 2, 1]
    torch.testing.assert_close(chunked, whole, atol=1e-5, rtol=0)
