"""The engine bundle's manifest: one typed, versioned schema (stdlib only) that export writes and the runtime,
`bench`, `serve` and `report` read.

A bundle is a directory: `manifest.json` plus the files it lists with their sha256 (engines, text encoder,
tokenizers, image decoders). `Manifest.from_json` checks every section it relies on and names what is wrong
("re-export the bundle"), so no reader ever meets a KeyError; `to_json` writes the same layout back.

Versions: `FORMAT` is what this fewstep writes; `READERS` maps every format it reads to a function that brings
that layout to the current one. A bundle of a format it does not know gets a clear "re-export" error.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from fewstep.core.errors import UserError
from fewstep.core.fsio import sha256_of
from fewstep.core.sampling_rules import Sampler

FORMAT = "fewstep-bundle/1"
MANIFEST = "manifest.json"
IN_PROGRESS = ".export-in-progress"  # present while an export writes into the bundle

Json = dict[str, Any]


class BundleError(UserError, ValueError):
    """A bundle that cannot be used; the message names the file and what to do."""


class _Reader:
    """Typed access to one JSON object; errors name the manifest path of the field (`engines[2].files`)."""

    def __init__(self, data: Any, where: str, source: str):
        if not isinstance(data, dict):
            raise BundleError(f"{source}: {where} must be an object, got {type(data).__name__}; re-export the bundle")
        self.data, self.where, self.source = data, where, source

    def _fail(self, key: str, expected: str) -> BundleError:
        got = type(self.data[key]).__name__ if key in self.data else "missing"
        return BundleError(f"{self.source}: {self.where}.{key} is {got}, expected {expected}; re-export the bundle")

    def text(self, key: str, default: str | None = None) -> str:
        value = self.data.get(key, default)
        if not isinstance(value, str):
            raise self._fail(key, "a string")
        return value

    def opt_text(self, key: str) -> str | None:
        return None if self.data.get(key) is None else self.text(key)

    def integer(self, key: str, default: int | None = None, minimum: int | None = None) -> int:
        value = self.data.get(key, default)
        if not isinstance(value, int) or isinstance(value, bool) or (minimum is not None and value < minimum):
            raise self._fail(key, "an integer" + (f" >= {minimum}" if minimum is not None else ""))
        return value

    def opt_integer(self, key: str) -> int | None:
        return None if self.data.get(key) is None else self.integer(key)

    def flag(self, key: str, default: bool = False) -> bool:
        value = self.data.get(key, default)
        if not isinstance(value, bool):
            raise self._fail(key, "true or false")
        return value

    def obj(self, key: str, default: Json | None = None) -> Json:
        value = self.data.get(key, default)
        if not isinstance(value, dict):
            raise self._fail(key, "an object")
        return value

    def sub(self, key: str) -> _Reader:
        return _Reader(self.obj(key), f"{self.where}.{key}", self.source)

    def items(self, key: str, default: list[Any] | None = None) -> list[Any]:
        value = self.data.get(key, default)
        if not isinstance(value, list):
            raise self._fail(key, "a list")
        return value

    def str_map(self, key: str) -> dict[str, str]:
        value = self.obj(key)
        if not value or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
            raise self._fail(key, "a non-empty map of names to strings")
        return dict(value)

    def rest(self, known: set[str]) -> Json:
        """Fields this schema does not name, kept as they are (written back unchanged)."""
        return {k: v for k, v in self.data.items() if k not in known}


def _names(cls: type) -> set[str]:
    return {f.name for f in fields(cls)}


@dataclass(frozen=True)
class TensorSpec:
    """One engine input or output: its shape with "B" for the batch axis, and a numpy dtype name."""

    shape: tuple[int | str, ...]
    dtype: str = "float32"

    def concrete(self, batch: int) -> tuple[int, ...]:
        return tuple(batch if d == "B" else int(d) for d in self.shape)

    def to_json(self) -> Json:
        return {"shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_json(cls, data: Any, where: str, source: str) -> TensorSpec:
        r = _Reader(data, where, source)
        shape = r.items("shape")
        if not all(d == "B" or (isinstance(d, int) and not isinstance(d, bool) and d > 0) for d in shape):
            raise BundleError(f"{source}: {where}.shape must hold positive integers and 'B'; got {shape}; re-export")
        return cls(tuple(shape), r.text("dtype", "float32"))


def tensor_specs(data: Any, where: str, source: str) -> dict[str, TensorSpec]:
    r = _Reader(data, where, source)
    return {name: TensorSpec.from_json(spec, f"{where}.{name}", source) for name, spec in r.data.items()}


def specs_json(specs: Mapping[str, TensorSpec]) -> Json:
    return {name: spec.to_json() for name, spec in specs.items()}


@dataclass(frozen=True)
class EngineEntry:
    """One engine of the bundle: its files (main file first, with companions such as OpenVINO's .bin), what it
    takes and returns, what its exporter recorded (`info`) and the gates it passed."""

    id: str
    backend: str  # the runtime backend that runs it (`fewstep.runtime.registry`)
    precision: str
    files: dict[str, str]  # bundle-relative name -> sha256
    inputs: dict[str, TensorSpec]
    outputs: dict[str, TensorSpec]
    size_bytes: int = 0
    info: Json = field(default_factory=dict)
    key: str = ""  # what it was built from; an export that finds the same key reuses the engine
    gates: dict[str, Json] = field(default_factory=dict)
    verified: bool = False  # every gate ran here and passed
    calibration: Json | None = None
    extra: Json = field(default_factory=dict)

    @property
    def main_file(self) -> str:
        return next(iter(self.files))

    def io_json(self) -> Json:
        return {"inputs": specs_json(self.inputs), "outputs": specs_json(self.outputs)}

    def to_json(self) -> Json:
        out: Json = {"id": self.id, "backend": self.backend, "precision": self.precision, "files": dict(self.files),
                     "size_bytes": self.size_bytes, **self.io_json(), "info": self.info, "key": self.key}  # fmt: skip
        if self.calibration is not None:
            out["calibration"] = self.calibration
        return {**out, "gates": self.gates, "verified": self.verified, **self.extra}

    @classmethod
    def from_json(cls, data: Any, where: str, source: str) -> EngineEntry:
        r = _Reader(data, where, source)
        calibration = r.data.get("calibration")
        return cls(
            id=r.text("id"), backend=r.text("backend"), precision=r.text("precision"), files=r.str_map("files"),
            inputs=tensor_specs(r.obj("inputs"), f"{where}.inputs", source),
            outputs=tensor_specs(r.obj("outputs"), f"{where}.outputs", source),
            size_bytes=r.integer("size_bytes", 0), info=r.obj("info", {}), key=r.text("key", ""),
            gates=r.obj("gates", {}), verified=r.flag("verified", False),
            calibration=r.obj("calibration") if calibration is not None else None, extra=r.rest(_names(cls)),
        )  # fmt: skip


@dataclass(frozen=True)
class RefusedEngine:
    """An engine the gates refused: not in the bundle, listed with the reason."""

    id: str
    reason: str
    gates: dict[str, Json] = field(default_factory=dict)
    size_bytes: int = 0

    def to_json(self) -> Json:
        return {"id": self.id, "reason": self.reason, "gates": self.gates, "size_bytes": self.size_bytes}

    @classmethod
    def from_json(cls, data: Any, where: str, source: str) -> RefusedEngine:
        r = _Reader(data, where, source)
        return cls(r.text("id"), r.text("reason", ""), r.obj("gates", {}), r.integer("size_bytes", 0))


@dataclass(frozen=True)
class DecoderEntry:
    """A latent bundle's image decoder (latents -> image): the VAE's, or a distilled tiny one."""

    file: str
    sha256: str
    inputs: dict[str, TensorSpec]
    outputs: dict[str, TensorSpec]
    backend: str = "onnxruntime"
    precision: str = "fp32"
    size_bytes: int = 0
    extra: Json = field(default_factory=dict)  # tiny decoders: source, params, psnr_vs_vae_db
    data_files: dict[str, str] = field(default_factory=dict)  # a large graph's external weights: name -> sha256

    def io_json(self) -> Json:
        return {"inputs": specs_json(self.inputs), "outputs": specs_json(self.outputs)}

    def to_json(self) -> Json:
        data = {"data_files": dict(self.data_files)} if self.data_files else {}
        return {"file": self.file, "sha256": self.sha256, "backend": self.backend, "precision": self.precision,
                "size_bytes": self.size_bytes, **data, **self.extra, **self.io_json()}  # fmt: skip

    @classmethod
    def from_json(cls, data: Any, where: str, source: str) -> DecoderEntry:
        r = _Reader(data, where, source)
        return cls(r.text("file"), r.text("sha256"), tensor_specs(r.obj("inputs"), f"{where}.inputs", source),
                   tensor_specs(r.obj("outputs"), f"{where}.outputs", source), r.text("backend", "onnxruntime"),
                   r.text("precision", "fp32"), r.integer("size_bytes", 0), r.rest(_names(cls)),
                   _data_files(r))  # fmt: skip


def _data_files(r: _Reader) -> dict[str, str]:
    """The optional `data_files` map of a graph entry (absent: the graph is one self-contained file)."""
    return r.str_map("data_files") if "data_files" in r.data else {}


@dataclass(frozen=True)
class TokenizerEntry:
    """A tokenizer file and the text-encoder graph input its padded ids feed."""

    file: str
    sha256: str
    max_tokens: int
    pad_id: int = 0
    input: str = "input_ids"

    def to_json(self) -> Json:
        return {"input": self.input, "max_tokens": self.max_tokens, "pad_id": self.pad_id, "file": self.file,
                "sha256": self.sha256}  # fmt: skip


@dataclass(frozen=True)
class TextEncoderEntry:
    """The prompt encoder: one ONNX graph, one tokenizer per text encoder of the model (SDXL and SD3: several).

    `null_is_zeros`: the unconditional branch is zeros, not the empty prompt (SDXL's
    force_zeros_for_empty_prompt); `extra_ids`: SDXL's size/crop ids, the same row for every prompt."""

    kind: str  # minilm | clip | diffusers-pipeline
    file: str
    sha256: str
    max_tokens: int
    dim: int
    tokenizers: tuple[TokenizerEntry, ...]
    outputs: tuple[str, ...] = ("last_hidden_state",)
    null_is_zeros: bool = False
    extra_ids: tuple[float, ...] | None = None
    extra: Json = field(default_factory=dict)
    data_files: dict[str, str] = field(default_factory=dict)  # a large graph's external weights: name -> sha256

    @property
    def reads_every_position(self) -> bool:
        """SD-family CLIP encoders run over all positions (padding included), as they were trained."""
        return self.kind in ("clip", "diffusers-pipeline")

    def to_json(self) -> Json:
        first = self.tokenizers[0]
        out: Json = {"kind": self.kind, "file": self.file, "tokenizer": first.file, "max_tokens": self.max_tokens,
                     "dim": self.dim, "pad_id": first.pad_id, "outputs": list(self.outputs), "sha256": self.sha256,
                     "tokenizer_sha256": first.sha256}  # fmt: skip
        if self.kind == "diffusers-pipeline":
            out["tokenizers"] = [t.to_json() for t in self.tokenizers]
            out["null_is_zeros"] = self.null_is_zeros
        if self.extra_ids is not None:
            out["extra_ids"] = list(self.extra_ids)
        if self.data_files:
            out["data_files"] = dict(self.data_files)
        return {**out, **self.extra}

    @classmethod
    def from_json(cls, data: Any, where: str, source: str) -> TextEncoderEntry:
        r = _Reader(data, where, source)
        max_tokens = r.integer("max_tokens", minimum=1)
        if "tokenizers" in r.data:
            tokenizers = []
            for i, t in enumerate(r.items("tokenizers")):
                tr = _Reader(t, f"{where}.tokenizers[{i}]", source)
                limit = tr.integer("max_tokens", minimum=1)
                tokenizers.append(TokenizerEntry(tr.text("file"), tr.text("sha256"), limit, tr.integer("pad_id", 0),
                                                 tr.text("input", "input_ids")))  # fmt: skip
            if not tokenizers:
                raise BundleError(f"{source}: {where}.tokenizers is empty; re-export the bundle")
        else:  # one tokenizer, recorded beside the graph
            pad = r.integer("pad_id", 0)
            tokenizers = [TokenizerEntry(r.text("tokenizer"), r.text("tokenizer_sha256"), max_tokens, pad)]
        ids = r.data.get("extra_ids")
        if ids is not None and not (isinstance(ids, list) and all(isinstance(v, (int, float)) for v in ids)):
            raise BundleError(f"{source}: {where}.extra_ids must be a list of numbers; re-export the bundle")
        known = {"kind", "file", "sha256", "max_tokens", "dim", "outputs", "tokenizer", "tokenizer_sha256", "pad_id",
                 "tokenizers", "null_is_zeros", "extra_ids", "data_files"}  # fmt: skip
        return cls(r.text("kind"), r.text("file"), r.text("sha256"), max_tokens, r.integer("dim", minimum=1),
                   tuple(tokenizers), tuple(str(o) for o in r.items("outputs", ["last_hidden_state"])),
                   r.flag("null_is_zeros", False), None if ids is None else tuple(float(v) for v in ids),
                   r.rest(known), _data_files(r))  # fmt: skip


@dataclass(frozen=True)
class ImageInfo:
    """What the denoiser samples: pixels in [-1, 1], or latents that a decoder turns into an image."""

    channels: int
    height: int
    width: int
    space: str = "pixel"  # pixel | latent
    extra: Json = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.channels, self.height, self.width

    def to_json(self) -> Json:
        return {"channels": self.channels, "height": self.height, "width": self.width, "space": self.space,
                **self.extra}  # fmt: skip

    @classmethod
    def from_json(cls, data: Any, where: str, source: str) -> ImageInfo:
        r = _Reader(data, where, source)
        return cls(r.integer("channels", minimum=1), r.integer("height", minimum=1), r.integer("width", minimum=1),
                   r.text("space", "pixel"), r.rest(_names(cls)))  # fmt: skip


@dataclass(frozen=True)
class ModelInfo:
    """Which checkpoint the engines were made from, and what it is."""

    name: str
    source: str = ""
    source_sha256: str = ""
    params: int | None = None
    role: str | None = None  # teacher | student
    method: str | None = None
    teacher: str | None = None
    extra: Json = field(default_factory=dict)  # e.g. `lora` (rank, alpha, base_sha256, fused)

    def to_json(self) -> Json:
        return {"name": self.name, "source": self.source, "source_sha256": self.source_sha256, "params": self.params,
                "role": self.role, "method": self.method, "teacher": self.teacher, **self.extra}  # fmt: skip

    @classmethod
    def from_json(cls, data: Any, where: str, source: str) -> ModelInfo:
        r = _Reader(data, where, source)
        return cls(r.text("name"), r.text("source", ""), r.text("source_sha256", ""), r.opt_integer("params"),
                   r.opt_text("role"), r.opt_text("method"), r.opt_text("teacher"), r.rest(_names(cls)))  # fmt: skip


@dataclass(frozen=True)
class Manifest:
    """Everything the runtime needs to run a bundle, and what export measured about each engine."""

    model: ModelInfo
    sampler: Sampler
    image: ImageInfo
    text_encoder: TextEncoderEntry
    engines: tuple[EngineEntry, ...]
    refused: tuple[RefusedEngine, ...] = ()
    notes: tuple[str, ...] = ()
    created_by: Json = field(default_factory=dict)
    latent: Json | None = None  # latent models: scale/shift and decoded size (informational)
    decoders: dict[str, DecoderEntry] = field(default_factory=dict)  # latent models: "vae" [, "tiny"]
    default_decoder: str = "vae"
    triton: dict[str, str] | None = None  # engine id -> its model directory in the Triton repository
    format: str = FORMAT

    def engine(self, engine_id: str) -> EngineEntry:
        for e in self.engines:
            if e.id == engine_id:
                return e
        raise BundleError(f"the bundle has no engine {engine_id!r}; it has: {', '.join(self.engine_ids) or 'none'}")

    @property
    def engine_ids(self) -> list[str]:
        return [e.id for e in self.engines]

    def to_json(self) -> Json:
        out: Json = {"format": self.format, "model": self.model.to_json(), "sampler": self.sampler.to_dict(),
                     "image": self.image.to_json()}  # fmt: skip
        if self.latent is not None:
            out["latent"] = self.latent
        if "vae" in self.decoders:
            out["decoder"] = self.decoders["vae"].to_json()
        if len(self.decoders) > 1:
            out["decoders"] = {k: d.to_json() for k, d in self.decoders.items()}
            out["default_decoder"] = self.default_decoder
        out.update(
            text_encoder=self.text_encoder.to_json(),
            engines=[e.to_json() for e in self.engines],
            refused=[r.to_json() for r in self.refused],
            notes=list(self.notes),
            created_by=self.created_by,
        )
        if self.triton is not None:
            out["triton"] = dict(self.triton)
        return out

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2) + "\n"

    @classmethod
    def from_json(cls, data: Any, source: str = MANIFEST) -> Manifest:
        if not isinstance(data, dict):
            raise BundleError(f"{source} must hold a JSON object, not {type(data).__name__}; re-export the bundle")
        fmt = data.get("format")
        if fmt not in READERS:
            raise BundleError(f"{source} has format {fmt!r}; this fewstep reads {', '.join(map(repr, READERS))}: "
                              "re-export the bundle with this fewstep")  # fmt: skip
        data = READERS[fmt](data)
        r = _Reader(data, "manifest", source)
        try:
            sampler = Sampler.from_dict(r.obj("sampler"))
        except ValueError as e:
            raise BundleError(f"{source}: manifest.sampler: {e}; re-export the bundle") from None
        decoders: dict[str, DecoderEntry] = {}
        if "decoder" in data:
            decoders["vae"] = DecoderEntry.from_json(data["decoder"], "manifest.decoder", source)
        for name, d in r.obj("decoders", {}).items():
            decoders[name] = DecoderEntry.from_json(d, f"manifest.decoders.{name}", source)
        default_decoder = r.text("default_decoder", "vae")
        if decoders and default_decoder not in decoders:
            raise BundleError(f"{source}: default_decoder {default_decoder!r} is not one of {sorted(decoders)}")
        notes = r.items("notes", [])
        triton = r.data.get("triton")
        return cls(
            model=ModelInfo.from_json(r.obj("model"), "manifest.model", source),
            sampler=sampler,
            image=ImageInfo.from_json(r.obj("image"), "manifest.image", source),
            text_encoder=TextEncoderEntry.from_json(r.obj("text_encoder"), "manifest.text_encoder", source),
            engines=tuple(EngineEntry.from_json(e, f"manifest.engines[{i}]", source)
                          for i, e in enumerate(r.items("engines"))),
            refused=tuple(RefusedEngine.from_json(e, f"manifest.refused[{i}]", source)
                          for i, e in enumerate(r.items("refused", []))),
            notes=tuple(str(n) for n in notes),
            created_by=r.obj("created_by", {}),
            latent=r.obj("latent") if data.get("latent") is not None else None,
            decoders=decoders,
            default_decoder=default_decoder,
            triton=r.str_map("triton") if triton else None,
            format=FORMAT,
        )  # fmt: skip


def _read_v1(data: Json) -> Json:
    return data  # the current layout


# every format this fewstep reads -> a function bringing it to the current layout (add one per new version)
READERS: dict[str, Callable[[Json], Json]] = {"fewstep-bundle/1": _read_v1}


def read_manifest(bundle: str | Path, allow_incomplete: bool = False) -> Manifest:
    """Parse and check `manifest.json`; refuse foreign formats and bundles whose export did not finish."""
    root = Path(bundle)
    path = root / MANIFEST
    if not root.is_dir():
        raise BundleError(f"bundle {root} is not a directory (create one with `fewstep export MODEL --out DIR`)")
    if (root / IN_PROGRESS).exists() and not allow_incomplete:
        raise BundleError(f"bundle {root} is incomplete: an export into it did not finish; re-run the same "
                          "`fewstep export`")  # fmt: skip
    if not path.is_file():
        raise BundleError(f"bundle {root} has no {MANIFEST}: it is not a fewstep bundle or its export did not finish")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise BundleError(f"{path} is not valid JSON ({type(e).__name__}: {e}); re-export the bundle") from None
    return Manifest.from_json(data, str(path))


def verify_file(root: Path, name: str, sha256: str) -> Path:
    """The path of a listed bundle file whose content still has its recorded sha256 (read in 1 MiB chunks)."""
    path = (root / name).resolve()
    if root.resolve() not in path.parents:
        raise BundleError(f"bundle {root} lists {name!r}, which lies outside the bundle")
    if not path.exists():
        raise BundleError(f"bundle {root} is missing {name}; re-export it")
    if not (path.is_file() or path.is_dir()):
        raise BundleError(f"bundle file {path} is not a regular file or directory; re-export the bundle")
    if sha256_of(path) != sha256:
        raise BundleError(f"bundle file {path} does not match its sha256 in {MANIFEST}: it was modified or damaged")
    return path
