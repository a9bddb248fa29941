"""`Generator`: prompts + seeds -> images from an engine bundle, with numpy only besides the backend.

The sampler rule, schedule and guidance mode come from the bundle's manifest; the same (prompt, seed) gives
the same image as the torch student (`TorchPipeline`) within the engine's parity tolerance.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from fewstep.core.imaging import decode_chunks, to_uint8
from fewstep.core.manifest import BundleError, DecoderEntry, EngineEntry, Manifest, read_manifest, verify_file
from fewstep.core.noise import renoise_np, seeded_noise_np
from fewstep.core.sampling_rules import validate_request
from fewstep.runtime.engine import BackendUnavailable, Engine
from fewstep.runtime.registry import engine_order, get_backend, load_engine
from fewstep.runtime.samplers import consistency_np, euler_np, interval_np
from fewstep.runtime.text import RuntimeTextEncoder


class Generator:
    """A denoiser engine + the bundle's prompt encoder + the manifest's sampler rule."""

    def __init__(self, manifest: Manifest, denoiser: Engine, text: RuntimeTextEncoder, engine_entry: EngineEntry,
                 decoder: Engine | None = None):  # fmt: skip
        self.manifest, self.denoiser, self.text, self.engine_entry = manifest, denoiser, text, engine_entry
        self.decoder = decoder  # latent models: the image decoder (VAE) engine; None in pixel space
        self.shape = manifest.image.shape
        self.sampler = manifest.sampler
        self._null: dict[str, np.ndarray] | None = None
        # seconds per stage of the last generate call: text_encode, denoise_step_1..n, decode
        self.stage_times: dict[str, float] = {}
        self._step = 0

    def _record(self, stage: str, since: float) -> None:
        self.stage_times[stage] = self.stage_times.get(stage, 0.0) + time.perf_counter() - since

    @classmethod
    def from_bundle(
        cls,
        path: str | Path,
        engine: str | None = None,
        backend: str | None = None,
        threads: int | None = None,
        decoder: str | None = None,
        **engine_options: Any,
    ) -> Generator:
        """Load a bundle (sha256 of every file used is checked); `engine` = an engine id from the manifest,
        `backend` = restrict to one backend; otherwise the first engine in the backends' priority order that loads
        here (`fewstep.runtime.registry`).
        `decoder` = a latent bundle's image decoder, `vae` or `tiny` (default: the bundle's `default_decoder`).
        `engine_options` go to the backend (e.g. compute_units for CoreML, providers for ONNX Runtime)."""
        root = Path(path)
        return cls._load(root, read_manifest(root), engine, backend, threads, decoder, engine_options)

    @classmethod
    def _load(cls, root: Path, manifest: Manifest, engine: str | None, backend: str | None, threads: int | None,
              decoder: str | None, engine_options: dict[str, Any]) -> Generator:  # fmt: skip
        candidates = engine_order(manifest.engines)
        if engine is not None:
            candidates = [e for e in candidates if e.id == engine]
            if not candidates:
                ids = ", ".join(manifest.engine_ids)
                raise BundleError(f"bundle {root} has no engine {engine!r}; it has: {ids or 'none'}")
        if backend is not None:
            candidates = [e for e in candidates if e.backend == backend]
            if not candidates:
                raise BundleError(f"bundle {root} has no {backend} engine; export one with --to")
        if not candidates:
            raise BundleError(f"bundle {root} holds no engine that passed its gates; see 'refused' in its manifest")
        text = RuntimeTextEncoder.from_bundle(root, manifest.text_encoder, threads)
        d = pick_decoder(manifest, decoder, root) if manifest.decoders else None
        if d is None and decoder is not None:
            raise BundleError(f"bundle {root} works in pixel space: it has no image decoder to choose")
        reasons = []
        for entry in candidates:
            paths = [verify_file(root, name, sha) for name, sha in entry.files.items()]
            try:
                engine_obj = load_engine(entry.backend, paths[0], entry, threads=threads, **engine_options)
            except BackendUnavailable as e:
                reasons.append(f"{entry.id}: {e}")
                continue
            image_decoder = open_decoder(root, d, threads, entry) if d is not None else None
            return cls(manifest, engine_obj, text, entry, image_decoder)
        raise BackendUnavailable("no engine of this bundle can run here: " + "; ".join(reasons))

    @property
    def guidance_mode(self) -> str:
        return self.sampler.guidance.mode

    def _null_cond(self, batch: int, negative: str | None = None) -> dict[str, np.ndarray]:
        """The unconditional branch of CFG: the empty prompt, or a negative prompt in its place."""
        if negative:
            return self.text.encode([negative] * batch)
        if self._null is None:
            self._null = self.text.null()
        return {k: np.repeat(v, batch, axis=0) for k, v in self._null.items()}

    def validate(self, prompts: list[str], seeds: list[int], steps: int | None = None, guidance: float | None = None,
                 negative_prompt: str | None = None) -> float:  # fmt: skip
        """Check a request before any work (prompt lengths included); -> the guidance scale to use."""
        w = self.sampler.resolve_guidance(guidance)
        validate_request(prompts, seeds, 1 if steps is None else steps, w)
        self.check_negative_prompt(negative_prompt)
        for p in [*prompts, *([negative_prompt] if negative_prompt else [])]:
            self.text.check(p)
        return w

    def check_negative_prompt(self, negative: str | None) -> None:
        if negative and self.guidance_mode != "cfg":
            raise ValueError(
                f"this engine has guidance {'embedded' if self.guidance_mode == 'embedded' else 'baked in'}: it runs "
                "no unconditional branch, so a negative prompt cannot be honoured"
            )

    def velocity(self, x: np.ndarray, t: np.ndarray, cond: dict[str, np.ndarray]) -> np.ndarray:
        t0 = time.perf_counter()
        v = self.denoiser.run({"x": x, "t": t, **cond})["v"]
        self._step += 1
        self._record(f"denoise_step_{self._step}", t0)
        return v

    def sample(self, cond: dict[str, np.ndarray], seeds: list[int], times: np.ndarray, guidance: float,
               negative: str | None = None) -> np.ndarray:  # fmt: skip
        """Run the bundle's sampler rule on encoded prompts -> x0 float32 (B, C, H, W) in about [-1, 1]."""
        noise = seeded_noise_np(seeds, self.shape)
        self._step = 0
        mode = self.guidance_mode
        if mode == "embedded":
            cond = {**cond, "guidance": np.full(len(seeds), guidance, np.float32)}
        if self.sampler.rule == "consistency":
            return consistency_np(self.velocity, noise, times, cond, lambda i: renoise_np(seeds, self.shape, i))
        if self.sampler.rule == "interval":
            return interval_np(self.velocity, noise, times, cond)
        if mode == "cfg" and guidance != 1.0:
            return euler_np(self.velocity, noise, times, cond, guidance, self._null_cond(len(seeds), negative))
        return euler_np(self.velocity, noise, times, cond)

    def generate(
        self,
        prompts: list[str],
        seeds: list[int],
        steps: int | None = None,
        guidance: float | None = None,
        batch_size: int = 64,
        negative_prompt: str | None = None,
    ) -> np.ndarray:
        """-> uint8 (N, H, W, C). `steps` None = the student's own schedule; `negative_prompt` only with CFG."""
        x = self.generate_float(prompts, seeds, steps, guidance, batch_size, negative_prompt)
        t0 = time.perf_counter()
        images = to_uint8(x)
        self._record("decode", t0)  # with the image decoder's time (latent models), recorded in generate_float
        return images

    def images_per_call(self, batch_size: int, guidance: float) -> int:
        """`batch_size`, lowered to what the engine takes: a CFG step sends two rows per image (conditional and
        unconditional), and a TensorRT profile or a fixed-shape CoreML package has a largest batch."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; got {batch_size}")
        limit = getattr(self.denoiser, "max_batch", None)
        if limit is None:
            return batch_size
        rows = self.rows_per_image(guidance)
        if limit < rows:
            raise ValueError(f"engine {self.engine_entry.id} takes at most {limit} row(s) per call; CFG needs "
                             f"{rows}: use guidance 1 or re-export with a larger max_batch")  # fmt: skip
        return min(batch_size, int(limit) // rows)

    def prepare(self, images: int, guidance: float | None = None) -> None:
        """Get the engine ready for calls of up to `images` images (OpenVINO compiles its static batch sizes
        here instead of at the first request that needs one); engines without shape preparation ignore it."""
        prepare = getattr(self.denoiser, "prepare", None)
        if prepare is not None:
            w = self.sampler.resolve_guidance(guidance)
            prepare(self.images_per_call(images, w) * self.rows_per_image(w))

    def rows_per_image(self, guidance: float) -> int:
        """Engine rows per image in one denoiser call: a CFG step sends the conditional and unconditional row."""
        return 2 if self.guidance_mode == "cfg" and guidance != 1.0 else 1

    def generate_float(
        self,
        prompts: list[str],
        seeds: list[int],
        steps: int | None = None,
        guidance: float | None = None,
        batch_size: int = 64,
        negative_prompt: str | None = None,
    ) -> np.ndarray:
        """-> float32 (N, C, H, W) in [-1, 1] before quantization to uint8 (what the parity gate compares);
        latent models' samples are decoded by the bundle's image decoder."""
        w = self.validate(prompts, seeds, steps, guidance, negative_prompt)
        times = self.sampler.schedule(steps)
        self.stage_times = {}
        batch_size = self.images_per_call(batch_size, w)
        out = []
        for i in range(0, len(prompts), batch_size):
            p, s = prompts[i : i + batch_size], seeds[i : i + batch_size]
            t0 = time.perf_counter()
            cond = self.text.encode(p)
            self._record("text_encode", t0)
            x = self.sample(cond, s, times, w, negative_prompt)
            if self.decoder is not None:
                t0 = time.perf_counter()
                x = np.concatenate([self.decoder.run({"latents": x[c]})["image"]
                                    for c in decode_chunks(len(x), self._decoded_pixels())])  # fmt: skip
                self._record("decode", t0)
            out.append(x)
        return np.concatenate(out)

    def _decoded_pixels(self) -> int:
        """Output pixels of one decoded image (the latent grid times the decoder's upsampling)."""
        down = int((self.manifest.latent or {}).get("downsample", 8))
        return self.shape[1] * self.shape[2] * down * down


def pick_decoder(manifest: Manifest, name: str | None, root: Path) -> DecoderEntry:
    """A latent bundle's image decoder `name` (None: the bundle's default)."""
    name = name or manifest.default_decoder
    if name not in manifest.decoders:
        hint = " (export with --tiny-decoder PATH to add one)" if name == "tiny" else ""
        raise BundleError(f"bundle {root} has no {name!r} image decoder; it has: {', '.join(manifest.decoders)}{hint}")
    return manifest.decoders[name]


def decoder_backend(d: DecoderEntry, denoiser: EngineEntry | None) -> tuple[str, str]:
    """(backend, precision) that runs image decoder `d` beside the denoiser engine `denoiser`: the decoder's own,
    unless the denoiser's backend says where its ONNX decoders run at that precision (`Backend.onnx_decoder_at`:
    OpenVINO's bf16 engines decode in bf16 too). Export gates decode the same way, so the gate sees what the
    runtime makes."""
    if denoiser is not None and d.file.endswith(".onnx"):
        at = get_backend(denoiser.backend).onnx_decoder_at.get(denoiser.precision)
        if at is not None:
            return denoiser.backend, at
    return d.backend, d.precision


def open_decoder(root: Path, d: DecoderEntry, threads: int | None = None,
                 denoiser: EngineEntry | None = None) -> Engine:  # fmt: skip
    """An image decoder's engine (its files checked against their sha256 first), for the denoiser engine
    `denoiser` (see decoder_backend)."""
    path = verify_file(root, d.file, d.sha256)
    for name, sha in d.data_files.items():  # external weights: the backend reads them beside the graph
        verify_file(root, name, sha)
    backend, precision = decoder_backend(d, denoiser)
    entry = EngineEntry(id=f"decoder:{d.file}", backend=backend, precision=precision,
                        files={d.file: d.sha256, **d.data_files},
                        inputs=d.inputs, outputs=d.outputs)  # fmt: skip
    return load_engine(backend, path, entry, threads=threads)
