"""The tiny (TAESD-like) decoder: distilled from a pipeline's VAE decoder, bundled beside it, chosen at run time."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fewstep.compress.tiny_decoder import DecoderDistillConfig, distill_decoder, evaluate_tiny_decoder
from fewstep.models.checkpoint import CheckpointError
from fewstep.models.diffusers_dir import load_codec
from fewstep.models.loading import load_model
from fewstep.models.tiny_decoder import TinyDecoder, load_tiny_decoder
from fewstep.testing.tiny_pipelines import IMAGE_SIZE, tiny_sd_pipeline
from tests.distill_fixtures import distill_tiny

pytest.importorskip("onnxruntime")


def _cfg(teacher, **changes) -> DecoderDistillConfig:
    fields = dict(teacher=str(teacher), channels=16, blocks=1, dataset_size=64, eval_size=32, steps=60, batch_size=8,
                  lr=3e-3, warmup_steps=5, checkpoint_every=30, sample_every=60)  # fmt: skip
    return DecoderDistillConfig(**{**fields, **changes})


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("taesd")
    pipe = tiny_sd_pipeline(root / "sd", "epsilon")
    path = distill_decoder(_cfg(pipe), root / "run", progress=False)
    return pipe, path


def test_tiny_decoder_learns_the_vae_decoder(trained):
    pipe, path = trained
    run = path.parent
    losses = [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert losses[-1] < 0.6 * losses[0]
    result = json.loads((run / "eval.json").read_text())
    assert result["params_tiny"] > 0 and result["ms_per_image_vae"] > 0
    _, spec = load_model(pipe)
    codec = load_codec(spec)
    torch.manual_seed(0)
    untrained = evaluate_tiny_decoder(TinyDecoder(4, IMAGE_SIZE // 8, 16, 1).eval(), codec, spec, _cfg(pipe))
    assert result["psnr_tiny_vs_vae_db"] > untrained["psnr_tiny_vs_vae_db"] + 3
    assert (run / "samples" / "step_0000060.png").is_file()
    model, dspec = load_tiny_decoder(path)
    assert dspec["vae_fingerprint"] == codec.fingerprint and dspec["latents"] == spec["image"]
    assert model(torch.zeros(2, 4, 8, 8)).shape == (2, 3, IMAGE_SIZE, IMAGE_SIZE)


@pytest.mark.slow
def test_bundle_carries_both_decoders_and_the_runtime_picks_one(trained, tmp_path):
    from fewstep.core.manifest import BundleError
    from fewstep.export.bundle import BundleExport
    from fewstep.export.config import ExportConfig
    from fewstep.models.pipeline import TorchPipeline, sampling_times
    from fewstep.runtime import Generator

    pipe, path = trained
    student = distill_tiny(pipe, tmp_path / "run", "progressive", start_steps=4, student_steps=2, dataset_size=16,
                           steps=2, batch_size=2, sample_every=100)  # fmt: skip
    cfg = ExportConfig(to=("onnx",), precision=("fp32",), parity_prompts=4, calibration_prompts=4,
                       tiny_decoder=str(path), decoder="tiny")  # fmt: skip
    manifest = BundleExport(str(student), tmp_path / "bundle", cfg, log=lambda m: None).run().to_json()
    assert manifest["default_decoder"] == "tiny" and set(manifest["decoders"]) == {"vae", "tiny"}
    assert manifest["decoder"] == manifest["decoders"]["vae"]  # the parity gates' reference stays the VAE
    tiny_entry = manifest["decoders"]["tiny"]
    assert tiny_entry["file"] == "decoder_tiny.onnx" and 0 < tiny_entry["psnr_vs_vae_db"] < 100

    prompts, seeds = ["a red circle", "a blue square"], [3, 4]
    torch_pipe = TorchPipeline.from_checkpoint(student)
    with torch.no_grad():
        latents = torch_pipe.sample(torch_pipe.encoder.encode(prompts), seeds, sampling_times(torch_pipe.spec, None),
                                    torch_pipe.default_guidance)  # fmt: skip
        tiny_ref = load_tiny_decoder(path)[0](latents).numpy()
    with_tiny = Generator.from_bundle(tmp_path / "bundle")  # the bundle's default
    np.testing.assert_allclose(with_tiny.generate_float(prompts, seeds), tiny_ref, atol=2e-4)
    with_vae = Generator.from_bundle(tmp_path / "bundle", decoder="vae")
    vae_images = with_vae.generate(prompts, seeds)
    assert np.abs(vae_images.astype(int) - torch_pipe.generate(prompts, seeds).astype(int)).max() <= 1

    again = BundleExport(str(student), tmp_path / "bundle", cfg, log=lambda m: None).run().to_json()
    assert again["decoders"]["tiny"] == tiny_entry  # unchanged tiny decoder: kept, not re-exported
    plain = tmp_path / "plain"
    BundleExport(str(student), plain, ExportConfig(to=("onnx",), precision=("fp32",), parity_prompts=2,
                                                   calibration_prompts=2), log=lambda m: None).run()  # fmt: skip
    with pytest.raises(BundleError, match=r"no .tiny. image decoder.*--tiny-decoder"):
        Generator.from_bundle(plain, decoder="tiny")


@pytest.mark.slow
def test_tiny_decoder_bad_inputs_are_named(trained, tmp_path):
    from fewstep.core.config import ConfigError
    from fewstep.export.config import ExportConfig

    _, path = trained
    other = tiny_sd_pipeline(tmp_path / "other", "v_prediction", seed=1)  # another VAE's weights
    student = distill_tiny(other, tmp_path / "run", "progressive", start_steps=4, student_steps=2, dataset_size=16,
                           steps=1, batch_size=2, sample_every=100)  # fmt: skip
    from fewstep.export.bundle import BundleExport

    cfg = ExportConfig(to=("onnx",), precision=("fp32",), parity_prompts=2, calibration_prompts=2,
                       tiny_decoder=str(path))  # fmt: skip
    with pytest.raises(ValueError, match="distilled from another VAE"):
        BundleExport(str(student), tmp_path / "bundle", cfg, log=lambda m: None).run()
    with pytest.raises(ConfigError, match="needs --tiny-decoder"):
        ExportConfig(decoder="tiny")
    with pytest.raises(CheckpointError, match="not a fewstep tiny decoder"):
        load_tiny_decoder(student)
    with pytest.raises(ValueError, match="works in pixel space"):
        distill_decoder(_cfg("shapes32-teacher"), tmp_path / "pixel", progress=False)
    from fewstep.models.loading import model_spec
    from fewstep.models.tiny_decoder import check_decoder_fits

    with pytest.raises(ValueError, match="works in pixel space"):  # --tiny-decoder on a pixel-space student
        check_decoder_fits(load_tiny_decoder(path)[1], model_spec("shapes32-teacher"), None)
