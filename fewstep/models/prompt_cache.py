"""The prompt-encoder base every torch text encoder shares: prompts checked against the token limit before any
work, and a bounded LRU of each distinct prompt's embedding."""

from __future__ import annotations

from collections import OrderedDict

import torch

from fewstep.core.errors import PromptTooLongError
from fewstep.models.contract import Cond


class CachedPromptEncoder:
    """`encode(prompts) -> Cond` with prompts checked against `max_tokens` before any work and a bounded LRU of
    the embedding of each distinct prompt. Subclasses give `token_limits` and `_encode_uncached`."""

    def __init__(self, spec: dict, max_tokens: int, cache_size: int):
        self.spec = dict(spec, max_tokens=max_tokens)
        self.max_tokens = max_tokens
        self.cache_size = cache_size
        self._cache: OrderedDict[str, Cond] = OrderedDict()

    def token_limits(self, prompt: str) -> list[tuple[int, int]]:
        """(tokens the prompt takes, most allowed) for every tokenizer the encoder runs."""
        raise NotImplementedError

    def _encode_uncached(self, prompts: list[str]) -> Cond:
        raise NotImplementedError

    def _check(self, prompts: list[str]) -> None:
        for p in prompts:
            if not isinstance(p, str):
                raise TypeError(f"prompts must be strings; got {type(p).__name__}")
            for n, limit in self.token_limits(p):
                if n > limit:
                    raise PromptTooLongError(
                        f"prompt has {n} tokens but the model takes at most {limit} "
                        f"(special tokens included); shorten it: {p[:80]!r}{'...' if len(p) > 80 else ''}"
                    )

    def encode(self, prompts: list[str] | str, batch_size: int = 256) -> Cond:
        """Prompts -> Cond(text (B, max_tokens, dim), text_mask (B, max_tokens), pooled, ...)."""
        if isinstance(prompts, str):
            prompts = [prompts]
        self._check(prompts)
        missing = list(dict.fromkeys(p for p in prompts if p not in self._cache))
        for i in range(0, len(missing), batch_size):
            chunk = missing[i : i + batch_size]
            cond = self._encode_uncached(chunk)
            for j, p in enumerate(chunk):
                self._cache[p] = cond.index(slice(j, j + 1))._map(torch.clone)  # no view of the whole chunk
                if len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        rows = []
        for p in prompts:
            row = self._cache.get(p)
            if row is None:  # evicted within this very call (more distinct prompts than the cache holds)
                row = self._encode_uncached([p])
            else:
                self._cache.move_to_end(p)
            rows.append(row)
        return Cond.cat(rows)

    def null(self, batch_size: int = 1) -> Cond:
        """The unconditional (empty prompt) condition used for classifier-free guidance."""
        return self.encode([""] * batch_size)
