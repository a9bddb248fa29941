"""Build one engine of a bundle: run its backend's exporter, move the files to their bundle names, and gate it
(final-image parity through the runtime itself, and for fp16 / int8 speed against the fp32 engine of the same
backend). An engine that fails a gate is deleted and recorded as refused, with the reason."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fewstep.core import resources
from fewstep.core.fsio import sha256_of, size_of
from fewstep.core.manifest import DecoderEntry, EngineEntry, Manifest, RefusedEngine
from fewstep.core.resources import gib, return_freed_memory
from fewstep.export import onnx_files
from fewstep.export.context import SHARED_FP32_ONNX, Artifact, ExportContext, exporter_of
from fewstep.export.gates import GateConfig, alone_ms, parity_gate, speed_gate, speed_inputs, speed_verdict
from fewstep.export.plan import EngineJob
from fewstep.export.references import StudentReference
from fewstep.export.targets.onnx import shared_fp32
from fewstep.runtime.engine import BackendUnavailable, Engine
from fewstep.runtime.generator import Generator, decoder_backend, open_decoder
from fewstep.runtime.registry import Backend, load_engine
from fewstep.runtime.text import RuntimeTextEncoder

# the speed gate holds the candidate and the fp32 engine together (interleaved timing, fairer under machine noise)
# only when the fp32 engine's files are below this; SD-size engines are timed one after the other
INTERLEAVE_BELOW = 1 << 30
# peak memory of NNCF's static int8 calibration per byte of the fp32 graph, measured on SD-Turbo's 3.46 GB UNet
# (docs/guides/real-size.md): the ONNX Runtime run was killed at 24.9 GB, the OpenVINO one peaked at 24.8 GB
STATIC_INT8_MEMORY = {"onnxruntime": 7.2, "openvino": 6.0}


def side_by_side(backend: Backend) -> dict[str, Any]:
    """Options for engines timed against each other in one process (ONNX Runtime: no spinning idle threads)."""
    return dict(backend.side_by_side_options)


class EngineBuilder:
    """Builds the engines of one export into `ctx.out_dir`; `runtime_view` is the manifest the runtime's
    `Generator` needs to make images with a candidate engine (image, sampler, prompt encoder, decoders)."""

    def __init__(self, ctx: ExportContext, reference: StudentReference, gates: GateConfig, runtime_view: Manifest,
                 log: Callable[[str], None]):  # fmt: skip
        self.ctx, self.reference, self.gates, self.view, self.log = ctx, reference, gates, runtime_view, log
        self.root = ctx.out_dir
        # per backend: how to load the fp32 engine the speed gate compares with, and its size in bytes (loaded
        # when needed and dropped after: an SD-size engine holds several GB; an export must not keep one per
        # backend alive)
        self._fp32: dict[str, tuple[Callable[[], Engine], int]] = {}
        self._text: RuntimeTextEncoder | None = None
        self._decoder: Engine | None = None

    def build(self, job: EngineJob, key: str) -> EngineEntry | RefusedEngine:
        self.ctx.options = {**self.ctx.options, "quantizer": job.quantizer or "nncf"}
        too_big = self._memory_refusal(job)
        if too_big is not None:
            self.log(f"{job.id}: REFUSED ({too_big.reason})")
            return too_big
        self.log(f"{job.id}: exporting")
        art = exporter_of(job.backend)(self.ctx, job.precision)
        names = self._place(art, job.id)
        inputs, outputs = self.ctx.denoiser.io_specs()
        entry = EngineEntry(
            id=job.id, backend=art.backend, precision=job.precision,
            files={n: sha256_of(self.root / n) for n in names},
            inputs=inputs, outputs=outputs, size_bytes=sum(size_of(self.root / n) for n in names),
            info=art.info, key=key,
            calibration=self.reference.calibration()[1] if job.precision == "int8" else None,
        )  # fmt: skip
        gates = self._gates(job, entry)
        failed = [g for g in gates.values() if g.get("passed") is False]
        if failed:
            for n in names:
                path = self.root / n
                shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
            if job.precision == "fp32":  # its file is gone: the speed gate will export a temporary one
                self._fp32.pop(job.backend.name, None)
            reason = "; ".join(g["reason"] for g in failed)
            self.log(f"{job.id}: REFUSED ({reason})")
            return RefusedEngine(job.id, reason, gates, entry.size_bytes)
        verified = all(g.get("passed") is True for g in gates.values())
        summary = ", ".join(f"{k} {_gate_text(g)}" for k, g in gates.items())
        self.log(f"{job.id}: written ({entry.size_bytes / 1e6:.2f} MB; {summary})")
        return EngineEntry(**{**entry.__dict__, "gates": gates, "verified": verified})

    def _memory_refusal(self, job: EngineJob) -> RefusedEngine | None:
        """NNCF's static int8 calibration holds several copies of the graph: an engine whose estimate exceeds the
        memory available is refused before it starts, instead of the kernel killing the whole export."""
        factor = STATIC_INT8_MEMORY.get(job.backend.name)
        if (
            job.precision != "int8"
            or factor is None
            or (job.quantizer or "nncf") != "nncf"
            or not job.backend.from_onnx
        ):
            return None
        fp32 = sum(size_of(p) for p in onnx_files.graph_files(shared_fp32(self.ctx)))
        needed, have = int(factor * fp32), resources.available_memory()
        if needed <= have:
            return None
        return RefusedEngine(job.id, f"NNCF static int8 calibration needs about {gib(needed)} of memory for this "
                             f"{gib(fp32)} graph, {gib(have)} is available; use --precision int8w or int4w (OpenVINO "
                             "weight-only, a fraction of that) or a machine with more memory", {})  # fmt: skip

    def _place(self, art: Artifact, eid: str) -> list[str]:
        """Rename the exporter's temporary files to their bundle names; -> the names (main file first)."""
        if art.path.suffix == ".onnx":  # a graph and its weight file (if any) move together
            dst = self.root / f"denoiser.{eid}.onnx"
            shared = art.path == self.root / SHARED_FP32_ONNX  # other exporters start from it: keep it
            return [p.name for p in onnx_files.relocate(art.path, dst, copy=shared)]
        names = []
        for src in [art.path, *art.extra_files]:
            suffix = ".mlpackage" if src.name.endswith(".mlpackage") else src.suffix
            name = f"denoiser.{eid}{suffix}"
            dst = self.root / name
            if src == self.root / SHARED_FP32_ONNX:  # other exporters start from it: copy, keep it
                shutil.copyfile(src, self.root / f".{name}.tmp")
                src = self.root / f".{name}.tmp"
            if dst.is_dir():
                shutil.rmtree(dst)
            os.replace(src, dst)
            names.append(name)
        return names

    def _gates(self, job: EngineJob, entry: EngineEntry) -> dict[str, dict[str, Any]]:
        if reason := job.backend.unavailable_reason():
            why = f"not run: {reason}"
            return {"parity": {"status": why}, "speed": {"status": why}}
        main = self.root / entry.main_file
        try:
            engine = load_engine(entry.backend, main, entry, **side_by_side(job.backend))
        except BackendUnavailable as e:  # written, but in a form the runtime does not load (e.g. an exported program)
            why = f"not run: {e}"
            return {"parity": {"status": why}, "speed": {"status": why}}
        gen = Generator(self.view, engine, self._runtime_text(), entry, self._image_decoder(entry))
        prompts = self.reference.parity_prompts
        images = gen.generate_float(prompts, list(range(len(prompts))))
        gates = {"parity": parity_gate(images, self.reference.images(), entry.precision, self.gates)}
        del gen
        if entry.precision == "fp32":
            load = lambda: load_engine(entry.backend, main, entry, **side_by_side(job.backend))  # noqa: E731
            self._fp32[job.backend.name] = (load, entry.size_bytes)
            return gates
        if job.backend.name not in self._fp32:
            self._fp32[job.backend.name] = self._temporary_fp32(job.backend)
        load_fp32, fp32_bytes = self._fp32[job.backend.name]
        inputs = speed_inputs(self.reference.calibration()[0], self.gates.speed_batch)
        if fp32_bytes < INTERLEAVE_BELOW:
            gates["speed"] = speed_gate(engine, load_fp32(), inputs, self.gates)
            return gates
        ms = alone_ms(engine, inputs, self.gates.speed_runs)
        del engine  # the candidate goes before the fp32 engine comes: never two SD-size engines at once
        return_freed_memory()
        fp32_ms = alone_ms(load_fp32(), inputs, self.gates.speed_runs)
        return_freed_memory()
        gates["speed"] = speed_verdict(ms, fp32_ms, len(inputs["t"]), self.gates, "one after the other")
        return gates

    def _temporary_fp32(self, backend: Backend) -> tuple[Callable[[], Engine], int]:
        """The fp32 engine the speed gate compares with, when the bundle does not ask for one (deleted after)."""
        art = exporter_of(backend)(self.ctx, "fp32")
        entry = self.ctx.denoiser.entry(backend.name, "fp32", f"{backend.target}-fp32-reference")
        files = onnx_files.graph_files(art.path) if art.path.suffix == ".onnx" else [art.path, *art.extra_files]
        size = sum(size_of(p) for p in files if p.exists())
        return lambda: load_engine(backend.name, art.path, entry, **side_by_side(backend)), size

    def _runtime_text(self) -> RuntimeTextEncoder:
        if self._text is None:
            self._text = RuntimeTextEncoder.from_bundle(self.root, self.view.text_encoder)
        return self._text

    def _image_decoder(self, entry: EngineEntry) -> Engine | None:
        """The VAE's decoder as the runtime will run it beside `entry` (decoder_backend): what its gate sees."""
        vae: DecoderEntry | None = self.view.decoders.get("vae")
        if vae is None:
            return None
        if decoder_backend(vae, entry) != (vae.backend, vae.precision):
            return open_decoder(self.root, vae, denoiser=entry)  # for this engine only
        if self._decoder is None:
            self._decoder = open_decoder(self.root, vae)  # the VAE's: the reference every other gate uses
        return self._decoder


def _gate_text(g: dict[str, Any]) -> str:
    if "psnr_db" in g:
        return f"{g['psnr_db']:.1f} dB"
    if "speedup_vs_fp32" in g:
        return f"{g['speedup_vs_fp32']:.2f}x fp32 at batch {g['batch']}"
    return str(g.get("status", "?"))


def temp_files(root: Path) -> list[Path]:
    """What an export leaves under temporary names (removed when it ends, finished or not)."""
    return list(root.glob(".*.tmp*"))
