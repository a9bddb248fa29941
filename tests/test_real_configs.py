"""The real-config model factory: published architectures at their exact sizes, saved as pipeline directories
that load through the same code as a downloaded model; and the errors a damaged pipeline directory gets."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from fewstep.core.resources import ResourceError
from fewstep.models.diffusers_dir import PipelineDirError, check_pipeline_dir, load_pipeline, pipeline_spec
from fewstep.testing import real_pipelines
from fewstep.testing.real_configs import PIPELINES
from fewstep.testing.tiny_pipelines import tiny_sd_pipeline

# published parameter counts (the models' cards and papers) of the text towers and the VAEs
PUBLISHED = {
    "CLIP ViT-L/14 text": 123_060_480,
    "OpenCLIP ViT-H/14 text": 340_387_840,
    "OpenCLIP ViT-bigG/14 text + projection": 694_659_840,
    "SD VAE": 83_653_863,
    "SD3 VAE": 83_819_683,
}


@pytest.mark.parametrize("name", sorted(PIPELINES))
def test_denoisers_have_their_published_parameter_counts(name):
    sizes = real_pipelines.estimate(name)  # built on the meta device: no memory
    assert sizes["denoiser"] == PIPELINES[name]["params"]


def test_text_towers_and_vaes_have_their_published_sizes():
    assert real_pipelines.estimate("sd15")["text_encoder"] == PUBLISHED["CLIP ViT-L/14 text"]
    assert real_pipelines.estimate("sd21")["text_encoder"] == PUBLISHED["OpenCLIP ViT-H/14 text"]
    sdxl = real_pipelines.estimate("sdxl")
    assert sdxl["text_encoder_2"] == PUBLISHED["OpenCLIP ViT-bigG/14 text + projection"]
    assert sdxl["vae"] == PUBLISHED["SD VAE"]
    assert real_pipelines.estimate("sd3-medium")["vae"] == PUBLISHED["SD3 VAE"]


def test_clip_tokenizer_has_the_real_format(tmp_path):
    from transformers import CLIPTokenizer, CLIPTokenizerFast

    folder = real_pipelines.clip_tokenizer_files(tmp_path / "tok")
    assert {"vocab.json", "merges.txt", "tokenizer_config.json"} <= {p.name for p in folder.iterdir()}
    for cls in (CLIPTokenizer, CLIPTokenizerFast):
        tok = cls.from_pretrained(folder, local_files_only=True)
        assert len(tok) == 49408 and tok.model_max_length == 77
        ids = tok("A red circle!").input_ids
        assert ids[0] == 49406 and ids[-1] == 49407  # CLIP's start / end ids
        assert len(ids) == 2 + 4  # "a", "red", "circle" one token each, "!" one byte symbol


def test_factory_refuses_up_front_when_memory_is_short(tmp_path, monkeypatch):
    monkeypatch.setattr("fewstep.core.resources.available_memory", lambda: 2 * 1024**3)
    monkeypatch.setattr("fewstep.core.resources.free_disk", lambda path: 1024**4)  # the disk check passes anywhere
    with pytest.raises(ResourceError, match=r"building sdxl's largest component needs about .* GiB of memory"):
        real_pipelines.save_real_pipeline("sdxl", tmp_path / "sdxl")
    assert not (tmp_path / "sdxl").exists()  # nothing written


def test_factory_refuses_up_front_when_disk_is_short(tmp_path, monkeypatch):
    monkeypatch.setattr("fewstep.core.resources.free_disk", lambda path: 1024**3)
    with pytest.raises(ResourceError, match=r"the sdxl pipeline needs about .* GiB of disk at .*free some space"):
        real_pipelines.save_real_pipeline("sdxl", tmp_path / "sdxl")
    assert not (tmp_path / "sdxl").exists()


@pytest.mark.slow
def test_a_saved_real_config_loads_as_a_teacher(tmp_path):
    """BK-SDM-Tiny (323M-parameter UNet, CLIP-L, SD VAE): the diffusers loader reads it, fewstep sees an SD
    teacher at 512x512 with 64x64x4 latents and CLIP's 77 tokens."""
    root = real_pipelines.save_real_pipeline("bk-sdm-tiny", tmp_path / "bk")
    pipe = load_pipeline(root)
    assert type(pipe).__name__ == "StableDiffusionPipeline"
    assert sum(p.numel() for p in pipe.unet.parameters()) == PIPELINES["bk-sdm-tiny"]["params"]
    spec = pipeline_spec(root)
    assert spec["kind"] == "unet-vp" and spec["image"] == {"channels": 4, "height": 64, "width": 64,
                                                           "space": "latent"}  # fmt: skip
    assert spec["latent"]["decoded"]["height"] == 512 and spec["text_encoder"]["max_tokens"] == 77
    torch.manual_seed(0)  # the factory's seed for the denoiser: the same seed builds the same weights again
    _, again = real_pipelines._denoiser(real_pipelines.config("bk-sdm-tiny"))
    saved = pipe.unet.state_dict()
    assert all(torch.equal(t, saved[k]) for k, t in again.state_dict().items())


@pytest.fixture
def damaged(tmp_path):
    return tiny_sd_pipeline(tmp_path / "sd")


def test_a_truncated_weights_file_is_named(damaged):
    weights = damaged / "unet" / "diffusion_pytorch_model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(PipelineDirError, match=r"diffusion_pytorch_model\.safetensors is truncated") as e:
        check_pipeline_dir(damaged)
    assert "\n" not in str(e.value)


def test_a_config_that_does_not_match_its_weights_is_one_line(damaged):
    config = damaged / "unet" / "config.json"
    data = json.loads(config.read_text())
    data["in_channels"] = 8  # the weights' conv_in has 4
    config.write_text(json.dumps(data))
    with pytest.raises(PipelineDirError, match="cannot be loaded by diffusers") as e:
        load_pipeline(damaged)
    assert "\n" not in str(e.value) and len(str(e.value)) < 800


def test_a_missing_component_is_named(damaged):
    shutil.rmtree(damaged / "vae")
    with pytest.raises(PipelineDirError, match=r"sd/vae has no weights"):
        check_pipeline_dir(damaged)


def test_an_unknown_config_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="unknown real config 'sd9'; choose one of sd15, sd21"):
        real_pipelines.estimate("sd9")


def test_taesd_size_decoder_has_taesds_decoder_size(tmp_path):
    from diffusers import AutoencoderTiny

    from fewstep.models.tiny_decoder import TinyDecoder, load_tiny_decoder

    with torch.device("meta"):  # at SD's 8x downsampling the layout is TAESD's decoder, parameter for parameter
        ours = sum(p.numel() for p in TinyDecoder(4, 8, channels=64, blocks=3).parameters())
        assert ours == sum(p.numel() for p in AutoencoderTiny().decoder.parameters()) == 1_222_531
    root = tiny_sd_pipeline(tmp_path / "sd")
    path = real_pipelines.save_taesd_size_decoder(root, tmp_path / "decoder.safetensors")
    decoder, spec = load_tiny_decoder(path)
    assert spec["decoder"]["channels"] == 64 and spec["decoder"]["blocks"] == 3
    assert sum(p.numel() for p in decoder.parameters()) == spec["params"]
