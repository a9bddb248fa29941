"""Teachers from local diffusers pipeline directories (tiny random SD- and SD3-style pipelines built here)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from fewstep.core.errors import PromptTooLongError
from fewstep.models.diffusers_dir import T5_TOKENS, PipelineDirError, check_pipeline_dir, load_pipeline
from fewstep.models.loading import load_model
from fewstep.models.pipeline import TorchPipeline
from fewstep.models.samplers import euler, seeded_noise
from fewstep.models.text_encoders import load_text_encoder
from fewstep.models.vp_adapter import flow_time_of
from fewstep.testing.tiny_pipelines import IMAGE_SIZE, tiny_sd3_pipeline, tiny_sd_pipeline, tiny_sdxl_pipeline
from tests.distill_fixtures import distill_tiny

PROMPT = "a red circle left of a small blue square"


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipelines")
    return {
        "epsilon": tiny_sd_pipeline(root / "sd-eps", "epsilon"),
        "v_prediction": tiny_sd_pipeline(root / "sd-v", "v_prediction", seed=1),
        "sd3": tiny_sd3_pipeline(root / "sd3"),
        "sd3-t5": tiny_sd3_pipeline(root / "sd3-t5", seed=2, t5=True),
        "sdxl": tiny_sdxl_pipeline(root / "sdxl"),
    }


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sdxl"])
def test_sd_pipeline_teacher_equals_diffusers_ddim(pipelines, prediction_type):
    """Euler in flow time on the loaded eps/v UNet == diffusers' own StableDiffusionPipeline (DDIM, CFG); SDXL: the
    pooled text and size/crop ids reach the UNet as StableDiffusionXLPipeline passes them."""
    from diffusers import DDIMScheduler

    path = pipelines[prediction_type]
    model, spec = load_model(path)
    assert spec["kind"] == "unet-vp" and spec["vp"]["prediction_type"] == prediction_type.replace("sdxl", "epsilon")
    assert spec["image"]["channels"] == 4 and spec["latent"]["decoded"]["height"] == IMAGE_SIZE
    encoder = load_text_encoder(spec["text_encoder"])
    pipe = load_pipeline(path)
    sched = DDIMScheduler.from_config(pipe.scheduler.config)
    sched.set_timesteps(5)
    z = seeded_noise([3], tuple(spec["image"][k] for k in ("channels", "height", "width")))
    ref = pipe(PROMPT, latents=z.clone(), num_inference_steps=5, guidance_scale=4.0, output_type="latent").images
    abar = sched.alphas_cumprod
    final = torch.zeros(1, dtype=torch.long)  # set_alpha_to_one=False: DDIM ends at abar[0]
    times = torch.cat([flow_time_of(abar, sched.timesteps), flow_time_of(abar, final)])
    start, end = abar[sched.timesteps[0]], abar[0]
    x = z / (start.sqrt() + (1 - start).sqrt())
    x = euler(model, x, times, encoder.encode([PROMPT]), 4.0, encoder.null(1))
    torch.testing.assert_close(x * (end.sqrt() + (1 - end).sqrt()), ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", ["sd3", "sd3-t5"])
def test_sd3_pipeline_teacher_equals_diffusers(pipelines, name):
    """Same seed, same shifted schedule: the flow transformer teacher's images == StableDiffusion3Pipeline's (with
    T5 as the third text encoder, and without it: zeros in its place)."""
    teacher = TorchPipeline.from_checkpoint(pipelines[name])
    assert teacher.spec["kind"] == "transformer-flow" and teacher.spec["sampler"]["shift"] == 3.0
    t5_states = teacher.encoder.encode([PROMPT]).text[:, -T5_TOKENS:]
    assert (t5_states.abs().max() > 0) == (name == "sd3-t5")  # T5's states, or the zeros SD3 puts there
    ours = teacher.generate([PROMPT], [5], steps=4, guidance=5.0)
    assert ours.shape == (1, IMAGE_SIZE, IMAGE_SIZE, 3)
    pipe = load_pipeline(pipelines[name])
    sigmas = list(np.linspace(1.0, 0.0, 5)[:-1])  # diffusers applies the same shift to them
    ref = pipe(
        PROMPT,
        latents=seeded_noise([5], teacher.shape),
        sigmas=sigmas,
        guidance_scale=5.0,
        output_type="np",
        height=IMAGE_SIZE,
        width=IMAGE_SIZE,
    ).images
    assert np.abs(ours.astype(int) - np.round(ref * 255).astype(int)).max() <= 1


def test_pipeline_prompts_cached_and_long_prompts_refused(pipelines):
    encoder = load_text_encoder(load_model(pipelines["sd3"])[1]["text_encoder"])
    a = encoder.encode(["a red circle", "a blue square"])
    assert a.pooled is not None and a.text.shape[0] == 2
    torch.testing.assert_close(encoder.encode(["a blue square"]).text, a.text[1:])
    with pytest.raises(PromptTooLongError, match="at most"):
        encoder.encode(["zq " * 100])


def test_bad_pipeline_directories_name_the_problem(pipelines, tmp_path):
    with pytest.raises(PipelineDirError, match="does not exist"):
        check_pipeline_dir(tmp_path / "nowhere")
    with pytest.raises(PipelineDirError, match=r"model_index\.json"):
        check_pipeline_dir(tmp_path)
    broken = tmp_path / "sd"
    shutil.copytree(pipelines["epsilon"], broken)
    (broken / "unet" / "diffusion_pytorch_model.safetensors").rename(broken / "unet" / "diffusion_pytorch_model.bin")
    with pytest.raises(PipelineDirError, match="pickle"):
        check_pipeline_dir(broken)
    (broken / "unet" / "diffusion_pytorch_model.bin").unlink()
    with pytest.raises(PipelineDirError, match="unet has no weights"):
        load_model(broken)
    shutil.rmtree(broken / "unet")
    shutil.copytree(pipelines["epsilon"] / "unet", broken / "unet")
    (broken / "scheduler" / "scheduler_config.json").unlink()
    with pytest.raises(PipelineDirError, match=r"scheduler_config\.json is missing"):
        check_pipeline_dir(broken)
    index = json.loads((pipelines["epsilon"] / "model_index.json").read_text())
    (broken / "model_index.json").write_text(json.dumps({**index, "_class_name": "KandinskyPipeline"}))
    with pytest.raises(PipelineDirError, match="KandinskyPipeline"):
        check_pipeline_dir(broken)


OVERRIDES = {  # a few steps of each method on a tiny pipeline teacher
    "progressive": {"start_steps": 4, "student_steps": 2},
    "guidance": {"student_steps": 2},
    "reflow": {"student_steps": 1},
    "instaflow": {"student_steps": 1},
    "slimflow": {"student_steps": 1, "stage2_steps": 2},
    "consistency": {"student_steps": 2, "grid": 8, "skip": 2},
    "dmd": {},
    "meanflow": {"student_steps": 2},
    "shortcut": {"student_steps": 2, "max_steps": 8},
}
PAIR_METHODS = ("reflow", "instaflow", "slimflow", "dmd")


@pytest.mark.parametrize(
    "teacher,methods",
    [
        ("epsilon", ("progressive", "guidance")),
        ("sd3", ("progressive", "reflow")),
        ("epsilon", ("slimflow", "instaflow", "consistency", "dmd")),
        ("v_prediction", ("meanflow", "shortcut")),  # the step size through a VP UNet's time_cond_proj
    ],
)
@pytest.mark.slow
def test_latent_distillation(pipelines, tmp_path, teacher, methods):
    """Students of a pipeline teacher train in latents with every method (pairs in latents too), keep the teacher's
    kind and VAE, and decode to images."""
    from fewstep.compress.pairs import PairsConfig, build_pairs

    source = pipelines[teacher]
    teacher_model, teacher_spec = load_model(source)
    for method in methods:
        extra = dict(OVERRIDES[method])
        if method in PAIR_METHODS:
            pairs = build_pairs(
                PairsConfig(teacher=str(source), n=8, steps=2, solver="euler", shard_size=8, batch_size=8),
                tmp_path / "pairs",
                progress=False,
            )
            extra["pairs"] = str(pairs)
        path = distill_tiny(source, tmp_path / method, method, **extra)
        student = TorchPipeline.from_checkpoint(path)
        spec = student.spec
        assert spec["kind"] == teacher_spec["kind"] and spec["latent"] == teacher_spec["latent"]
        assert spec["training"]["teacher_sha256"] and spec["role"] == "student"
        assert student.codec is not None
        images = student.generate(["a red circle", "a blue square"], [0, 1])
        assert images.shape == (2, IMAGE_SIZE, IMAGE_SIZE, 3) and images.std() > 0
        changed = [
            k
            for k, v in student.model.state_dict().items()
            if k in teacher_model.state_dict() and not torch.equal(v, teacher_model.state_dict()[k])
        ]
        assert changed, f"{method}: the student did not move away from the teacher"
        assert (tmp_path / method / "config.yaml").is_file()


def test_latent_teacher_refuses_pixel_presets(pipelines, tmp_path):
    with pytest.raises(ValueError, match="32x32 pixel design"):
        from fewstep.compress.distill import distill, make_config

        distill(make_config("guidance", teacher=str(pipelines["epsilon"]), student="student-s"), tmp_path)
    with pytest.raises(ValueError, match="transformers have none"):
        distill_tiny(pipelines["sd3"], tmp_path / "g", "guidance")
