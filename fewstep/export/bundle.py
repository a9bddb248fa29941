"""`fewstep export`: a checkpoint -> an engine bundle (docs/reference/bundle-format.md), engines for each requested
backend and precision, gated, described in `manifest.json`, with the prompt encoder (and image decoders) the
runtime needs.

Idempotent and crash-safe: an engine whose recorded key (source checkpoint, backend, precision, options) and
file sha256 still match is reused untouched; every new file is written under a temporary name and renamed;
`.export-in-progress` marks the bundle incomplete until the new manifest is in place, so an interrupted
export never leaves a bundle that looks complete.

The pieces: `plan` (which engines), `references` (the torch student's calibration inputs and images),
`companions` (prompt encoder, image decoders), `engine_build` (export + gates of one engine), `triton`.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from fewstep import __version__
from fewstep.core.fsio import atomic_write_text
from fewstep.core.manifest import (
    IN_PROGRESS,
    MANIFEST,
    DecoderEntry,
    EngineEntry,
    ImageInfo,
    Manifest,
    ModelInfo,
    RefusedEngine,
    TextEncoderEntry,
    read_manifest,
)
from fewstep.core.resources import return_freed_memory
from fewstep.core.sampling_rules import Sampler
from fewstep.core.verdict_record import read_verdict, verdict_summary
from fewstep.export import onnx_files
from fewstep.export.companions import Companions, files_valid
from fewstep.export.config import ExportConfig
from fewstep.export.context import ExportContext
from fewstep.export.denoiser import denoiser_from_spec
from fewstep.export.engine_build import EngineBuilder, temp_files
from fewstep.export.plan import EngineJob, ExportError, plan_engines
from fewstep.export.references import PARITY_SEED, StudentReference
from fewstep.export.targets.onnx import shared_fp32
from fewstep.export.triton import write_triton_repository
from fewstep.models.diffusers_dir import forget_loaded_pipelines
from fewstep.models.loading import model_sha256, resolve_checkpoint
from fewstep.models.pipeline import TorchPipeline, sampling_times
from fewstep.runtime.registry import get_backend

__all__ = ["PARITY_SEED", "BundleExport", "ExportError"]


def _key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


class BundleExport:
    """One `fewstep export` run into `out`."""

    def __init__(self, checkpoint: str, out: str | Path, cfg: ExportConfig, command: str = "",
                 log: Callable[[str], None] = print, force: bool = False):  # fmt: skip
        self.cfg, self.command, self.log = cfg, command, log
        self.root = Path(out)
        self.source = resolve_checkpoint(checkpoint)
        self.source_sha = model_sha256(self.source)
        self.pipe = TorchPipeline.from_checkpoint(checkpoint)
        forget_loaded_pipelines()  # what the student uses stays; a LoRA student's base network goes
        return_freed_memory()
        self.spec = self.pipe.spec
        self.denoiser = denoiser_from_spec(self.pipe.model, self.spec, self.pipe.encoder)
        self.params = sum(p.numel() for p in self.pipe.model.parameters())
        self.jobs, self.notes = plan_engines(cfg)
        self.old = self._previous_manifest(force)
        self.reference = StudentReference(self.pipe, cfg, log)

    def _previous_manifest(self, force: bool) -> Manifest | None:
        if not (self.root / MANIFEST).is_file():
            return None
        old = read_manifest(self.root, allow_incomplete=True)
        if old.model.source_sha256 != self.source_sha and not force:
            raise ExportError(f"bundle {self.root} was exported from another checkpoint ({old.model.source}); "
                              "choose a new --out or pass --force to replace its engines")  # fmt: skip
        return old if old.model.source_sha256 == self.source_sha else None

    # ---- the run
    def run(self) -> Manifest:
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / IN_PROGRESS).write_text(self.command or "fewstep export")
        ctx = ExportContext(self.denoiser, self.root, max_batch=self._max_batch(),
                            options={"cfg": self.pipe.guidance_mode == "cfg"}, spec=self.spec,
                            calibration_source=lambda: self.reference.calibration()[0])  # fmt: skip
        try:
            companions = Companions(self.root, self.pipe, self.old, self.log)
            text = companions.text_encoder()
            decoders = {"vae": d} if (d := companions.vae_decoder()) else {}
            if tiny := companions.tiny_decoder(self.cfg.tiny_decoder, self.reference):
                decoders["tiny"] = tiny
            builder = EngineBuilder(ctx, self.reference, self.cfg.gates(), self._view(text, decoders), self.log)
            engines, refused = self._kept_engines(), []
            old_engines = {e.id: e for e in self.old.engines} if self.old else {}
            keys = {j.id: self._engine_key(j) for j in self.jobs}
            unchanged = {j.id for j in self.jobs if (old := old_engines.get(j.id)) and old.key == keys[j.id]
                         and files_valid(self.root, old.files)}  # fmt: skip
            pending = [j for j in self.jobs if j.id not in unchanged]
            if pending and all(j.backend.from_onnx for j in pending):
                self._release_torch(ctx, pending)
            for job in self.jobs:
                if job.id in unchanged:
                    self.log(f"{job.id}: unchanged, kept")
                    engines[job.id] = old_engines[job.id]
                    continue
                built = builder.build(job, keys[job.id])
                return_freed_memory()  # the converted model and the gate's engines: back to the kernel before the next
                if isinstance(built, RefusedEngine):
                    refused.append(built)
                    engines.pop(job.id, None)
                else:
                    engines[job.id] = built
                # the engines so far, under the in-progress marker: a killed export resumes from them
                partial = self._manifest(text, decoders, list(engines.values()), refused)
                atomic_write_text(self.root / MANIFEST, partial.dumps())
            manifest = self._manifest(text, decoders, list(engines.values()), refused)
            atomic_write_text(self.root / MANIFEST, manifest.dumps())
        finally:
            if ctx.onnx_fp32 is not None:
                onnx_files.remove(ctx.onnx_fp32)
            for tmp in temp_files(self.root):
                shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)
        (self.root / IN_PROGRESS).unlink()
        return manifest

    def _release_torch(self, ctx: ExportContext, pending: list[EngineJob]) -> None:
        """Every engine left to build starts from the fp32 ONNX graph: write it, draw what the gates need from the
        torch student, then free the torch models, so that converting, quantizing and gating the engines (each
        several GB at SD size) does not happen beside them."""
        self.reference.images()
        if any(j.precision != "fp32" for j in pending):  # int8 calibration and the speed gate's inputs
            self.reference.calibration()
        shared_fp32(ctx)
        self.denoiser.release()
        self.pipe.release()
        forget_loaded_pipelines()
        freed = return_freed_memory()
        self.log(f"torch models released after the fp32 ONNX graph (process now {freed / 1e9:.1f} GB resident)")

    def _engine_key(self, job: EngineJob) -> str:
        return _key(self.source_sha, job.id, __version__, self._options_for_key(job.precision))

    def _max_batch(self) -> int:
        return self.cfg.max_batch * (2 if self.pipe.guidance_mode == "cfg" else 1)

    def _options_for_key(self, precision: str) -> dict[str, Any]:
        opts: dict[str, Any] = {"gates": self.cfg.gates().__dict__, "max_batch": self._max_batch()}
        if precision == "int8":
            opts["calibration"] = [self.cfg.calibration_prompts, self.cfg.calibration_dataset,
                                   self.cfg.calibration_prompts_file]  # fmt: skip
        return opts

    def _kept_engines(self) -> dict[str, EngineEntry]:
        """Engines of the previous manifest that this run does not rebuild, if their files are intact."""
        asked = {j.id for j in self.jobs}
        old = self.old.engines if self.old else ()
        return {e.id: e for e in old if e.id not in asked and files_valid(self.root, e.files)}

    def _sampler(self) -> Sampler:
        """The student's sampler with its schedule spelled out (the runtime needs no default-steps rule)."""
        sampler = dict(self.spec["sampler"])
        sampler["timesteps"] = [float(t) for t in sampling_times(self.spec, None)]
        return Sampler.from_dict(sampler)

    def _view(self, text: TextEncoderEntry, decoders: dict[str, DecoderEntry]) -> Manifest:
        """What the runtime reads to make images with a candidate engine while the bundle is being written."""
        return Manifest(ModelInfo(str(self.spec.get("name") or self.source.stem)), self._sampler(),
                        ImageInfo.from_json(self.spec["image"], "spec.image", str(self.source)), text, (),
                        latent=self._latent() if decoders else None, decoders=decoders)  # fmt: skip

    def _latent(self) -> dict[str, Any]:
        return {k: v for k, v in self.spec["latent"].items() if k != "vae"}

    def _model_info(self) -> ModelInfo:
        training = self.spec.get("training", {})
        lora = self.spec.get("lora")
        extra = {"lora": {k: lora[k] for k in ("rank", "alpha", "base_sha256")} | {"fused": True}} if lora else {}
        verdict = read_verdict(self.source, self.source_sha)  # measured on this very checkpoint by `fewstep distill`
        if verdict:
            extra["equal_steps_verdict"] = verdict_summary(verdict)
        return ModelInfo(name=str(self.spec.get("name") or self.source.stem), source=str(self.source),
                         source_sha256=self.source_sha, params=self.params,
                         role=self.spec.get("role"), method=training.get("method"), teacher=training.get("teacher"),
                         extra=extra)  # fmt: skip

    def _manifest(self, text: TextEncoderEntry, decoders: dict[str, DecoderEntry], engines: list[EngineEntry],
                  refused: list[RefusedEngine]) -> Manifest:  # fmt: skip
        latent = self._latent() if decoders else None
        manifest = Manifest(
            model=self._model_info(), sampler=self._sampler(),
            image=ImageInfo.from_json(self.spec["image"], "spec.image", str(self.source)), text_encoder=text,
            engines=tuple(engines), refused=tuple(refused), notes=tuple(self.notes),
            created_by={"fewstep": __version__, "command": self.command,
                        "machine": f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} cores".strip(),
                        "torch": torch.__version__},
            latent=latent, decoders=decoders, default_decoder=self.cfg.decoder if "tiny" in decoders else "vae",
        )  # fmt: skip
        if self.cfg.triton:
            manifest = Manifest(**{**manifest.__dict__, "triton": self._triton(engines)})
        return manifest

    def _triton(self, engines: list[EngineEntry]) -> dict[str, str]:
        repo = self.root / "triton"
        written = {}
        for e in engines:
            platform_name = get_backend(e.backend).triton_platform
            if platform_name is None:
                continue
            name = "fewstep_denoiser_" + e.id.replace("-", "_")
            write_triton_repository(
                repo, name, self.root / e.main_file, platform_name, e.inputs, e.outputs,
                max_batch_size=self._max_batch(), preferred_batch_sizes=[self._max_batch()], max_queue_delay_us=2000,
            )  # fmt: skip
            written[e.id] = f"triton/{name}"
        return written
