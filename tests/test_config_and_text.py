"""YAML configs with named errors; the offline text encoder with its cache and prompt-length check."""

from __future__ import annotations

import pytest
import torch

from fewstep.compress.teacher import TeacherConfig
from fewstep.core.config import ConfigError, load_config, to_yaml
from fewstep.core.errors import PromptTooLongError


def test_yaml_round_trip_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(to_yaml(TeacherConfig(steps=7)))
    cfg = load_config(TeacherConfig, path, {"lr": 1e-3, "batch_size": None})
    assert cfg.steps == 7 and cfg.lr == 1e-3 and cfg.batch_size == 32


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("stepz: 3\n", "unknown field"),
        ("steps: many\n", "must be int"),
        ("steps: [1\n", "not valid YAML"),
        ("- 1\n", "mapping"),
    ],
)
def test_bad_yaml_names_the_field(tmp_path, text, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(TeacherConfig, path)


def test_text_encoder_shapes_cache_and_null(encoder):
    cond = encoder.encode(["a red circle on the left", "a blue square"])
    assert cond.text.shape == (2, 32, 384) and cond.text_mask.shape == (2, 32) and cond.pooled.shape == (2, 384)
    assert cond.text_mask[0].sum() > cond.text_mask[1].sum()
    again = encoder.encode(["a blue square"])
    torch.testing.assert_close(again.text[0], cond.text[1])
    assert "a blue square" in encoder._cache
    null = encoder.null(3)
    assert null.batch_size == 3 and null.text_mask[0].sum() == 2  # [CLS] [SEP]


def test_prompt_too_long_is_a_clear_error(encoder):
    with pytest.raises(PromptTooLongError, match="at most 32"):
        encoder.encode(["word " * 100])
    with pytest.raises(TypeError, match="strings"):
        encoder.encode([b"bytes"])
