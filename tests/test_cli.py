"""The `fewstep` command: helpful --help, generation, and one-line errors (exit 2) for bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import tiny_spec
from PIL import Image

from fewstep.cli import main
from fewstep.commands import COMMANDS
from fewstep.models.loading import save_model
from fewstep.models.presets import get_preset
from fewstep.models.unet_flow import build_unet_flow


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A small untrained 32x32 model with the built-in text encoder, saved like a trained one."""
    torch.manual_seed(0)
    preset = get_preset("student-xs")
    path = tmp_path_factory.mktemp("ckpt") / "model.safetensors"
    save_model(path, build_unet_flow(preset.unet), tiny_spec(preset.unet, name="xs"))
    return path


def test_console_script_help():
    out = subprocess.run([sys.executable, "-m", "fewstep.cli", "--help"], capture_output=True, text=True, check=True)
    assert "train-teacher" in out.stdout and "generate" in out.stdout


@pytest.mark.parametrize("command", [c.name for c in COMMANDS])
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    assert len(capsys.readouterr().out) > 200


def test_generate_writes_a_grid_and_is_deterministic(checkpoint, tmp_path, capsys):
    args = [
        "generate",
        str(checkpoint),
        "--prompt",
        "a red circle",
        "--prompt",
        "a blue square",
        "--seeds",
        "0,1,2",
        "--steps",
        "2",
    ]
    assert main([*args, "--out", str(tmp_path / "a.png")]) == 0
    assert main([*args, "--out", str(tmp_path / "b.png")]) == 0
    a, b = np.asarray(Image.open(tmp_path / "a.png")), np.asarray(Image.open(tmp_path / "b.png"))
    assert np.array_equal(a, b) and a.shape[0] >= 2 * 32 * 4
    assert "2 prompt(s) x 3 seed(s)" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--steps", "0"], "steps must be an integer in"),
        (["--guidance", "100"], "guidance must be in"),
        (["--prompt", "word " * 60], "tokens but the model takes at most 32"),
        (["--seeds", "-1"], "seeds must be integers"),
    ],
)
def test_generate_bad_input_is_one_clear_line(checkpoint, tmp_path, capsys, extra, message):
    code = main(["generate", str(checkpoint), "--prompt", "a red circle", *extra, "--out", str(tmp_path / "x.png")])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "x.png").exists()


def test_missing_model_and_bad_prompt_file(tmp_path, capsys):
    assert main(["generate", str(tmp_path / "none.safetensors"), "--prompt", "x"]) == 2
    assert "neither a shipped model" in capsys.readouterr().err
    bad = tmp_path / "p.txt"
    bad.write_bytes(b"\xff\xfe not utf8")
    assert main(["generate", "shapes32-teacher", "--prompts-file", str(bad)]) == 2
    assert "not UTF-8" in capsys.readouterr().err


def test_bad_flag_value_exits_2_with_hint(capsys):
    with pytest.raises(SystemExit) as e:
        main(["train-teacher", "--steps", "lots"])
    assert e.value.code == 2 and "--help" in capsys.readouterr().err


def test_boolean_config_fields_are_on_off_flags(tmp_path, capsys):
    """--flag true|false sets a bool field (as `export --speed-gate false`); unset keeps the YAML's value."""
    main(["distill", "guidance", "--then-progressive", "true", "--start-steps", "16", "--student-steps", "4",
          "--print-config"])  # fmt: skip
    assert "then_progressive: true" in capsys.readouterr().out
    yaml = tmp_path / "g.yaml"
    yaml.write_text("then_progressive: true\nstart_steps: 8\nstudent_steps: 2\n")
    main(["distill", "guidance", "--config", str(yaml), "--print-config"])
    assert "then_progressive: true" in capsys.readouterr().out
    main(["distill", "guidance", "--config", str(yaml), "--then-progressive", "off", "--print-config"])
    assert "then_progressive: false" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        main(["distill", "guidance", "--then-progressive", "maybe", "--print-config"])
    assert e.value.code == 2 and "expected true or false" in capsys.readouterr().err


def test_info_lists_presets_and_ratios(capsys):
    assert main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    params = {r["preset"]: r["params"] for r in info["presets"]}
    assert 0.2 < params["student-s"] / params["teacher"] <= 0.25  # SlimFlow target: at most 1/4
    assert 0.08 < params["student-xs"] / params["teacher"] < 0.12
    assert all(r["gflop_per_image"] > 0 for r in info["presets"])


def test_eval_writes_json_with_labelled_domain_fid(checkpoint, tmp_path, capsys):
    out = tmp_path / "eval"
    assert (
        main(
            [
                "eval",
                str(checkpoint),
                "--n",
                "12",
                "--setting",
                "euler:1:1",
                "--setting",
                "euler:2:3",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    result = json.loads((out / "eval.json").read_text())
    assert result["feature_space"].startswith("domain FID") and result["images"] == 12
    assert [s["label"] for s in result["systems"]] == ["euler-1step-w1", "euler-2step-w3"]
    assert [s["nfe"] for s in result["systems"]] == [1, 4]  # 2 steps x 2 CFG branches
    for s in result["systems"]:
        assert s["fid"] > 0 and 0 <= s["adherence"] <= 1
        verdicts = s["adherent_per_prompt"]  # prompt i's verdict, for paired comparisons
        assert len(verdicts) == 12 and verdicts.count("1") / 12 == s["adherence"]
    assert (out / "samples_euler-2step-w3.png").is_file()
    assert "domain FID" in capsys.readouterr().out


def test_demo_sweep_covers_the_chain_and_stages_are_reused(tmp_path, capsys):
    from fewstep.commands.demo import Stages, demo_sweep
    from fewstep.report.sweep import expand, parse_sweep

    cfg = parse_sweep(demo_sweep(tmp_path / "student" / "model.safetensors", tmp_path / "bundle", 128, 2))
    units = expand(cfg, {str((tmp_path / "bundle").resolve()): ["onnx-fp32", "onnx-int8-ort", "openvino-fp32"]})
    teacher = sorted(u.steps for u in units if u.system.name == "teacher")
    assert teacher == [1, 2, 4, 50] and cfg.data.n == 128
    assert {u.system.model for u in units} >= {"shapes32-slimflow", "shapes32-progressive-4step"}
    assert sum(u.engine is not None for u in units) == 3  # every engine of the demo bundle
    calls = []
    stages = Stages(tmp_path)
    stages.run(1, "distill", "x", {"steps": 5}, lambda: calls.append(1))
    stages.run(1, "distill", "x", {"steps": 5}, lambda: calls.append(2))  # same settings: reused
    stages.run(1, "distill", "x", {"steps": 6}, lambda: calls.append(3))  # other settings: run again
    assert calls == [1, 3]
    assert "reused" in capsys.readouterr().out


def test_resume_continues_from_the_runs_saved_config(tmp_path, capsys, tiny_teacher_files):
    """`--resume --out RUN` needs no flag of the first run again; --steps may grow, weight-shaping settings may not."""
    from fewstep.models.checkpoint import read_meta

    teacher, student, pairs = tiny_teacher_files
    run = tmp_path / "run"
    first = ["distill", "reflow", "--teacher", str(teacher), "--student", str(student), "--init", "sliced",
             "--pairs", str(pairs), "--batch-size", "4", "--warmup-steps", "1", "--sample-every", "0",
             "--checkpoint-every", "2", "--no-progress", "--steps", "2", "--verdict-prompts", "4",
             "--out", str(run)]  # fmt: skip
    assert main(first) == 0
    assert json.loads((run / "verdict.json").read_text())["prompts"] == 4  # every run ends with its verdict
    assert main(["distill", "reflow", "--resume", "--out", str(run), "--steps", "4", "--no-progress"]) == 0
    assert read_meta(run / "model.safetensors")["training"]["step"] == 4
    capsys.readouterr()
    assert main(["distill", "reflow", "--resume", "--out", str(run), "--lr", "0.1"]) == 2
    err = capsys.readouterr().err
    assert "--lr 0.1 (the run has 0.0002)" in err and "May change on resume: --steps" in err
    assert main(["distill", "instaflow", "--resume", "--out", str(run)]) == 2  # another method's run
    assert "holds a `fewstep distill reflow` run" in capsys.readouterr().err
    assert main(["distill", "reflow", "--resume", "--out", str(run), "--print-config"]) == 0
    assert f"pairs: {pairs}" in capsys.readouterr().out  # the run's own settings
