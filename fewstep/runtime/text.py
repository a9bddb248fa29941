"""Prompt encoding without torch: `tokenizers` + the bundle's text-encoder ONNX graph, with a bounded LRU cache."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np


class PromptTooLongError(ValueError):
    """A prompt with more tokens than the model was trained on."""


class RuntimeTextEncoder:
    """`encode(prompts) -> {"text": (B, L, D) float32, "text_mask": (B, L) float32}`, as the torch encoder."""

    def __init__(self, onnx_path: Path, tokenizer_path: Path, spec: dict, threads: int | None = None,
                 cache_size: int = 4096):  # fmt: skip
        try:
            import onnxruntime as ort
            from tokenizers import Tokenizer
        except ImportError as e:
            raise ImportError("prompt encoding needs `pip install 'fewstep[runtime]'` (onnxruntime, tokenizers)") from e
        self.spec = spec
        self.max_tokens = int(spec["max_tokens"])
        self.unmasked = spec.get("kind") == "clip"  # SD-family CLIP runs over all positions, as it was trained
        self.tokenizer = Tokenizer.from_file(str(tokenizer_path))
        self.pad_id = int(spec.get("pad_id", 0))  # the exporter records the HF tokenizer's pad id
        self.tokenizer.no_truncation()
        self.tokenizer.no_padding()
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        opts.log_severity_level = 3
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")  # idle most of the time: do not spin
        self.session = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
        self.cache_size = cache_size
        self._cache: OrderedDict[str, tuple[np.ndarray, np.ndarray]] = OrderedDict()

    def check(self, prompt: str) -> None:
        """Raise (TypeError / PromptTooLongError) for a prompt the model cannot take."""
        self._ids(prompt)

    def _ids(self, prompt: str) -> list[int]:
        if not isinstance(prompt, str):
            raise TypeError(f"prompts must be strings; got {type(prompt).__name__}")
        ids = self.tokenizer.encode(prompt).ids
        if len(ids) > self.max_tokens:
            raise PromptTooLongError(
                f"prompt has {len(ids)} tokens but the model takes at most {self.max_tokens} "
                f"(special tokens included); shorten it: {prompt[:80]!r}{'...' if len(prompt) > 80 else ''}"
            )
        return ids

    def _encode_uncached(self, prompts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        ids = np.full((len(prompts), self.max_tokens), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(prompts), self.max_tokens), dtype=np.int64)
        for i, p in enumerate(prompts):
            row = self._ids(p)
            ids[i, : len(row)] = row
            mask[i, : len(row)] = 1
        feeds = {"input_ids": ids} if self.unmasked else {"input_ids": ids, "attention_mask": mask}
        names = {i.name for i in self.session.get_inputs()}
        states = self.session.run(None, {k: v for k, v in feeds.items() if k in names})[0].astype(np.float32)
        return states, (np.ones_like(mask) if self.unmasked else mask).astype(np.float32)

    def encode(self, prompts: list[str]) -> dict[str, np.ndarray]:
        for p in prompts:
            self._ids(p)  # every prompt checked before any work
        missing = list(dict.fromkeys(p for p in prompts if p not in self._cache))
        if missing:
            states, masks = self._encode_uncached(missing)
            for p, s, m in zip(missing, states, masks, strict=True):
                self._cache[p] = (s, m)
                if len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        rows = []
        for p in prompts:
            if p not in self._cache:  # evicted within this call (more distinct prompts than the cache holds)
                s, m = self._encode_uncached([p])
                rows.append((s[0], m[0]))
                continue
            self._cache.move_to_end(p)
            rows.append(self._cache[p])
        return {"text": np.stack([r[0] for r in rows]), "text_mask": np.stack([r[1] for r in rows])}
