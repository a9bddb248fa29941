"""Export a text encoder to ONNX with its `tokenizer.json`, so that the runtime needs neither torch nor
transformers to encode prompts: `tokenizers` + the ONNX graph give the same token states."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from torch import nn

from fewstep.models.text_encoders import TextEncoder

OPSET = 18


class _States(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def tokenizer_json(encoder: TextEncoder) -> Path:
    """The fast tokenizer's `tokenizer.json` (written next to the model by `save_pretrained` if needed)."""
    src = Path(encoder.tokenizer.name_or_path) / "tokenizer.json"
    if src.is_file():
        return src
    raise FileNotFoundError(f"{src} not found: the text encoder needs a fast tokenizer with a tokenizer.json")


def export_text_encoder(encoder: TextEncoder, out_dir: str | Path) -> tuple[Path, Path]:
    """-> (text_encoder.onnx with inputs input_ids/attention_mask (B, max_tokens) int64, tokenizer.json)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ids = torch.ones(2, encoder.max_tokens, dtype=torch.long)
    batch = torch.export.Dim("batch", min=1, max=1024)
    onnx_path = out / "text_encoder.onnx"
    torch.onnx.export(
        _States(encoder.model).eval(),
        (ids, torch.ones_like(ids)),
        str(onnx_path),
        input_names=["input_ids", "attention_mask"],
        output_names=["last_hidden_state"],
        dynamic_shapes={"input_ids": {0: batch}, "attention_mask": {0: batch}},
        opset_version=OPSET,
        dynamo=True,
        external_data=False,
    )
    tok = out / "tokenizer.json"
    shutil.copyfile(tokenizer_json(encoder), tok)
    return onnx_path, tok


def cache_dir() -> Path:
    """Where exports shared by many bundles are kept ($FEWSTEP_CACHE_DIR, default ~/.cache/fewstep)."""
    return Path(os.environ.get("FEWSTEP_CACHE_DIR") or Path.home() / ".cache" / "fewstep")


def cached_text_encoder(encoder: TextEncoder) -> tuple[Path, Path]:
    """The encoder's ONNX graph + tokenizer.json, exported once per machine and encoder (reused by every bundle)."""
    key = json.dumps({"spec": encoder.spec, "torch": torch.__version__, "opset": OPSET}, sort_keys=True)
    folder = cache_dir() / "text-encoders" / hashlib.sha256(key.encode()).hexdigest()[:16]
    onnx_path, tok = folder / "text_encoder.onnx", folder / "tokenizer.json"
    if onnx_path.is_file() and tok.is_file() and (folder / "key.json").is_file():
        return onnx_path, tok
    tmp = Path(tempfile.mkdtemp(prefix=".text-encoder.", dir=_mkdir(folder.parent)))
    try:
        export_text_encoder(encoder, tmp)
        (tmp / "key.json").write_text(key)
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)  # all files appear at once
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return onnx_path, tok


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path
