"""Write an engine bundle (DESIGN.md): engines for each requested backend and precision, gated, described in
`manifest.json`, with the text encoder and tokenizer the runtime needs.

Idempotent and crash-safe: an engine whose recorded key (source checkpoint, backend, precision, options) and
file sha256 still match is reused untouched; every new file is written under a temporary name and renamed;
`.export-in-progress` marks the bundle incomplete until the new manifest is in place, so an interrupted
export never leaves a bundle that looks complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from fewstep import __version__
from fewstep.core.fsio import atomic_write_text, sha256_of, size_of
from fewstep.core.imaging import psnr
from fewstep.core.prompts import read_prompts_file
from fewstep.export.calibration import calibration_prompts, record_sampler_inputs
from fewstep.export.config import ExportConfig
from fewstep.export.denoiser import denoiser_from_spec
from fewstep.export.gates import parity_gate, speed_gate, speed_inputs
from fewstep.export.registry import RUNTIME_BACKEND, Artifact, ExportContext, get_exporter
from fewstep.export.text_encoder import cached_text_encoder
from fewstep.models.loading import model_sha256, resolve_checkpoint
from fewstep.models.pipeline import TorchPipeline, sampling_times
from fewstep.runtime.backends import load_engine
from fewstep.runtime.bundle import BUNDLE_FORMAT, IN_PROGRESS, MANIFEST, read_manifest
from fewstep.runtime.engine import BackendUnavailable
from fewstep.runtime.generator import Generator
from fewstep.runtime.text import RuntimeTextEncoder

BUILD_WHERE_THEY_RUN = ("tensorrt", "torch-tensorrt")  # engines tuned to (and only loadable on) their GPU
PARITY_SEED = 4321  # prompts for the parity gate: a shapes seed apart from calibration (1234) and evaluation


class ExportError(ValueError):
    """An export that cannot proceed; the message says why and what to do."""


def _key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


def _files_valid(root: Path, files: dict[str, str]) -> bool:
    return all((root / n).exists() and sha256_of(root / n) == sha for n, sha in files.items())


def plan_engines(cfg: ExportConfig) -> tuple[list[tuple[str, str, str | None]], list[str]]:
    """-> ([(target, precision, quantizer)], notes on precisions a target does not write)."""
    jobs, notes = [], []
    for target in cfg.to:
        exporter_precisions = _precisions(target)
        if target in BUILD_WHERE_THEY_RUN and (why := get_exporter(target).can_run()):
            raise ExportError(f"{target} engines are built on the NVIDIA GPU that will run them; here: {why}")
        wanted = [p for p in cfg.precision if p in exporter_precisions]
        skipped = [p for p in cfg.precision if p not in exporter_precisions]
        if skipped:
            notes.append(f"{target} writes {', '.join(exporter_precisions)}; not {', '.join(skipped)}")
        if not wanted:
            raise ExportError(f"--to {target} writes none of --precision {','.join(cfg.precision)}; "
                              f"it writes {', '.join(exporter_precisions)}")  # fmt: skip
        for p in wanted:
            quantizers = cfg.quantizer if (target == "onnx" and p == "int8") else (None,)
            jobs += [(target, p, q) for q in quantizers]
    return jobs, notes


def _precisions(target: str) -> tuple[str, ...]:
    from fewstep.export.registry import EXPORTERS

    if target not in EXPORTERS:
        raise ExportError(f"unknown export target {target!r}; choose from {', '.join(EXPORTERS)}")
    # read PRECISIONS without importing heavy optional packages: every exporter imports them lazily
    return get_exporter(target).PRECISIONS


def side_by_side_options(backend: str) -> dict:
    """Engines timed against each other in one process must not spin idle threads (ONNX Runtime does)."""
    return {"spinning": False} if backend == "onnxruntime" else {}


def engine_id(target: str, precision: str, quantizer: str | None) -> str:
    return f"{target}-{precision}" + (f"-{quantizer}" if quantizer else "")


class BundleExport:
    """One `fewstep export` run into `out`."""

    def __init__(self, checkpoint: str, out: str | Path, cfg: ExportConfig, command: str = "",
                 log: Callable[[str], None] = print, force: bool = False):  # fmt: skip
        self.cfg, self.command, self.log = cfg, command, log
        self.root = Path(out)
        self.source = resolve_checkpoint(checkpoint)
        self.source_sha = model_sha256(self.source)
        self.pipe = TorchPipeline.from_checkpoint(checkpoint)
        self.spec = self.pipe.spec
        self.denoiser = denoiser_from_spec(self.pipe.model, self.spec, self.pipe.encoder)
        self.jobs, self.notes = plan_engines(cfg)
        self.old = self._previous_manifest(force)
        self._calibration: tuple[list[dict[str, np.ndarray]], dict] | None = None
        self._reference: np.ndarray | None = None
        self._reference_latents: torch.Tensor | None = None
        self._tiny_entry: dict | None = None
        self._parity_prompts = calibration_prompts(cfg.parity_prompts, cfg.calibration_dataset, PARITY_SEED)

    def _previous_manifest(self, force: bool) -> dict:
        if not (self.root / MANIFEST).is_file():
            return {}
        old = read_manifest(self.root, allow_incomplete=True)
        if old.get("model", {}).get("source_sha256") != self.source_sha and not force:
            raise ExportError(
                f"bundle {self.root} was exported from another checkpoint ({old.get('model', {}).get('source')}); "
                "choose a new --out or pass --force to replace its engines"
            )
        return old if old.get("model", {}).get("source_sha256") == self.source_sha else {}

    # ---- shared inputs, computed once and only when needed
    def calibration(self) -> tuple[list[dict[str, np.ndarray]], dict]:
        if self._calibration is None:
            prompts = self._calibration_prompts()
            self.log(f"calibration: running the student's sampler on {len(prompts)} prompts")
            calls, summary = record_sampler_inputs(self.pipe, prompts, list(range(len(prompts))))
            self._calibration = (calls, summary)
        return self._calibration

    def _calibration_prompts(self) -> list[str]:
        if self.cfg.calibration_prompts_file:
            return read_prompts_file(self.cfg.calibration_prompts_file)[: self.cfg.calibration_prompts]
        return calibration_prompts(self.cfg.calibration_prompts, self.cfg.calibration_dataset)

    def reference(self) -> np.ndarray:
        """The torch student's final images (float) for the parity prompts, seeds 0..n-1."""
        if self._reference is None:
            p = self._parity_prompts
            seeds = list(range(len(p)))
            times = sampling_times(self.spec, None)
            with torch.no_grad():
                x = self.pipe.sample(self.pipe.encoder.encode(p), seeds, times, self.pipe.default_guidance)
                self._reference_latents = x
                self._reference = self.pipe.decode(x).numpy()  # latent models: the images, as the runtime's
        return self._reference

    # ---- the run
    def run(self) -> dict:
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / IN_PROGRESS).write_text(self.command or "fewstep export")
        ctx = ExportContext(self.denoiser, self.root, max_batch=self._max_batch(),
                            options={"cfg": self.pipe.guidance_mode == "cfg"}, spec=self.spec)  # fmt: skip
        try:
            text = self._text_encoder()
            self._decoder_entry = self._decoder()
            self._tiny_entry = self._tiny_decoder()
            engines, refused = self._kept_engines(), []
            fp32_engines: dict[str, object] = {}
            for target, precision, quantizer in self.jobs:
                eid = engine_id(target, precision, quantizer)
                key = _key(self.source_sha, eid, __version__, self._options_for_key(precision))
                old = next((e for e in self.old.get("engines", []) if e["id"] == eid), None)
                if old and old.get("key") == key and _files_valid(self.root, old["files"]):
                    self.log(f"{eid}: unchanged, kept")
                    engines[eid] = old
                    continue
                entry, why = self._build(ctx, target, precision, quantizer, key, text, fp32_engines)
                if entry is None:
                    refused.append(why)
                    engines.pop(eid, None)
                else:
                    engines[eid] = entry
            manifest = self._manifest(text, list(engines.values()), refused)
            if self.cfg.triton:
                manifest["triton"] = self._triton(list(engines.values()))
            atomic_write_text(self.root / MANIFEST, json.dumps(manifest, indent=2) + "\n")
        finally:
            if ctx.onnx_fp32 is not None:
                ctx.onnx_fp32.unlink(missing_ok=True)
            for tmp in self.root.glob(".*.tmp*"):
                shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)
        (self.root / IN_PROGRESS).unlink()
        return manifest

    def _max_batch(self) -> int:
        return self.cfg.max_batch * (2 if self.pipe.guidance_mode == "cfg" else 1)

    def _options_for_key(self, precision: str) -> dict:
        opts = {"gates": self.cfg.gates().__dict__, "max_batch": self._max_batch()}
        if precision == "int8":
            opts["calibration"] = [self.cfg.calibration_prompts, self.cfg.calibration_dataset,
                                   self.cfg.calibration_prompts_file]  # fmt: skip
        return opts

    def _kept_engines(self) -> dict[str, dict]:
        """Engines of the previous manifest that this run does not rebuild, if their files are intact."""
        asked = {engine_id(*j) for j in self.jobs}
        return {
            e["id"]: e
            for e in self.old.get("engines", [])
            if e["id"] not in asked and _files_valid(self.root, e["files"])
        }

    def _reusable(self, part: str, files: list[tuple[str, str]]) -> dict | None:
        """The previous manifest's `part` (decoder / pipeline text encoder) when it came from the same source with
        the same fewstep and torch, and its files are intact: re-exporting it would write the same graph."""
        old, made = self.old.get(part), self.old.get("created_by", {})
        if not old or made.get("fewstep") != __version__ or made.get("torch") != torch.__version__:
            return None
        return old if _files_valid(self.root, dict(files)) else None

    def _decoder(self) -> dict | None:
        """Latent models: the VAE decoder (latents -> image) as `decoder.onnx` (fp32). Not gated on its own: every
        engine's parity gate compares decoded images, so a bad decoder fails them all."""
        if self.pipe.codec is None:
            return None
        old = self.old.get("decoder") or {}
        if kept := self._reusable("decoder", [(old.get("file", ""), old.get("sha256", ""))]):
            self.log("image decoder: unchanged, kept")
            return kept
        from fewstep.export.decoder import ImageDecoder, export_decoder_onnx

        decoder = ImageDecoder(self.pipe.codec, self.spec)
        tmp = self.root / ".decoder.onnx.tmp"
        export_decoder_onnx(decoder, tmp)
        os.replace(tmp, self.root / "decoder.onnx")
        path = self.root / "decoder.onnx"
        entry = {"file": path.name, "sha256": sha256_of(path), "backend": "onnxruntime", "precision": "fp32",
                 "size_bytes": size_of(path), **decoder.io_json()}  # fmt: skip
        self.log(f"image decoder: written ({entry['size_bytes'] / 1e6:.2f} MB)")
        return entry

    def _tiny_decoder(self) -> dict | None:
        """A distilled tiny decoder as `decoder_tiny.onnx`, with its PSNR against the VAE decoder on the parity
        prompts' student latents (run in ONNX Runtime): recorded, not gated (a speed/quality trade-off)."""
        if not self.cfg.tiny_decoder:
            return None
        from fewstep.models.tiny_decoder import check_decoder_fits, load_tiny_decoder

        tiny, dspec = load_tiny_decoder(self.cfg.tiny_decoder)
        check_decoder_fits(dspec, self.spec, self.pipe.codec)
        source = Path(self.cfg.tiny_decoder)
        source = source / "decoder.safetensors" if source.is_dir() else source
        source_sha = sha256_of(source)
        old = (self.old.get("decoders") or {}).get("tiny") or {}
        if old.get("source_sha256") == source_sha:
            if kept := self._reusable("decoders", [(old.get("file", ""), old.get("sha256", ""))]):
                self.log("tiny image decoder: unchanged, kept")
                return kept["tiny"]
        from fewstep.export.decoder import TinyImageDecoder, export_decoder_onnx

        decoder = TinyImageDecoder(tiny, self.spec)
        tmp = self.root / ".decoder_tiny.onnx.tmp"
        export_decoder_onnx(decoder, tmp)
        path = self.root / "decoder_tiny.onnx"
        os.replace(tmp, path)
        self.reference()
        session = load_engine("onnxruntime", path, decoder.io_json())
        got = session.run({"latents": self._reference_latents.numpy()})["image"]
        entry = {"file": path.name, "sha256": sha256_of(path), "backend": "onnxruntime", "precision": "fp32",
                 "size_bytes": size_of(path), "source": str(source), "source_sha256": source_sha,
                 "params": dspec["params"], "psnr_vs_vae_db": round(psnr(got, self._reference), 2),
                 **decoder.io_json()}  # fmt: skip
        self.log(f"tiny image decoder: written ({entry['size_bytes'] / 1e6:.2f} MB, "
                 f"{entry['psnr_vs_vae_db']} dB vs the VAE decoder)")  # fmt: skip
        return entry

    def _pipeline_text_encoder(self) -> dict:
        """A pipeline's prompt encoding (all its text encoders) as one ONNX graph + one tokenizer.json each."""
        import tempfile

        from fewstep.export.prompt_graph import PipelinePromptGraph, export_prompt_graph
        from fewstep.models.diffusers_dir import load_pipeline

        old = self.old.get("text_encoder") or {}
        files = [(old.get("file", ""), old.get("sha256", ""))]
        files += [(t["file"], t["sha256"]) for t in old.get("tokenizers", [])]
        if "tokenizers" in old and (kept := self._reusable("text_encoder", files)):
            return {**kept, **self._prompt_constants()}
        te = self.spec["text_encoder"]
        graph = PipelinePromptGraph(load_pipeline(te["path"]), int(te.get("t5_tokens", 256)))
        tmp = self.root / ".text_encoder.onnx.tmp"
        export_prompt_graph(graph, tmp)
        os.replace(tmp, self.root / "text_encoder.onnx")
        tokenizers = []
        for k, (tok, entry) in enumerate(zip(graph.tokenizers, graph.tokenizer_entries(), strict=True)):
            name = "tokenizer.json" if k == 0 else f"tokenizer_{k + 1}.json"
            with tempfile.TemporaryDirectory(dir=self.root, prefix=".tok.") as d:
                tok.save_pretrained(d)
                os.replace(Path(d) / "tokenizer.json", self.root / name)
            tokenizers.append({**entry, "file": name, "sha256": sha256_of(self.root / name)})
        enc = self.pipe.encoder.encode([""])
        return {"kind": te["kind"], "file": "text_encoder.onnx", "sha256": sha256_of(self.root / "text_encoder.onnx"),
                "tokenizer": tokenizers[0]["file"], "tokenizer_sha256": tokenizers[0]["sha256"],
                "tokenizers": tokenizers, "max_tokens": tokenizers[0]["max_tokens"], "dim": int(enc.text.shape[2]),
                "outputs": graph.output_names, **self._prompt_constants()}  # fmt: skip

    def _prompt_constants(self) -> dict:
        """What the pipeline adds to every prompt's encoding without a graph: SDXL's size/crop ids (one constant
        row) and whether its unconditional branch is zeros (`force_zeros_for_empty_prompt`) instead of ""."""
        enc, null = self.pipe.encoder.encode([""]), self.pipe.encoder.null(1)
        out = {"null_is_zeros": bool(null.text.abs().max() == 0 and enc.text.abs().max() > 0)}
        if enc.extra_ids is not None:
            out["extra_ids"] = [float(v) for v in enc.extra_ids[0]]
        return out

    def _text_encoder(self) -> dict:
        enc = self.pipe.encoder
        if self.spec["text_encoder"]["kind"] == "diffusers-pipeline":
            return self._pipeline_text_encoder()
        onnx_src, tok_src = cached_text_encoder(enc)
        entry = {
            "kind": enc.spec["kind"],
            "file": "text_encoder.onnx",
            "tokenizer": "tokenizer.json",
            "max_tokens": enc.max_tokens,
            "dim": enc.dim,
            "pad_id": int(enc.tokenizer.pad_token_id or 0),
            "outputs": ["last_hidden_state"],
        }
        for name, src, field in (
            ("text_encoder.onnx", onnx_src, "sha256"),
            ("tokenizer.json", tok_src, "tokenizer_sha256"),
        ):
            sha = sha256_of(src)
            if not ((self.root / name).is_file() and sha256_of(self.root / name) == sha):
                tmp = self.root / f".{name}.tmp"
                shutil.copyfile(src, tmp)
                os.replace(tmp, self.root / name)
            entry[field] = sha
        return entry

    def _build(self, ctx: ExportContext, target: str, precision: str, quantizer: str | None, key: str, text: dict,
               fp32_engines: dict) -> tuple[dict | None, dict]:  # fmt: skip
        eid = engine_id(target, precision, quantizer)
        exporter = get_exporter(target)
        ctx.options = {**ctx.options, "quantizer": quantizer or "nncf"}
        calib_summary = None
        if precision == "int8":
            ctx.calibration, calib_summary = self.calibration()
        if target == "tensorrt" and precision == "int8":
            ctx.options["qdq_onnx"] = self._qdq_onnx(ctx)
        self.log(f"{eid}: exporting")
        art: Artifact = exporter.export(ctx, precision)
        files = self._place(art, eid)
        entry = {
            "id": eid,
            "backend": art.backend,
            "precision": precision,
            "files": {n: sha256_of(self.root / n) for n in files},
            "size_bytes": sum(size_of(self.root / n) for n in files),
            **self.denoiser.io_json(),
            "info": art.info,
            "key": key,
        }
        if calib_summary:
            entry["calibration"] = calib_summary
        entry["gates"] = self._gates(ctx, exporter, entry, text, fp32_engines, target)
        failed = [g for g in entry["gates"].values() if g.get("passed") is False]
        if failed:
            for n in files:
                path = self.root / n
                shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
            reason = "; ".join(g["reason"] for g in failed)
            self.log(f"{eid}: REFUSED ({reason})")
            return None, {"id": eid, "reason": reason, "gates": entry["gates"], "size_bytes": entry["size_bytes"]}
        entry["verified"] = all(g.get("passed") is True for g in entry["gates"].values())
        summary = ", ".join(f"{k} {self._gate_text(g)}" for k, g in entry["gates"].items())
        self.log(f"{eid}: written ({entry['size_bytes'] / 1e6:.2f} MB; {summary})")
        return entry, {}

    @staticmethod
    def _gate_text(g: dict) -> str:
        if "psnr_db" in g:
            return f"{g['psnr_db']:.1f} dB"
        if "speedup_vs_fp32" in g:
            return f"{g['speedup_vs_fp32']:.2f}x fp32 at batch {g['batch']}"
        return g.get("status", "?")

    def _place(self, art: Artifact, eid: str) -> list[str]:
        """Rename the exporter's temporary files to their bundle names; -> the names (main file first)."""
        names = []
        for src in [art.path, *art.extra_files]:
            suffix = ".mlpackage" if src.name.endswith(".mlpackage") else src.suffix
            name = f"denoiser.{eid}{suffix}"
            dst = self.root / name
            if src == self.root / ".denoiser.fp32.tmp.onnx":  # shared by other exporters: copy, keep it
                shutil.copyfile(src, self.root / f".{name}.tmp")
                src = self.root / f".{name}.tmp"
            if dst.is_dir():
                shutil.rmtree(dst)
            os.replace(src, dst)
            names.append(name)
        return names

    def _qdq_onnx(self, ctx: ExportContext) -> Path:
        """TensorRT int8 is built from an explicitly quantized (Q/DQ) ONNX graph: NNCF's, symmetric (TensorRT
        accepts only zero points of 0)."""
        from fewstep.export.to_onnx import export as onnx_export

        saved = dict(ctx.options)
        ctx.options.update(quantizer="nncf", symmetric=True)
        art = onnx_export(ctx, "int8")
        ctx.options = saved
        return art.path

    def _gates(self, ctx: ExportContext, exporter, entry: dict, text: dict, fp32_engines: dict, target: str) -> dict:
        reason = exporter.can_run()
        if reason:
            why = f"not run: {reason}"
            return {"parity": {"status": why}, "speed": {"status": why}}
        main = self.root / next(iter(entry["files"]))
        try:
            engine = load_engine(entry["backend"], main, entry, **side_by_side_options(entry["backend"]))
        except BackendUnavailable as e:  # written, but in a form the runtime does not load (e.g. an exported program)
            why = f"not run: {e}"
            return {"parity": {"status": why}, "speed": {"status": why}}
        decoder = None
        if self._decoder_entry is not None:
            decoder = load_engine("onnxruntime", self.root / "decoder.onnx", self._decoder_entry)
        gen = Generator(self._runtime_manifest(text), engine, self._runtime_text(text), entry, decoder)
        p = self._parity_prompts
        images = gen.generate_float(p, list(range(len(p))))
        gates = {"parity": parity_gate(images, self.reference(), entry["precision"], self.cfg.gates())}
        if entry["precision"] == "fp32":
            fp32_engines[target] = engine
            return gates
        if target not in fp32_engines:
            fp32_engines[target] = self._temporary_fp32(ctx, target)
        inputs = speed_inputs(self.calibration()[0], self.cfg.speed_batch)
        gates["speed"] = speed_gate(engine, fp32_engines[target], inputs, self.cfg.gates())
        return gates

    def _temporary_fp32(self, ctx: ExportContext, target: str):
        """The fp32 engine the speed gate compares with, when the bundle does not ask for one (deleted after)."""
        art = get_exporter(target).export(ctx, "fp32")
        backend = RUNTIME_BACKEND[target]
        return load_engine(backend, art.path, self.denoiser.io_json(), **side_by_side_options(backend))

    def _runtime_text(self, text: dict) -> RuntimeTextEncoder:
        if not hasattr(self, "_rt_text"):
            tokenizers = [self.root / t["file"] for t in text["tokenizers"]] if "tokenizers" in text else None
            self._rt_text = RuntimeTextEncoder(self.root / text["file"], tokenizers or self.root / text["tokenizer"],
                                               text)  # fmt: skip
        return self._rt_text

    def _runtime_manifest(self, text: dict) -> dict:
        return {"image": self.spec["image"], "sampler": self._sampler(), "text_encoder": text}

    def _sampler(self) -> dict:
        sampler = dict(self.spec["sampler"])
        sampler["timesteps"] = [float(t) for t in sampling_times(self.spec, None)]
        return sampler

    def _decoders_entry(self) -> dict:
        """Latent bundles with a tiny decoder: both decoders and the runtime's default (`decoder` stays the VAE's,
        the reference every parity gate uses)."""
        if not self._tiny_entry:
            return {}
        return {"decoders": {"vae": self._decoder_entry, "tiny": self._tiny_entry}, "default_decoder": self.cfg.decoder}

    def _lora_entry(self) -> dict:
        """A LoRA student is exported fused: its engines hold base + adapter as one network."""
        lora = self.spec.get("lora")
        return {"lora": {k: lora[k] for k in ("rank", "alpha", "base_sha256")} | {"fused": True}} if lora else {}

    def _manifest(self, text: dict, engines: list[dict], refused: list[dict]) -> dict:
        training = self.spec.get("training", {})
        return {
            "format": BUNDLE_FORMAT,
            "model": {
                "name": self.spec.get("name") or self.source.stem,
                "source": str(self.source),
                "source_sha256": self.source_sha,
                "params": sum(p.numel() for p in self.pipe.model.parameters()),
                "role": self.spec.get("role"),
                "method": training.get("method"),
                "teacher": training.get("teacher"),
                **self._lora_entry(),
            },
            "sampler": self._sampler(),
            "image": self.spec["image"],
            # latent models: scale/shift and decoded size (the VAE path is local to the exporting machine)
            **({"latent": {k: v for k, v in self.spec["latent"].items() if k != "vae"}} if self._decoder_entry else {}),
            **({"decoder": self._decoder_entry} if self._decoder_entry else {}),
            **self._decoders_entry(),
            "text_encoder": text,
            "engines": engines,
            "refused": refused,
            "notes": self.notes,
            "created_by": {
                "fewstep": __version__,
                "command": self.command,
                "machine": f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} cores".strip(),
                "torch": torch.__version__,
            },
        }

    def _triton(self, engines: list[dict]) -> dict:
        from fewstep.export.triton import write_triton_repository

        repo = self.root / "triton"
        written = {}
        platforms = {"onnxruntime": ("onnxruntime_onnx", ".onnx"), "tensorrt": ("tensorrt_plan", ".plan")}
        for e in engines:
            if e["backend"] not in platforms:
                continue
            plat, _ = platforms[e["backend"]]
            name = "fewstep_denoiser_" + e["id"].replace("-", "_")
            write_triton_repository(
                repo, name, self.root / next(iter(e["files"])), plat, e["inputs"], e["outputs"],
                max_batch_size=self._max_batch(), preferred_batch_sizes=[self._max_batch()],
                max_queue_delay_us=2000,
            )  # fmt: skip
            written[e["id"]] = f"triton/{name}"
        return written
