"""A pipeline's prompt encoding as one graph from token ids, so the torch-free runtime reproduces it.

diffusers' `encode_prompt` combines its text encoders differently per family; this module does exactly the
same from token ids (tested against `encode_prompt`):
- SD 1.x/2.x: CLIP's last hidden state;
- SDXL: both CLIPs' penultimate hidden states side by side, pooled = the second's projected embedding;
- SD3: both CLIPs' penultimate states side by side, padded to the joint width, followed by T5's states (zeros
  when the pipeline has no T5); pooled = both projected embeddings side by side.
Inputs are `input_ids`, `input_ids_2`, `input_ids_3` (one per tokenizer, padded to its max length).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from fewstep.export.targets.onnx import export_graph

FAMILIES = {"StableDiffusionPipeline": "sd", "StableDiffusionXLPipeline": "sdxl", "StableDiffusion3Pipeline": "sd3"}


class PipelinePromptGraph(nn.Module):
    def __init__(self, pipe, t5_tokens: int = 256):
        super().__init__()
        self.family = FAMILIES[type(pipe).__name__]
        names = [n for n in ("text_encoder", "text_encoder_2", "text_encoder_3") if getattr(pipe, n, None) is not None]
        self.encoders = nn.ModuleList([getattr(pipe, n).eval() for n in names])
        self.tokenizers = [getattr(pipe, n.replace("text_encoder", "tokenizer")) for n in names]
        self.max_lengths = [int(t.model_max_length) for t in self.tokenizers]
        if self.family == "sd3":
            self.has_t5 = len(names) == 3
            self.max_lengths = [*self.max_lengths[:2], *([t5_tokens] if self.has_t5 else [])]
            self.t5_tokens, self.joint_dim = t5_tokens, int(pipe.transformer.config.joint_attention_dim)
        self.input_names = ["input_ids", "input_ids_2", "input_ids_3"][: len(names)]
        self.output_names = ["text"] if self.family == "sd" else ["text", "pooled"]

    def forward(self, input_ids: torch.Tensor, input_ids_2: torch.Tensor | None = None,
                input_ids_3: torch.Tensor | None = None):  # fmt: skip
        ids = (input_ids, input_ids_2, input_ids_3)
        if self.family == "sd":
            return self.encoders[0](ids[0])[0]
        states, pooled = [], []
        for enc, x in zip(self.encoders[:2], ids[:2], strict=True):
            out = enc(x, output_hidden_states=True)
            states.append(out.hidden_states[-2])
            pooled.append(out[0])
        text = torch.cat(states, dim=-1)
        if self.family == "sdxl":
            return text, pooled[-1]
        text = torch.nn.functional.pad(text, (0, self.joint_dim - text.shape[-1]))
        if self.has_t5:
            t5 = self.encoders[2](ids[2])[0]
        else:
            t5 = torch.zeros(text.shape[0], self.t5_tokens, self.joint_dim, dtype=text.dtype)
        return torch.cat([text, t5], dim=-2), torch.cat(pooled, dim=-1)

    def token_ids(self, prompts: list[str]) -> list[torch.Tensor]:
        """What the pipeline's tokenizers give (padded to max length, truncated as diffusers does)."""
        return [
            tok(prompts, padding="max_length", max_length=n, truncation=True, return_tensors="pt").input_ids
            for tok, n in zip(self.tokenizers, self.max_lengths, strict=True)
        ]

    def tokenizer_entries(self) -> list[dict]:
        return [
            {"input": name, "max_tokens": n, "pad_id": int(tok.pad_token_id or 0)}
            for name, tok, n in zip(self.input_names, self.tokenizers, self.max_lengths, strict=True)
        ]


def export_prompt_graph(graph: PipelinePromptGraph, path) -> None:
    """ONNX graph: int64 token ids (B, L_k) per tokenizer -> text (B, L, D) [+ pooled (B, P)]."""

    ids = graph.token_ids(["a", "b"])
    export_graph(graph, tuple(ids), Path(path), graph.input_names, graph.output_names, max_batch=1024)
