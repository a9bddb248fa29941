"""Prompt encoding without torch: `tokenizers` + the bundle's text-encoder ONNX graph, with a bounded LRU cache."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from fewstep.core.errors import MissingExtra, PromptTooLongError, install_hint
from fewstep.core.manifest import TextEncoderEntry, TokenizerEntry, verify_file


class RuntimeTextEncoder:
    """`encode(prompts) -> {"text": (B, L, D), "text_mask": (B, L)[, "pooled": (B, P)][, "extra_ids": (B, 6)]}`, as the
    torch encoder. A pipeline's prompt graph (spec `tokenizers`) takes one padded id row per tokenizer."""

    def __init__(self, onnx_path: Path, tokenizer_paths: list[Path], spec: TextEncoderEntry, threads: int | None = None,
                 cache_size: int = 4096):  # fmt: skip
        try:
            import onnxruntime as ort  # runtime extra
            from tokenizers import Tokenizer  # runtime extra
        except ImportError as e:
            raise MissingExtra(f"prompt encoding needs onnxruntime and tokenizers: {install_hint('runtime')}") from e
        self.spec = spec
        self.max_tokens = spec.max_tokens
        self.unmasked = spec.reads_every_position
        self.tokenizers: list[tuple[Any, TokenizerEntry]] = []
        for path, entry in zip(tokenizer_paths, spec.tokenizers, strict=True):
            tok = Tokenizer.from_file(str(path))
            tok.no_truncation()
            tok.no_padding()
            self.tokenizers.append((tok, entry))
        self.tokenizer, self.pad_id = self.tokenizers[0][0], spec.tokenizers[0].pad_id
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        opts.log_severity_level = 3
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")  # idle most of the time: do not spin
        self.session = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
        self.cache_size = cache_size
        self._cache: OrderedDict[str, dict[str, np.ndarray]] = OrderedDict()
        self.output_names = [o.name for o in self.session.get_outputs()]

    @classmethod
    def from_bundle(cls, root: Path, spec: TextEncoderEntry, threads: int | None = None) -> RuntimeTextEncoder:
        """The bundle's prompt encoder, every file checked against its sha256 first."""
        tokenizers = [verify_file(root, t.file, t.sha256) for t in spec.tokenizers]
        for name, sha in spec.data_files.items():  # external weights: ONNX Runtime reads them beside the graph
            verify_file(root, name, sha)
        return cls(verify_file(root, spec.file, spec.sha256), tokenizers, spec, threads)

    def check(self, prompt: str) -> None:
        """Raise (TypeError / PromptTooLongError) for a prompt the model cannot take."""
        for k in range(len(self.tokenizers)):
            self._ids(prompt, k)

    def _ids(self, prompt: str, which: int = 0) -> list[int]:
        if not isinstance(prompt, str):
            raise TypeError(f"prompts must be strings; got {type(prompt).__name__}")
        tok, entry = self.tokenizers[which]
        ids: list[int] = list(tok.encode(prompt).ids)
        limit = entry.max_tokens
        if len(ids) > limit:
            raise PromptTooLongError(
                f"prompt has {len(ids)} tokens but the model takes at most {limit} "
                f"(special tokens included); shorten it: {prompt[:80]!r}{'...' if len(prompt) > 80 else ''}"
            )
        return ids

    def _encode_uncached(self, prompts: list[str]) -> list[dict[str, np.ndarray]]:
        feeds: dict[str, np.ndarray] = {}
        for k, (_, entry) in enumerate(self.tokenizers):
            n = entry.max_tokens
            ids = np.full((len(prompts), n), entry.pad_id, dtype=np.int64)
            mask = np.zeros((len(prompts), n), dtype=np.int64)
            for i, p in enumerate(prompts):
                token_ids = self._ids(p, k)
                ids[i, : len(token_ids)] = token_ids
                mask[i, : len(token_ids)] = 1
            feeds[entry.input] = ids
            if k == 0:
                feeds["attention_mask"] = mask
        names = {i.name for i in self.session.get_inputs()}
        outs = self.session.run(None, {k: v for k, v in feeds.items() if k in names})
        states = outs[0].astype(np.float32)
        text_mask = np.ones(states.shape[:2]) if self.unmasked else feeds["attention_mask"]
        rows: list[dict[str, np.ndarray]] = [{"text": states[i], "text_mask": text_mask[i].astype(np.float32)}
                                             for i in range(len(prompts))]  # fmt: skip
        if "pooled" in self.output_names:
            pooled = outs[self.output_names.index("pooled")].astype(np.float32)
            for i, row in enumerate(rows):
                row["pooled"] = pooled[i]
        if self.spec.extra_ids is not None:  # SDXL: the same size/crop ids for every prompt
            for row in rows:
                row["extra_ids"] = np.asarray(self.spec.extra_ids, np.float32)
        return rows

    def null(self) -> dict[str, np.ndarray]:
        """The unconditional branch of CFG for one image: the empty prompt, or zeros where the pipeline forces them
        (SDXL's force_zeros_for_empty_prompt; the mask and size/crop ids stay)."""
        cond = self.encode([""])
        if self.spec.null_is_zeros:
            cond = {k: v if k in ("text_mask", "extra_ids") else np.zeros_like(v) for k, v in cond.items()}
        return cond

    def encode(self, prompts: list[str]) -> dict[str, np.ndarray]:
        for p in prompts:
            self.check(p)  # every prompt checked before any work
        missing = list(dict.fromkeys(p for p in prompts if p not in self._cache))
        if missing:
            for p, row in zip(missing, self._encode_uncached(missing), strict=True):
                self._cache[p] = row
                if len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        rows = []
        for p in prompts:
            if p not in self._cache:  # evicted within this call (more distinct prompts than the cache holds)
                rows.append(self._encode_uncached([p])[0])
                continue
            self._cache.move_to_end(p)
            rows.append(self._cache[p])
        return {k: np.stack([r[k] for r in rows]) for k in rows[0]}
