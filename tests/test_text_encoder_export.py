"""The built-in text encoder exports to ONNX; with its tokenizer.json it gives torch's token states."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.mark.slow
def test_minilm_onnx_with_tokenizer_json_matches_torch(encoder, tmp_path):
    pytest.importorskip("onnxscript", reason="ONNX export needs the export extra: pip install 'fewstep[export]'")
    import onnxruntime as ort
    from tokenizers import Tokenizer

    from fewstep.export.text_encoder import export_text_encoder

    onnx_path, tok_path = export_text_encoder(encoder, tmp_path)
    tok = Tokenizer.from_file(str(tok_path))
    tok.enable_padding(length=encoder.max_tokens)
    tok.enable_truncation(encoder.max_tokens)
    prompts = ["a red circle to the left of a small blue square", "", "a cyan cross at the top"]
    enc = tok.encode_batch(prompts)
    ids = np.array([e.ids for e in enc], dtype=np.int64)
    mask = np.array([e.attention_mask for e in enc], dtype=np.int64)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    states = session.run(None, {"input_ids": ids, "attention_mask": mask})[0]
    ref = encoder.encode(prompts)
    np.testing.assert_array_equal(mask, ref.text_mask.numpy().astype(np.int64))
    np.testing.assert_allclose(states, ref.text.numpy(), atol=5e-4)
