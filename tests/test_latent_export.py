"""Latent models through the ONNX exporter: the denoiser of each pipeline kind and the VAE decoder, in parity
with torch (tiny random SD- and SD3-style pipelines built here)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fewstep.export.decoder import ImageDecoder, export_decoder_onnx
from fewstep.export.denoiser import denoiser_from_spec
from fewstep.export.to_onnx import export_fp32
from fewstep.models.diffusers_dir import load_codec
from fewstep.models.loading import load_model
from fewstep.models.text_encoders import load_text_encoder
from fewstep.testing.tiny_pipelines import IMAGE_SIZE, tiny_sd3_pipeline, tiny_sd_pipeline

ort = pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module", params=["sd-eps", "sd-v", "sd3"])
def pipeline(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(request.param)
    if request.param == "sd3":
        return tiny_sd3_pipeline(root / "p")
    return tiny_sd_pipeline(root / "p", "epsilon" if request.param == "sd-eps" else "v_prediction")


def test_latent_denoiser_onnx_matches_torch(pipeline, tmp_path):
    """VP UNets (the flow adapter's time table and scalings are in the graph) and SD3 transformers export."""
    model, spec = load_model(pipeline)
    denoiser = denoiser_from_spec(model, spec, load_text_encoder(spec["text_encoder"]))
    names = denoiser.input_names
    assert names[:4] == ["x", "t", "text", "text_mask"]
    assert ("pooled" in names) == (spec["kind"] == "transformer-flow")
    path = export_fp32(denoiser, tmp_path / "denoiser.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        inputs = denoiser.example_inputs(batch, seed=batch)
        with torch.no_grad():
            ref = denoiser(*inputs).numpy()
        got = session.run(None, {n: v.numpy() for n, v in zip(names, inputs, strict=True)})[0]
        np.testing.assert_allclose(got, ref, atol=1e-4 * max(1.0, np.abs(ref).max()), rtol=1e-4)


def test_vae_decoder_onnx_matches_torch(pipeline, tmp_path):
    _, spec = load_model(pipeline)
    codec = load_codec(spec)
    decoder = ImageDecoder(codec, spec)
    path = export_decoder_onnx(decoder, tmp_path / "decoder.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    latents = torch.randn(2, *decoder.inputs[0].concrete(1)[1:], generator=torch.Generator().manual_seed(0))
    ref = codec.decode(latents).numpy()
    got = session.run(None, {"latents": latents.numpy()})[0]
    assert got.shape == (2, 3, IMAGE_SIZE, IMAGE_SIZE)
    np.testing.assert_allclose(got, ref, atol=1e-5)
