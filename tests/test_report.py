"""fewstep report: the Pareto frontier on hand-made points; a tiny sweep end to end (every output file, numbers that
agree with each other), reuse on a rerun, and broken systems reported instead of aborting the sweep."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from fewstep.core.config import ConfigError
from fewstep.report.pareto import pareto_front
from fewstep.report.sweep import load_sweep, parse_sweep
from tests.conftest import tiny_spec
from tests.distill_fixtures import TINY_TEACHER

pytest.importorskip("onnxscript", reason="the sweep exports an ONNX engine: pip install 'fewstep[export]'")


def test_pareto_front_on_hand_made_points():
    pts = [(10, 5.0), (1, 9.0), (5, 5.0), (5, 7.0), (20, 1.0), (30, 1.0), (2, 9.5), (float("nan"), 0.0)]
    # (1, 9) fastest; (5, 5) beats (10, 5) and (5, 7); (20, 1) beats (30, 1); (2, 9.5) is dominated by (1, 9)
    assert pareto_front(pts) == [1, 2, 4]
    assert pareto_front([]) == []
    assert pareto_front([(1, 1), (1, 1)]) == [0, 1]  # duplicates: neither dominates the other
    assert pareto_front([(3, 1), (2, 2), (1, 3)]) == [2, 1, 0]  # a trade-off curve: all on it, fastest first
    assert pareto_front([(1, math.inf), (2, 1)]) == [1]


def _checkpoint(root):
    from fewstep.models.loading import save_model
    from fewstep.models.unet_flow import build_unet_flow

    torch.manual_seed(1)
    sampler = {"rule": "euler", "timesteps": [1.0, 0.5, 0.0], "guidance": {"mode": "cfg", "default_scale": 3.0}}
    path = root / "tiny.safetensors"
    spec = tiny_spec(TINY_TEACHER, name="tiny", role="student", sampler=sampler, training={"method": "toy"})
    save_model(path, build_unet_flow(TINY_TEACHER), spec)
    return path


SWEEP = """
name: tiny sweep
data: {{n: 12}}
latency: {{runs: 2, warmup: 0, batch: 8, threads: 1, memory: {memory}}}
grid_prompts: 3
systems:
  - {{name: tiny, model: tiny.safetensors, steps: [1, 2]}}
  - {{name: tiny, model: tiny.safetensors, steps: [2000]}}
  - name: tiny
    model: tiny.safetensors
    bundle: bundle
    export: {{to: [onnx], precision: [fp32], speed_gate: false, parity_prompts: 2, calibration_prompts: 2}}
    steps: [2]
  - {{name: missing, model: no-such-model.safetensors, steps: [1]}}
"""


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    _checkpoint(root)
    (root / "sweep.yaml").write_text(SWEEP.format(memory="true"))
    return root


@pytest.fixture(scope="module")
def first_run(sweep_dir):
    from fewstep.report.run import run_report

    return run_report(load_sweep(sweep_dir / "sweep.yaml"), sweep_dir / "out", progress=False, log=lambda _m: None)


@pytest.mark.slow
def test_tiny_sweep_writes_every_output_with_consistent_numbers(first_run, sweep_dir):
    out = sweep_dir / "out"
    for name in ("results.json", "report.md", "report.html", "pareto.png", "samples_side_by_side.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["systems"] == first_run["systems"]
    by_id = {r["id"]: r for r in first_run["systems"]}
    ok = [r for r in first_run["systems"] if r["status"] == "ok"]
    assert sorted(r["id"] for r in ok) == ["tiny_onnx-fp32_2step", "tiny_torch_1step", "tiny_torch_2step"]
    for r in ok:
        assert r["nfe"] == 2 * r["steps"]  # CFG: two branches per step
        assert 0 <= r["adherence"] <= 1 and r["fid"] >= 0 and r["images_per_s"] > 0
        assert r["latency_b1"]["p99_ms"] >= r["latency_b1"]["p50_ms"] > 0
        assert r["peak_rss_mb"] > 50 and r["fresh_process"]["ok"]
        assert r["size_bytes"] > 0
        grid = np.load(out / r["samples"])
        assert grid.shape == (3, 16, 16, 3)
        assert Image.open((out / r["samples"]).with_suffix(".png")).size[0] > 3 * 16
    # the engine is the torch model exported: same prompts and seeds -> the same quality numbers
    assert by_id["tiny_onnx-fp32_2step"]["fid"] == pytest.approx(by_id["tiny_torch_2step"]["fid"], rel=1e-3)
    assert by_id["tiny_onnx-fp32_2step"]["backend"] == "onnxruntime"
    # the frontier recorded is the frontier of the recorded numbers
    pts = [(r["latency_b1"]["p50_ms"], r["fid"]) for r in ok]
    assert sorted(first_run["pareto"]["fid"]) == sorted(ok[i]["id"] for i in pareto_front(pts))
    # every measured system is a row of the report, with its FID as printed
    md = (out / "report.md").read_text()
    for r in ok:
        assert f"| {r['fid']:.2f} |" in md
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html and "<table>" in html  # self-contained
    side = Image.open(out / "samples_side_by_side.png")
    assert side.size[1] >= len(ok) * 16 * 4  # a row per system


@pytest.mark.slow
def test_broken_systems_are_reported_not_fatal(first_run):
    by_id = {r["id"]: r for r in first_run["systems"]}
    assert by_id["missing_torch_1step"]["status"] == "failed"
    assert "no-such-model" in by_id["missing_torch_1step"]["reason"]
    assert by_id["tiny_torch_2000step"]["status"] == "unsupported"
    assert "steps" in by_id["tiny_torch_2000step"]["reason"]


@pytest.mark.slow
def test_rerun_reuses_measured_systems_and_retries_failures(first_run, sweep_dir):
    from fewstep.report.run import run_report

    cfg = load_sweep(sweep_dir / "sweep.yaml")
    again = run_report(cfg, sweep_dir / "out", progress=False, log=lambda _m: None)
    ok_or_final = [r for r in first_run["systems"] if r["status"] != "failed"]
    assert again["reused"] == len(ok_or_final)  # the failed system was tried again, the rest reused
    for old, new in zip(first_run["systems"], again["systems"], strict=True):
        if old["status"] == "ok":
            assert new["measured_at"] == old["measured_at"] and new["fid"] == old["fid"]


@pytest.mark.slow
def test_a_broken_engine_is_a_row_of_the_report(first_run, sweep_dir, tmp_path):
    from fewstep.report.run import run_report

    bundle = tmp_path / "bundle"
    shutil.copytree(sweep_dir / "bundle", bundle)
    engine = next(p for p in bundle.rglob("*.onnx") if "text" not in p.name)
    engine.write_bytes(b"not an onnx file")
    data = {"name": "broken", "data": {"n": 10}, "latency": {"runs": 1, "warmup": 0, "memory": False},
            "grid_prompts": 2, "systems": [{"name": "tiny", "bundle": str(bundle), "steps": [2]},
                                           {"name": "tiny", "model": str(sweep_dir / "tiny.safetensors"),
                                            "steps": [1]}]}  # fmt: skip
    result = run_report(parse_sweep(data), tmp_path / "out", progress=False, log=lambda _m: None)
    rows = {r["id"]: r for r in result["systems"]}
    assert rows["tiny_onnx-fp32_2step"]["status"] == "failed"
    assert "sha256" in rows["tiny_onnx-fp32_2step"]["reason"]
    assert rows["tiny_torch_1step"]["status"] == "ok"
    assert "failed" in (tmp_path / "out" / "report.md").read_text()


def test_bad_sweeps_are_clear():
    with pytest.raises(ConfigError, match="systems"):
        parse_sweep({"name": "x", "systems": []})
    with pytest.raises(ConfigError, match="unknown field"):
        parse_sweep({"name": "x", "systems": [{"name": "a", "model": "m"}], "colour": 1})
    with pytest.raises(ConfigError, match="give `model`"):
        parse_sweep({"name": "x", "systems": [{"name": "a"}]})
    with pytest.raises(ConfigError, match="inception_weights"):
        parse_sweep({"name": "x", "data": {"dataset": "imagefolder", "path": "d"},
                     "systems": [{"name": "a", "model": "m"}]})  # fmt: skip
    with pytest.raises(ConfigError, match="same thing"):
        parse_sweep({"name": "x", "systems": [{"name": "a", "model": "m"}, {"name": "a", "model": "n"}]})
    with pytest.raises(ConfigError, match="n must be"):
        parse_sweep({"name": "x", "data": {"n": 3}, "systems": [{"name": "a", "model": "m"}]})


def test_report_cli_example_parses_and_help_teaches(capsys, tmp_path):
    from fewstep.cli import main

    assert main(["report", "--example"]) == 0
    example = capsys.readouterr().out
    (tmp_path / "s.yaml").write_text(example)
    cfg = load_sweep(tmp_path / "s.yaml")
    assert {s.name for s in cfg.systems} >= {"teacher", "slimflow"}
    with pytest.raises(SystemExit):
        main(["report", "--help"])
    assert "pareto.png" in capsys.readouterr().out


def test_own_image_folder_sweeps_like_the_built_in_data(first_run, sweep_dir, tmp_path):
    """A user's folder (metadata.jsonl) is the prompt set and FID reference; adherence is left out, not faked."""
    from fewstep.report.run import run_report

    data = tmp_path / "my-images"
    data.mkdir()
    rng = np.random.default_rng(0)
    lines = []
    for i in range(10):
        Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(data / f"{i}.png")
        lines.append(json.dumps({"file_name": f"{i}.png", "text": f"a picture number {i}"}))
    (data / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    sweep = {"name": "mine", "data": {"dataset": "imagefolder", "path": "my-images", "n": 10},
             "metrics": {"judge": "shapes32-judge"}, "latency": {"runs": 1, "warmup": 0, "memory": False},
             "grid_prompts": 2, "systems": [{"name": "tiny", "model": str(sweep_dir / "tiny.safetensors"),
                                             "steps": [1]}]}  # fmt: skip
    result = run_report(parse_sweep(sweep, base_dir=str(tmp_path)), tmp_path / "out", progress=False,
                        log=lambda _m: None)  # fmt: skip
    (row,) = result["systems"]
    assert row["status"] == "ok" and row["adherence"] is None and row["fid"] > 0
    assert result["reference"]["dataset"] == "imagefolder" and result["reference"]["adherence"] == "not measured"
    assert "| - |" in (tmp_path / "out" / "report.md").read_text()
