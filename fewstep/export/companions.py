"""The files a bundle holds beside its denoiser engines: the prompt encoder (ONNX graph + tokenizers) and, for
latent models, the image decoders (the VAE's and an optional distilled tiny one). Each is reused untouched when a
previous export wrote it from the same source with the same fewstep and torch, and its files are intact."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch

from fewstep import __version__
from fewstep.core.fsio import sha256_of, size_of
from fewstep.core.imaging import psnr
from fewstep.core.manifest import DecoderEntry, EngineEntry, Manifest, TextEncoderEntry, TokenizerEntry
from fewstep.export import onnx_files
from fewstep.export.decoder import ImageDecoder, TinyImageDecoder, export_decoder_onnx
from fewstep.export.prompt_graph import PipelinePromptGraph, export_prompt_graph
from fewstep.export.references import StudentReference
from fewstep.export.text_encoder import cached_text_encoder
from fewstep.models.diffusers_dir import load_pipeline
from fewstep.models.pipeline import TorchPipeline
from fewstep.models.tiny_decoder import check_decoder_fits, load_tiny_decoder
from fewstep.runtime.registry import load_engine


def files_valid(root: Path, files: dict[str, str]) -> bool:
    """Every listed file exists with its recorded sha256."""
    return all((root / n).exists() and sha256_of(root / n) == sha for n, sha in files.items())


def made_here(old: Manifest | None) -> bool:
    """A previous manifest written by this fewstep and torch: its graphs are what this run would write."""
    made = old.created_by if old else {}
    return made.get("fewstep") == __version__ and made.get("torch") == torch.__version__


def _place(tmp: Path, final: Path) -> Path:
    if final.suffix == ".onnx":  # a graph and its weight file (if any) move together
        onnx_files.relocate(tmp, final)
    else:
        os.replace(tmp, final)
    return final


def _data_files(graph: Path) -> dict[str, str]:
    """sha256 of a graph's external weight files (empty for a self-contained graph)."""
    return {f.name: sha256_of(f) for f in onnx_files.graph_files(graph)[1:]}


class Companions:
    """Writes (or keeps) the prompt encoder and image decoders of one export into `root`."""

    def __init__(self, root: Path, pipe: TorchPipeline, old: Manifest | None, log: Callable[[str], None]):
        self.root, self.pipe, self.spec, self.old, self.log = root, pipe, pipe.spec, old, log

    # ---- prompt encoder
    def text_encoder(self) -> TextEncoderEntry:
        if self.spec["text_encoder"]["kind"] == "diffusers-pipeline":
            return self._pipeline_text_encoder()
        enc = self.pipe.encoder
        onnx_src, tok_src = cached_text_encoder(enc)
        shas = {}
        for name, src in (("text_encoder.onnx", onnx_src), ("tokenizer.json", tok_src)):
            sha = sha256_of(src)
            if not ((self.root / name).is_file() and sha256_of(self.root / name) == sha):
                tmp = self.root / f".{name}.tmp"
                shutil.copyfile(src, tmp)
                _place(tmp, self.root / name)
            shas[name] = sha
        tokenizer = TokenizerEntry("tokenizer.json", shas["tokenizer.json"], enc.max_tokens,
                                   int(enc.tokenizer.pad_token_id or 0))  # fmt: skip
        return TextEncoderEntry(enc.spec["kind"], "text_encoder.onnx", shas["text_encoder.onnx"], enc.max_tokens,
                                enc.dim, (tokenizer,))  # fmt: skip

    def _pipeline_text_encoder(self) -> TextEncoderEntry:
        """A pipeline's prompt encoding (all its text encoders) as one ONNX graph + one tokenizer.json each."""
        old = self.old.text_encoder if self.old else None
        if old is not None and old.kind == "diffusers-pipeline" and made_here(self.old):
            files = {old.file: old.sha256, **old.data_files, **{t.file: t.sha256 for t in old.tokenizers}}
            if files_valid(self.root, files):
                return self._with_prompt_constants(old)
        te = self.spec["text_encoder"]
        graph = PipelinePromptGraph(load_pipeline(te["path"]), int(te.get("t5_tokens", 256)))
        tmp = self.root / ".text_encoder.onnx.tmp"
        export_prompt_graph(graph, tmp)
        _place(tmp, self.root / "text_encoder.onnx")
        tokenizers = []
        for k, (tok, entry) in enumerate(zip(graph.tokenizers, graph.tokenizer_entries(), strict=True)):
            name = "tokenizer.json" if k == 0 else f"tokenizer_{k + 1}.json"
            with tempfile.TemporaryDirectory(dir=self.root, prefix=".tok.") as d:
                tok.save_pretrained(d)
                _place(Path(d) / "tokenizer.json", self.root / name)
            tokenizers.append(TokenizerEntry(name, sha256_of(self.root / name), int(entry["max_tokens"]),
                                             int(entry["pad_id"]), str(entry["input"])))  # fmt: skip
        enc = self.pipe.encoder.encode([""])
        entry = TextEncoderEntry(te["kind"], "text_encoder.onnx", sha256_of(self.root / "text_encoder.onnx"),
                                 tokenizers[0].max_tokens, int(enc.text.shape[2]), tuple(tokenizers),
                                 tuple(graph.output_names),
                                 data_files=_data_files(self.root / "text_encoder.onnx"))  # fmt: skip
        return self._with_prompt_constants(entry)

    def _with_prompt_constants(self, entry: TextEncoderEntry) -> TextEncoderEntry:
        """What the pipeline adds to every prompt's encoding without a graph: SDXL's size/crop ids (one constant
        row) and whether its unconditional branch is zeros (`force_zeros_for_empty_prompt`) instead of ""."""
        enc, null = self.pipe.encoder.encode([""]), self.pipe.encoder.null(1)
        zeros = bool(null.text.abs().max() == 0 and enc.text.abs().max() > 0)
        ids = None if enc.extra_ids is None else tuple(float(v) for v in enc.extra_ids[0])
        return replace(entry, null_is_zeros=zeros, extra_ids=ids)

    # ---- image decoders
    def vae_decoder(self) -> DecoderEntry | None:
        """Latent models: the VAE decoder (latents -> image) as `decoder.onnx` (fp32). Not gated on its own: every
        engine's parity gate compares decoded images, so a bad decoder fails them all."""
        if self.pipe.codec is None:
            return None
        old = self.old.decoders.get("vae") if self.old else None
        if old is not None and made_here(self.old) and files_valid(self.root, {old.file: old.sha256, **old.data_files}):
            self.log("image decoder: unchanged, kept")
            return old
        decoder = ImageDecoder(self.pipe.codec, self.spec)
        tmp = self.root / ".decoder.onnx.tmp"
        export_decoder_onnx(decoder, tmp)
        path = _place(tmp, self.root / "decoder.onnx")
        inputs, outputs = decoder.io_specs()
        data = _data_files(path)
        entry = DecoderEntry(
            path.name,
            sha256_of(path),
            inputs,
            outputs,
            size_bytes=size_of(path) + sum(size_of(self.root / n) for n in data),
            data_files=data,
        )
        self.log(f"image decoder: written ({entry.size_bytes / 1e6:.2f} MB)")
        return entry

    def tiny_decoder(self, source: str | None, reference: StudentReference) -> DecoderEntry | None:
        """A distilled tiny decoder as `decoder_tiny.onnx`, with its PSNR against the VAE decoder on the parity
        prompts' student latents (run in ONNX Runtime): recorded, not gated (a speed/quality trade-off)."""
        if not source:
            return None
        tiny, dspec = load_tiny_decoder(source)
        check_decoder_fits(dspec, self.spec, self.pipe.codec)
        src = Path(source)
        src = src / "decoder.safetensors" if src.is_dir() else src
        source_sha = sha256_of(src)
        old = self.old.decoders.get("tiny") if self.old else None
        if (old is not None and old.extra.get("source_sha256") == source_sha and made_here(self.old)
                and files_valid(self.root, {old.file: old.sha256})):  # fmt: skip
            self.log("tiny image decoder: unchanged, kept")
            return old
        decoder = TinyImageDecoder(tiny, self.spec)
        tmp = self.root / ".decoder_tiny.onnx.tmp"
        export_decoder_onnx(decoder, tmp)
        path = _place(tmp, self.root / "decoder_tiny.onnx")
        inputs, outputs = decoder.io_specs()
        probe = EngineEntry("decoder-tiny", "onnxruntime", "fp32", {path.name: ""}, inputs, outputs)
        got = load_engine("onnxruntime", path, probe).run({"latents": reference.latents()})["image"]
        entry = DecoderEntry(path.name, sha256_of(path), inputs, outputs, size_bytes=size_of(path),
                             extra={"source": str(src), "source_sha256": source_sha, "params": dspec["params"],
                                    "psnr_vs_vae_db": round(psnr(got, reference.images()), 2)})  # fmt: skip
        self.log(f"tiny image decoder: written ({entry.size_bytes / 1e6:.2f} MB, "
                 f"{entry.extra['psnr_vs_vae_db']} dB vs the VAE decoder)")  # fmt: skip
        return entry
