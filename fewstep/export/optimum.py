"""A latent student as an ONNX pipeline directory that optimum's `ORTDiffusionPipeline.from_pretrained(dir)` runs.

The layout is the one optimum-onnx's own exporter writes (`model_index.json`, `scheduler/`, `tokenizer*/`,
`text_encoder*/`, `unet/` or `transformer/`, `vae_decoder/`: one `model.onnx` + `config.json` each, with diffusers'
input and output names), so optimum users take a fewstep student without fewstep. The text encoders, tokenizers and
VAE are the teacher pipeline's; the denoiser is the student under the flow contract, so it predicts a velocity and
the scheduler is a flow scheduler configured to reproduce the student's own Euler schedule t_i = 1 - i/k exactly:

- SD3 (transformer): `FlowMatchEulerDiscreteScheduler`, shift 1, `shift_terminal` 1/k; timestep = 1000 t (SD3's).
- SD / SDXL (UNet): their pipelines call `init_noise_sigma` and `scale_model_input`, which FlowMatchEuler lacks, so
  first-order `DPMSolverMultistepScheduler` on flow predictions (its update is Euler's, exactly) with flow sigmas;
  `num_train_timesteps` = 10^6 puts its first sigma at 1 - 10^-6, and the graph reads t = timestep / 10^6.

Call the pipeline with `num_inference_steps=k` and `guidance_scale=1` (students with guidance baked in), as
`fewstep.json` in the directory says.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fewstep import __version__
from fewstep.core.sampling_rules import uniform_times
from fewstep.export.targets.onnx import export_graph
from fewstep.models.contract import Cond
from fewstep.models.diffusers_dir import load_pipeline
from fewstep.models.loading import load_model, model_sha256, resolve_checkpoint
from fewstep.models.text_encoders import load_text_encoder

FAMILIES = {"StableDiffusionPipeline": "sd", "StableDiffusionXLPipeline": "sdxl", "StableDiffusion3Pipeline": "sd3"}
UNET_TIMESTEPS = 1_000_000  # the UNet families' scheduler scale: first sigma 1 - 1e-6, timesteps exact in float32
MARKER = "fewstep.json"


class OptimumExportError(ValueError):
    """A model this export cannot express for optimum; the message says why and what to use instead."""


class TextEncoderGraph(nn.Module):
    """A CLIP / CLIP-with-projection / T5 encoder with optimum's output names (every hidden state exposed, as
    SDXL and SD3 read the penultimate one)."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder.eval()
        kind = type(encoder).__name__
        if kind.startswith("T5"):
            self.head = ["last_hidden_state"]
        elif kind == "CLIPTextModelWithProjection":
            self.head = ["text_embeds", "last_hidden_state"]
        elif kind == "CLIPTextModel":
            self.head = ["last_hidden_state", "pooler_output"]
        else:
            raise OptimumExportError(f"text encoder {kind} is not one optimum's pipelines read (CLIP, T5)")
        self.t5 = kind.startswith("T5")
        layers = int(encoder.config.num_hidden_layers if not self.t5 else encoder.config.num_layers)
        self.output_names = self.head + ([] if self.t5 else [f"hidden_states.{i}" for i in range(layers + 1)])

    def forward(self, input_ids: torch.Tensor):
        if self.t5:
            return self.encoder(input_ids)[0]
        out = self.encoder(input_ids, output_hidden_states=True)
        return (*[getattr(out, name) for name in self.head], *out.hidden_states)


class VaeDecoderGraph(nn.Module):
    """`sample = vae.decode(latent_sample)`: the pipeline undoes the latent scale and shift itself."""

    def __init__(self, vae: nn.Module):
        super().__init__()
        self.vae = vae.eval()

    def forward(self, latent_sample: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latent_sample).sample


class FlowDenoiserGraph(nn.Module):
    """The student's velocity with diffusers' denoiser signature; t = timestep / `timestep_scale`.

    SD / SDXL pass a scalar timestep (`sample, timestep, encoder_hidden_states[, text_embeds, time_ids]`),
    SD3 one per sample (`hidden_states, timestep, encoder_hidden_states, pooled_projections`)."""

    def __init__(self, model: nn.Module, family: str, timestep_scale: float):
        super().__init__()
        self.model, self.family, self.timestep_scale = model.eval(), family, timestep_scale
        first = "hidden_states" if family == "sd3" else "sample"
        extra = {"sd": [], "sdxl": ["text_embeds", "time_ids"], "sd3": ["pooled_projections"]}[family]
        self.input_names = [first, "timestep", "encoder_hidden_states", *extra]
        self.output_names = ["out_hidden_states" if family == "sd3" else "out_sample"]

    def forward(self, x: torch.Tensor, timestep: torch.Tensor, text: torch.Tensor,
                pooled: torch.Tensor | None = None, time_ids: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
        t = (timestep.reshape(-1).to(x.dtype) / self.timestep_scale).expand(x.shape[0])
        mask = torch.ones(text.shape[:2], dtype=x.dtype)
        return self.model(x, t, Cond(text, mask, pooled, None, time_ids))


def check_exportable(spec: dict) -> str:
    """-> the pipeline family; refuses what a diffusers pipeline + scheduler config cannot reproduce."""

    te = spec.get("text_encoder", {})
    if "latent" not in spec or te.get("kind") != "diffusers-pipeline":
        raise OptimumExportError(
            "optimum pipelines are latent diffusers pipelines: export a student of a diffusers pipeline teacher "
            "(fewstep distill ... --teacher PIPELINE_DIR); built-in pixel models go to a bundle with `fewstep export`"
        )
    family = FAMILIES.get(te.get("pipeline_class", ""))
    if family is None:
        known = ", ".join(FAMILIES)
        raise OptimumExportError(f"{te.get('pipeline_class')!r} has no optimum pipeline fewstep writes ({known})")
    sampler = spec["sampler"]
    if sampler.get("rule") != "euler":
        why = ("reads its step size as an input, which no diffusers pipeline feeds" if sampler.get("rule") == "interval"
               else "re-noises between steps, which no diffusers scheduler does in flow time")  # fmt: skip
        raise OptimumExportError(
            f"a {sampler.get('rule')!r} student {why}; export it to a bundle (`fewstep export`) and run it with "
            "fewstep's runtime"
        )
    mode = sampler.get("guidance", {}).get("mode", "cfg")
    if mode == "embedded":
        raise OptimumExportError(
            "this student reads its guidance scale as an input; diffusers' pipelines feed LCM's embedding of w - 1 "
            "there, not the embedding of w it learned. Export it to a bundle (`fewstep export`) instead"
        )
    times = np.asarray(sampler.get("timesteps", uniform_times(int(sampler.get("default_steps", 1)))), np.float64)
    steps = len(times) - 1
    if spec.get("role") != "student" or not np.allclose(times, uniform_times(steps), atol=1e-6):
        raise OptimumExportError(
            f"the schedule {times.round(4).tolist()} is not a few-step Euler student's uniform one (t_i = 1 - i/k); "
            "only distilled students export to optimum (teachers run in diffusers as they are)"
        )
    return family


def scheduler_for(family: str, steps: int):
    """The diffusers scheduler whose `set_timesteps(steps)` gives sigmas 1, 1 - 1/k, ..., 1/k, 0 (Euler steps)."""
    from diffusers import DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler  # train extra

    if family == "sd3":
        return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0, shift_terminal=1.0 / steps), 1000.0
    sched = DPMSolverMultistepScheduler(
        num_train_timesteps=UNET_TIMESTEPS,
        prediction_type="flow_prediction",
        use_flow_sigmas=True,
        flow_shift=1.0,
        solver_order=1,
        final_sigmas_type="zero",
        algorithm_type="dpmsolver++",
        steps_offset=1,  # what StableDiffusionPipeline insists on (flow sigmas do not read it)
    )
    return sched, float(UNET_TIMESTEPS)


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=list) + "\n")


def _save_tokenizer(tok, folder: Path) -> None:
    """tokenizer.json + a tokenizer_config.json that transformers 4.x (optimum-onnx's) reads as a fast tokenizer."""
    tok.save_pretrained(folder)
    cfg = json.loads((folder / "tokenizer_config.json").read_text())
    cfg = {k: v for k, v in cfg.items() if k not in ("extra_special_tokens", "backend", "extra_ids")}
    cfg["tokenizer_class"] = _fast_name(tok)
    _write_json(folder / "tokenizer_config.json", cfg)


def _fast_name(tok) -> str:
    name = type(tok).__name__
    return name if name.endswith("Fast") else name + "Fast"


class OptimumExport:
    """`OptimumExport(student, out).run()` -> the `fewstep.json` record of the written directory."""

    def __init__(self, model: str, out: str | Path, force: bool = False, log: Callable[[str], None] = print):
        self.model_ref, self.out, self.force, self.log = model, Path(out), force, log

    def run(self) -> dict:

        path = resolve_checkpoint(self.model_ref)
        model, spec = load_model(path)
        family = check_exportable(spec)
        self._check_out()
        steps = len(spec["sampler"]["timesteps"]) - 1
        pipe = load_pipeline(spec["text_encoder"]["path"])
        stage = self.out.with_name(f".{self.out.name}.partial")
        shutil.rmtree(stage, ignore_errors=True)
        stage.mkdir(parents=True)
        index = {"_class_name": type(pipe).__name__, "_diffusers_version": "0.39.0"}
        for name in ("text_encoder", "text_encoder_2", "text_encoder_3"):
            encoder = getattr(pipe, name, None)
            index[name] = [None, None] if encoder is None else ["transformers", type(encoder).__name__]
            tok_name = name.replace("text_encoder", "tokenizer")
            if encoder is not None:
                self._text_encoder(encoder, getattr(pipe, tok_name), stage, name, spec)
                _save_tokenizer(getattr(pipe, tok_name), stage / tok_name)
            index[tok_name] = [None, None] if encoder is None else ["transformers", _fast_name(getattr(pipe, tok_name))]
        if family == "sd":
            index.pop("text_encoder_2"), index.pop("tokenizer_2"), index.pop("text_encoder_3"), index.pop("tokenizer_3")
            index.update(safety_checker=[None, None], feature_extractor=[None, None], image_encoder=[None, None],
                         requires_safety_checker=False)  # fmt: skip
        elif family == "sdxl":
            index.pop("text_encoder_3"), index.pop("tokenizer_3")
            index["force_zeros_for_empty_prompt"] = bool(pipe.config.get("force_zeros_for_empty_prompt", True))
        self._vae_decoder(pipe.vae, stage)
        denoiser = "transformer" if family == "sd3" else "unet"
        index[denoiser] = ["diffusers", "SD3Transformer2DModel" if family == "sd3" else "UNet2DConditionModel"]
        index["vae"] = ["diffusers", "AutoencoderKL"]
        sched, scale = scheduler_for(family, steps)
        index["scheduler"] = ["diffusers", type(sched).__name__]
        sched.save_config(stage / "scheduler")
        self._denoiser(model, spec, family, scale, stage / denoiser, pipe)
        _write_json(stage / "model_index.json", index)
        guidance = spec["sampler"].get("guidance", {})
        scale = 1.0 if guidance.get("mode") == "none" else float(guidance.get("default_scale", 1.0))
        call = {"num_inference_steps": steps, "guidance_scale": scale}
        if index.get("text_encoder_3", [None])[0]:
            call["max_sequence_length"] = int(spec["text_encoder"].get("t5_tokens", 256))  # the T5 graph's length
        record = {
            "format": "fewstep-optimum-pipeline",
            "fewstep": __version__,
            "student": str(path),
            "student_sha256": model_sha256(path),
            "pipeline_class": type(pipe).__name__,
            "steps": steps,
            "sigmas": [round(1 - i / steps, 6) for i in range(steps + 1)],
            "call": call,
            "load": "optimum.onnxruntime.ORTDiffusionPipeline.from_pretrained(DIR)",
        }
        _write_json(stage / MARKER, record)
        if self.out.exists():
            shutil.rmtree(self.out)
        os.replace(stage, self.out)
        self.log(f"optimum pipeline directory written to {self.out} ({type(pipe).__name__}, {steps} steps)")
        return record

    def _check_out(self) -> None:
        if self.out.exists() and any(self.out.iterdir()):
            if not (self.out / MARKER).is_file() and not self.force:
                raise FileExistsError(
                    f"{self.out} exists and is not a fewstep optimum export; choose another --out (or --force to "
                    "replace it)"
                )

    def _text_encoder(self, encoder: nn.Module, tok, stage: Path, name: str, spec: dict) -> None:
        graph = TextEncoderGraph(encoder)
        length = int(spec["text_encoder"].get("t5_tokens", 256)) if graph.t5 else int(tok.model_max_length)
        ids = tok(["a", "b"], padding="max_length", max_length=length, truncation=True, return_tensors="pt").input_ids
        (stage / name).mkdir()
        export_graph(graph, (ids,), stage / name / "model.onnx", ["input_ids"], graph.output_names, max_batch=1024)
        _write_json(stage / name / "config.json", encoder.config.to_dict())
        self.log(f"  {name}: {type(encoder).__name__} ({length} tokens)")

    def _vae_decoder(self, vae: nn.Module, stage: Path) -> None:
        cfg = vae.config
        side = int(cfg.sample_size) // 2 ** (len(cfg.block_out_channels) - 1)
        latents = torch.randn(2, int(cfg.latent_channels), side, side)
        (stage / "vae_decoder").mkdir()
        path = stage / "vae_decoder" / "model.onnx"
        export_graph(VaeDecoderGraph(vae), (latents,), path, ["latent_sample"], ["sample"], max_batch=1024)
        _write_json(stage / "vae_decoder" / "config.json", dict(cfg))
        self.log("  vae_decoder: AutoencoderKL decoder")

    def _denoiser(self, model: nn.Module, spec: dict, family: str, scale: float, folder: Path, pipe) -> None:

        graph = FlowDenoiserGraph(model, family, scale)
        cond = load_text_encoder(spec["text_encoder"]).encode(["a", "b"])
        img = spec["image"]
        x = torch.randn(2, img["channels"], img["height"], img["width"])
        timestep = torch.full((2,), 0.5 * scale) if family == "sd3" else torch.tensor(0.5 * scale)
        args = [x, timestep, cond.text]
        if family == "sdxl":
            args += [cond.pooled, cond.extra_ids]
        elif family == "sd3":
            args.append(cond.pooled)
        folder.mkdir()
        export_graph(graph, tuple(args), folder / "model.onnx", graph.input_names, graph.output_names, max_batch=1024)
        _write_json(folder / "config.json", spec["transformer" if family == "sd3" else "unet"])
        self.log(f"  {folder.name}: the student ({sum(p.numel() for p in model.parameters()):,} parameters)")
