"""fewstep export-optimum: latent students as ONNX pipeline directories for optimum's ORTDiffusionPipeline.

In fewstep's environment: the written scheduler config gives the student's schedule, and a diffusers-style loop
over the written graphs gives the torch student's images. In optimum-onnx's own environment (.venv-optimum, built
by scripts/install_optimum_env.sh; the test skips where it cannot be built): `ORTDiffusionPipeline.from_pretrained`
runs the directory, text encoders and tokenizers included, and gives the torch student's images.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from fewstep.cli import main
from fewstep.export.optimum import OptimumExport, OptimumExportError, check_exportable
from fewstep.models.pipeline import TorchPipeline
from fewstep.models.samplers import seeded_noise
from fewstep.testing.tiny_pipelines import IMAGE_SIZE, tiny_sd3_pipeline, tiny_sd_pipeline, tiny_sdxl_pipeline
from tests.distill_fixtures import distill_tiny

ort = pytest.importorskip("onnxruntime")
PROMPTS = ["a red circle", "a blue square on a white background"]
SEEDS = [7, 7]  # one seed: the two images differ only by their prompts
BUILDERS = {
    "sd": lambda p: tiny_sd_pipeline(p, "epsilon"),
    "sdxl": tiny_sdxl_pipeline,
    "sd3-t5": lambda p: tiny_sd3_pipeline(p, t5=True),
}
INPUTS = {  # diffusers' names, as optimum-onnx's own exporter writes them
    "sd": ("unet", ["sample", "timestep", "encoder_hidden_states"], "out_sample"),
    "sdxl": ("unet", ["sample", "timestep", "encoder_hidden_states", "text_embeds", "time_ids"], "out_sample"),
    "sd3-t5": ("transformer", ["hidden_states", "timestep", "encoder_hidden_states", "pooled_projections"],
               "out_hidden_states"),
}  # fmt: skip
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", params=list(BUILDERS))
def exported(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(request.param)
    pipe = BUILDERS[request.param](root / "pipe")
    student = distill_tiny(pipe, root / "run", "progressive", start_steps=4, student_steps=2, dataset_size=16,
                           steps=2, batch_size=2, sample_every=100)  # fmt: skip
    out = root / "optimum"
    assert main(["export-optimum", str(student), "--out", str(out), "--quiet"]) == 0
    torch_student = TorchPipeline.from_checkpoint(student)
    ref = torch_student.generate(PROMPTS, SEEDS)
    assert np.abs(ref[0].astype(int) - ref[1].astype(int)).max() > 0  # the prompt reaches the student
    return SimpleNamespace(family=request.param, out=out, student=torch_student, ref=ref, root=root)


@pytest.mark.slow
def test_layout_is_optimums(exported):
    denoiser, names, output = INPUTS[exported.family]
    index = json.loads((exported.out / "model_index.json").read_text())
    record = json.loads((exported.out / "fewstep.json").read_text())
    assert record["call"]["num_inference_steps"] == 2 and record["call"]["guidance_scale"] == 1.0
    assert record["sigmas"] == [1.0, 0.5, 0.0]
    for part in [denoiser, "vae_decoder", "scheduler"] + [k for k, v in index.items() if k.startswith("text_en")
                                                         and v[0]]:  # fmt: skip
        assert (exported.out / part / ("scheduler_config.json" if part == "scheduler" else "config.json")).is_file()
    session = ort.InferenceSession(str(exported.out / denoiser / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == names and session.get_outputs()[0].name == output
    decoder = ort.InferenceSession(str(exported.out / "vae_decoder" / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in decoder.get_inputs()] == ["latent_sample"]
    assert (index.get("text_encoder_3") or [None])[0] == ("transformers" if exported.family == "sd3-t5" else None)
    assert not list(exported.root.glob(".optimum.partial"))


@pytest.mark.slow
def test_written_scheduler_and_graphs_reproduce_the_student(exported):
    """The directory's scheduler (diffusers, from its config) and graphs, stepped the way diffusers' pipelines step
    them, give the torch student's images: the schedule is the student's to 1e-6, every update Euler's."""
    import diffusers

    denoiser, names, _ = INPUTS[exported.family]
    cfg = json.loads((exported.out / "scheduler" / "scheduler_config.json").read_text())
    scheduler = getattr(diffusers, cfg["_class_name"]).from_pretrained(exported.out / "scheduler")
    scheduler.set_timesteps(2)
    np.testing.assert_allclose(scheduler.sigmas.numpy(), [1.0, 0.5, 0.0], atol=1e-6)
    session = ort.InferenceSession(str(exported.out / denoiser / "model.onnx"), providers=["CPUExecutionProvider"])
    decoder = ort.InferenceSession(str(exported.out / "vae_decoder" / "model.onnx"), providers=["CPUExecutionProvider"])
    cond = exported.student.encoder.encode(PROMPTS)
    x = seeded_noise(SEEDS, exported.student.shape) * getattr(scheduler, "init_noise_sigma", 1.0)  # SD3: none
    for t in scheduler.timesteps:
        step = np.full((2,), float(t), np.float32) if exported.family == "sd3-t5" else np.array(float(t), np.float32)
        feed = {names[0]: x.numpy(), "timestep": step, "encoder_hidden_states": cond.text.numpy()}
        if exported.family == "sdxl":
            feed.update(text_embeds=cond.pooled.numpy(), time_ids=cond.extra_ids.numpy())
        elif exported.family == "sd3-t5":
            feed["pooled_projections"] = cond.pooled.numpy()
        v = torch.from_numpy(session.run(None, feed)[0])
        x = scheduler.step(v, t, x).prev_sample
    latent = json.loads((exported.out / "vae_decoder" / "config.json").read_text())
    z = x / latent["scaling_factor"] + (latent.get("shift_factor") or 0.0)
    image = decoder.run(None, {"latent_sample": z.numpy().astype(np.float32)})[0]
    got = np.round((np.clip(image, -1, 1) / 2 + 0.5) * 255).transpose(0, 2, 3, 1).astype(int)
    assert got.shape == (2, IMAGE_SIZE, IMAGE_SIZE, 3)
    assert np.abs(got - exported.ref.astype(int)).max() <= 1


def _optimum_python() -> Path | None:
    """An interpreter that has optimum-onnx: FEWSTEP_OPTIMUM_PYTHON, else a built .venv-optimum, else None."""
    given = os.environ.get("FEWSTEP_OPTIMUM_PYTHON")
    python = Path(given) if given else REPO / ".venv-optimum" / "bin" / "python"
    if not python.is_file() or not (given or (REPO / ".venv-optimum" / ".installed").is_file()):
        return None
    return python


NO_OPTIMUM = ("no optimum-onnx environment (.venv-optimum): `FEWSTEP_INSTALL_OPTIMUM=1 make test` or "
              "`CI=1 bash scripts/install_optimum_env.sh` builds it (it needs PyPI)")  # fmt: skip


PROBE = """
import json, sys
import numpy as np, torch
from optimum.onnxruntime import ORTDiffusionPipeline
out, noise, result = sys.argv[1:4]
record = json.loads(open(out + "/fewstep.json").read())
pipe = ORTDiffusionPipeline.from_pretrained(out)
pipe.set_progress_bar_config(disable=True)
latents = torch.from_numpy(np.load(noise))
images = pipe(json.loads(sys.argv[4]), latents=latents, output_type="np", **record["call"]).images
np.save(result, np.round(images * 255).astype(np.uint8))
print(type(pipe).__name__, type(pipe.scheduler).__name__, pipe.scheduler.sigmas.tolist())
"""


@pytest.mark.slow
@pytest.mark.skipif(_optimum_python() is None, reason=NO_OPTIMUM)  # decided before the exports are built
def test_optimum_ort_diffusion_pipeline_runs_the_directory(exported):
    """optimum-onnx 0.1.0 (transformers 4.57, diffusers 0.39) loads the directory with no fewstep installed, encodes
    the prompts with the written tokenizers and text encoders, and gives the torch student's images."""
    python = _optimum_python()
    assert python is not None
    noise = exported.root / "noise.npy"
    np.save(noise, seeded_noise(SEEDS, exported.student.shape).numpy())
    result = exported.root / "optimum_images.npy"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    run = subprocess.run([str(python), "-c", PROBE, str(exported.out), str(noise), str(result), json.dumps(PROMPTS)],
                         capture_output=True, text=True, env=env, cwd=exported.root)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    expected = {"sd": "ORTStableDiffusionPipeline", "sdxl": "ORTStableDiffusionXLPipeline",
                "sd3-t5": "ORTStableDiffusion3Pipeline"}[exported.family]  # fmt: skip
    assert run.stdout.split()[0] == expected
    images = np.load(result)
    assert images.shape == exported.ref.shape
    assert np.abs(images.astype(int) - exported.ref.astype(int)).max() <= 1


def test_what_optimum_cannot_reproduce_is_refused(tmp_path):
    """Consistency re-noising, a guidance input, non-uniform schedules, pixel models: a clear error, nothing written."""
    base = {"role": "student", "latent": {}, "sampler": {"rule": "euler", "timesteps": [1.0, 0.5, 0.0],
            "guidance": {"mode": "none"}},
            "text_encoder": {"kind": "diffusers-pipeline", "pipeline_class": "StableDiffusionPipeline"}}  # fmt: skip
    assert check_exportable(base) == "sd"
    cases = {
        "re-noises": {**base, "sampler": {**base["sampler"], "rule": "consistency"}},
        "guidance scale as an input": {**base, "sampler": {**base["sampler"], "guidance": {"mode": "embedded"}}},
        "not a few-step Euler": {**base, "sampler": {**base["sampler"], "timesteps": [1.0, 0.3, 0.0]}},
        "pixel": {**base, "latent": None, "text_encoder": {"kind": "minilm"}},
        "KandinskyPipeline": {**base, "text_encoder": {**base["text_encoder"], "pipeline_class": "KandinskyPipeline"}},
    }
    for words, spec in cases.items():
        spec = {k: v for k, v in spec.items() if v is not None}
        with pytest.raises(OptimumExportError, match=words):
            check_exportable(spec)
    out = tmp_path / "o"
    assert main(["export-optimum", "shapes32-slimflow", "--out", str(out)]) == 2
    assert not out.exists()
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    with pytest.raises(FileExistsError, match="not a fewstep optimum export"):
        OptimumExport("x", out)._check_out()
    assert (out / "mine.txt").read_text() == "keep"
