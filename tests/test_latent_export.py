"""Latent models through the ONNX exporter: the denoiser of each pipeline kind and the VAE decoder, in parity
with torch (tiny random SD- and SD3-style pipelines built here)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fewstep.export.decoder import ImageDecoder, export_decoder_onnx
from fewstep.export.denoiser import denoiser_from_spec
from fewstep.export.targets.onnx import export_fp32
from fewstep.models.diffusers_dir import load_codec
from fewstep.models.loading import load_model
from fewstep.models.text_encoders import load_text_encoder
from fewstep.testing.tiny_pipelines import IMAGE_SIZE, tiny_sd3_pipeline, tiny_sd_pipeline, tiny_sdxl_pipeline
from tests.distill_fixtures import distill_tiny

ort = pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module", params=["sd-eps", "sd-v", "sdxl", "sd3", "sd3-t5"])
def pipeline(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(request.param)
    if request.param.startswith("sd3"):
        return tiny_sd3_pipeline(root / "p", t5=request.param == "sd3-t5")
    if request.param == "sdxl":
        return tiny_sdxl_pipeline(root / "p")
    return tiny_sd_pipeline(root / "p", "epsilon" if request.param == "sd-eps" else "v_prediction")


@pytest.mark.slow
def test_latent_denoiser_onnx_matches_torch(pipeline, tmp_path):
    """VP UNets (the flow adapter's time table and scalings are in the graph) and SD3 transformers export."""
    model, spec = load_model(pipeline)
    denoiser = denoiser_from_spec(model, spec, load_text_encoder(spec["text_encoder"]))
    names = denoiser.input_names
    assert names[:4] == ["x", "t", "text", "text_mask"]
    sdxl = spec.get("unet", {}).get("addition_embed_type") == "text_time"
    assert ("pooled" in names) == (spec["kind"] == "transformer-flow" or sdxl)
    assert ("extra_ids" in names) == sdxl  # SDXL's size/crop ids
    path = export_fp32(denoiser, tmp_path / "denoiser.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        inputs = denoiser.example_inputs(batch, seed=batch)
        with torch.no_grad():
            ref = denoiser(*inputs).numpy()
        got = session.run(None, {n: v.numpy() for n, v in zip(names, inputs, strict=True)})[0]
        np.testing.assert_allclose(got, ref, atol=1e-4 * max(1.0, np.abs(ref).max()), rtol=1e-4)


@pytest.mark.slow
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


@pytest.mark.slow
def test_latent_bundle_runs_torch_free_like_torch(pipeline, tmp_path, monkeypatch):
    """Distil -> export (denoiser, prompt graph over every text encoder, VAE decoder) -> the runtime, with torch,
    diffusers and transformers unimportable, gives the torch student's images; the export freed the torch models
    once the ONNX graph was written, and decoding a few images per call gives the same images."""
    import subprocess
    import sys

    from fewstep.export.bundle import BundleExport
    from fewstep.export.config import ExportConfig
    from fewstep.models.pipeline import TorchPipeline

    student = distill_tiny(pipeline, tmp_path / "run", "progressive", start_steps=4, student_steps=2, dataset_size=16,
                           steps=2, batch_size=2, sample_every=100)  # fmt: skip
    cfg = ExportConfig(to=("onnx",), precision=("fp32",), parity_prompts=4, calibration_prompts=4)
    logs: list[str] = []
    manifest = BundleExport(str(student), tmp_path / "bundle", cfg, log=logs.append).run().to_json()
    assert any(line.startswith("torch models released") for line in logs), logs
    assert manifest["decoder"]["outputs"]["image"]["shape"] == ["B", 3, IMAGE_SIZE, IMAGE_SIZE]
    assert manifest["engines"][0]["gates"]["parity"]["passed"] is True
    stamps = {f.name: f.stat().st_mtime_ns for f in (tmp_path / "bundle").iterdir() if f.is_file()}
    again = BundleExport(str(student), tmp_path / "bundle", cfg, log=lambda m: None).run().to_json()
    assert again["decoder"] == manifest["decoder"] and again["text_encoder"] == manifest["text_encoder"]
    now = {n: (tmp_path / "bundle" / n).stat().st_mtime_ns for n in stamps}
    rewritten = [n for n, t in stamps.items() if n != "manifest.json" and now[n] != t]
    assert not rewritten, f"a re-export of the same student rewrote {rewritten}"
    prompts = ["a red circle", "a blue square on a white background"]
    ref = TorchPipeline.from_checkpoint(student).generate(prompts, [7, 8])
    code = (
        "import sys; [sys.modules.__setitem__(m, None) for m in ('torch', 'diffusers', 'transformers')]\n"
        "import numpy as np\nfrom fewstep.runtime import Generator\n"
        f"g = Generator.from_bundle({str(tmp_path / 'bundle')!r})\n"
        f"np.save({str(tmp_path / 'out.npy')!r}, g.generate({prompts!r}, [7, 8]))\n"
        "assert g.stage_times['decode'] > 0 and 'text_encode' in g.stage_times\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    images = np.load(tmp_path / "out.npy")
    assert images.shape == ref.shape == (2, IMAGE_SIZE, IMAGE_SIZE, 3)
    assert np.abs(images.astype(int) - ref.astype(int)).max() <= 1
    from fewstep.runtime import Generator

    monkeypatch.setattr("fewstep.core.imaging.DECODE_PIXELS", 1)  # one image per decoder call
    one_by_one = Generator.from_bundle(tmp_path / "bundle").generate(prompts, [7, 8])
    np.testing.assert_array_equal(one_by_one, images)


@pytest.mark.slow
def test_prompt_graph_equals_encode_prompt(pipeline, tmp_path):
    """The pipeline's text encoders, combined as diffusers' `encode_prompt` does, from token ids: exact in torch,
    to 1e-5 in ONNX Runtime."""
    from fewstep.export.prompt_graph import PipelinePromptGraph, export_prompt_graph
    from fewstep.models.diffusers_dir import load_pipeline

    _, spec = load_model(pipeline)
    prompts = ["a red circle", "", "a large blue square on a white background"]
    ref = load_text_encoder(spec["text_encoder"]).encode(prompts)
    graph = PipelinePromptGraph(load_pipeline(pipeline))
    ids = graph.token_ids(prompts)
    with torch.no_grad():
        out = graph(*ids)
    out = out if isinstance(out, tuple) else (out,)
    torch.testing.assert_close(out[0], ref.text, atol=0, rtol=0)
    assert (ref.pooled is None) == (len(out) == 1)
    if ref.pooled is not None:
        torch.testing.assert_close(out[1], ref.pooled, atol=0, rtol=0)
    export_prompt_graph(graph, tmp_path / "text_encoder.onnx")
    session = ort.InferenceSession(str(tmp_path / "text_encoder.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {n: x.numpy() for n, x in zip(graph.input_names, ids, strict=True)})
    np.testing.assert_allclose(got[0], ref.text.numpy(), atol=1e-5)


@pytest.mark.slow
def test_sdxl_teacher_bundle_cfg_uses_zeros_for_the_empty_prompt(tmp_path):
    """SDXL forces zeros for the unconditional branch and adds constant size/crop ids: the runtime's CFG
    teacher bundle must do both to match the torch teacher."""
    from fewstep.export.bundle import BundleExport
    from fewstep.export.config import ExportConfig
    from fewstep.models.pipeline import TorchPipeline
    from fewstep.runtime import Generator

    pipe = tiny_sdxl_pipeline(tmp_path / "sdxl")
    cfg = ExportConfig(to=("onnx",), precision=("fp32",), parity_prompts=2, calibration_prompts=2)
    manifest = BundleExport(str(pipe), tmp_path / "bundle", cfg, log=lambda m: None).run().to_json()
    te = manifest["text_encoder"]
    assert te["null_is_zeros"] is True and te["extra_ids"] == [IMAGE_SIZE, IMAGE_SIZE, 0, 0, IMAGE_SIZE, IMAGE_SIZE]
    prompts, seeds = ["a red circle", "a blue square"], [1, 2]
    ref = TorchPipeline.from_checkpoint(pipe).generate(prompts, seeds, steps=3, guidance=5.0)
    got = Generator.from_bundle(tmp_path / "bundle").generate(prompts, seeds, steps=3, guidance=5.0)
    assert np.abs(got.astype(int) - ref.astype(int)).max() <= 1
