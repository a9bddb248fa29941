"""A CLIP text encoder loads from a local directory (nothing downloaded); a missing one is named."""

from __future__ import annotations

import pytest


def _tiny_clip_dir(root):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    chars = list(bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab.update({"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1})
    tok = CLIPTokenizer(vocab=vocab, merges=[])
    tok.save_pretrained(root / "tokenizer")
    cfg = CLIPTextConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=77, bos_token_id=len(vocab) - 2,
                         eos_token_id=len(vocab) - 1)  # fmt: skip
    CLIPTextModel(cfg).save_pretrained(root / "text_encoder")
    return root


def test_clip_from_local_pipeline_layout(tmp_path):
    from fewstep.models.text_encoders import clip_from_dir, load_text_encoder

    enc = clip_from_dir(_tiny_clip_dir(tmp_path), max_tokens=16)
    cond = enc.encode(["a cat", "a dog on a mat"])
    assert cond.text.shape == (2, 16, 32) and cond.pooled.shape == (2, 32)
    assert enc.spec == {"kind": "clip", "path": str(tmp_path), "max_tokens": 16}
    again = load_text_encoder(enc.spec).encode(["a cat"])
    assert (again.text[0] - cond.text[0]).abs().max() < 1e-5


def test_missing_clip_directory_is_named(tmp_path):
    from fewstep.models.text_encoders import clip_from_dir

    with pytest.raises(FileNotFoundError, match="does not exist"):
        clip_from_dir(tmp_path / "nope")
    (tmp_path / "text_encoder").mkdir()
    with pytest.raises(FileNotFoundError, match=r"lacks config\.json"):
        clip_from_dir(tmp_path)
