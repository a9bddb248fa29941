"""Export to engine bundles: parity of every CPU backend with torch for each sampler rule and guidance mode,
calibration from the student's own sampler, gates, bundle round trip, sha256 checks, idempotent re-export."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from tests.conftest import tiny_spec
from tests.distill_fixtures import TINY_TEACHER

pytest.importorskip("onnxscript", reason="export needs the export extra: pip install 'fewstep[export]'")
pytest.importorskip("openvino", reason="export needs the export extra: pip install 'fewstep[export]'")

from fewstep.core.fsio import sha256_of
from fewstep.core.manifest import IN_PROGRESS, BundleError, read_manifest
from fewstep.export.bundle import BundleExport, ExportError
from fewstep.export.config import ExportConfig
from fewstep.models.loading import save_model
from fewstep.models.pipeline import TorchPipeline
from fewstep.models.unet_flow import build_unet_flow
from fewstep.runtime import Generator

PROMPTS = ["a red circle on the left", "a picture of a small blue square above a green cross", ""]

# sampler rule x guidance mode, each a tiny student spec
MODES = {
    "euler-cfg": (
        {},
        {"rule": "euler", "timesteps": [1.0, 0.5, 0.0], "guidance": {"mode": "cfg", "default_scale": 3.0}},
    ),
    "euler-embedded": (
        {"time_cond_proj_dim": 8},
        {
            "rule": "euler",
            "timesteps": [1.0, 0.0],
            "guidance": {"mode": "embedded", "default_scale": 2.5, "range": [1.0, 6.0]},
        },
    ),
    "euler-none": ({}, {"rule": "euler", "timesteps": [1.0, 0.0], "guidance": {"mode": "none", "baked_scale": 3.0}}),
    "consistency-none": (
        {},
        {"rule": "consistency", "timesteps": [1.0, 0.5], "grid": 50, "guidance": {"mode": "none", "baked_scale": 3.0}},
    ),
    "interval-none": (  # MeanFlow / shortcut students: the step size h = t - s is the scalar input
        {"time_cond_proj_dim": 8},
        {"rule": "interval", "timesteps": [1.0, 0.75, 0.0], "guidance": {"mode": "none", "baked_scale": 3.0}},
    ),
}
FAST = {"speed_gate": False, "speed_runs": 3, "parity_prompts": 3, "calibration_prompts": 6, "max_batch": 4}


def _checkpoint(root, mode: str):
    unet_extra, sampler = MODES[mode]
    unet = dict(TINY_TEACHER, **unet_extra)
    torch.manual_seed(1)
    path = root / f"{mode}.safetensors"
    save_model(path, build_unet_flow(unet), tiny_spec(unet, name=f"tiny-{mode}", role="student", sampler=sampler))
    return path


def _export(ckpt, out, **cfg):
    return BundleExport(str(ckpt), out, ExportConfig(**{**FAST, **cfg}), "test", log=lambda _m: None).run().to_json()


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("export-ckpts")
    return {m: _checkpoint(root, m) for m in MODES}


@pytest.fixture(scope="module")
def cfg_bundle(ckpts, tmp_path_factory):
    out = tmp_path_factory.mktemp("bundle") / "cfg"
    return out, _export(ckpts["euler-cfg"], out, to=("onnx", "openvino"), precision=("fp32", "int8"))


@pytest.mark.slow
@pytest.mark.parametrize("mode", list(MODES))
def test_every_cpu_backend_matches_torch_for_each_rule_and_guidance_mode(ckpts, tmp_path, mode):
    manifest = _export(ckpts[mode], tmp_path / "b", to=("onnx", "openvino"), precision=("fp32",))
    assert [e["id"] for e in manifest["engines"]] == ["onnx-fp32", "openvino-fp32"]
    pipe = TorchPipeline.from_checkpoint(ckpts[mode])
    seeds = [5, 6, 7]
    ref = pipe.generate(PROMPTS, seeds)
    for engine in manifest["engines"]:
        assert engine["gates"]["parity"]["passed"] and engine["gates"]["parity"]["psnr_db"] >= 60
        gen = Generator.from_bundle(tmp_path / "b", engine=engine["id"])
        out = gen.generate(PROMPTS, seeds)
        assert out.shape == ref.shape and out.dtype == np.uint8
        assert np.abs(out.astype(int) - ref.astype(int)).max() <= 1, engine["id"]
        if manifest["sampler"]["guidance"]["mode"] != "cfg":  # no unconditional branch to put it in
            with pytest.raises(ValueError, match="negative prompt cannot be honoured"):
                gen.generate(PROMPTS, seeds, negative_prompt="a blue square")
    if mode == "euler-embedded":  # the w input reaches the engine: another scale, another image
        gen = Generator.from_bundle(tmp_path / "b", engine="onnx-fp32")
        other = pipe.generate(PROMPTS, seeds, guidance=5.0)
        assert np.abs(gen.generate(PROMPTS, seeds, guidance=5.0).astype(int) - other.astype(int)).max() <= 1
        assert not np.array_equal(other, ref)
        assert "guidance" in manifest["engines"][0]["inputs"]
    if mode == "interval-none":  # the step size reaches the engine: the same model stepped as Euler differs
        assert "guidance" in manifest["engines"][0]["inputs"]
        as_euler = TorchPipeline(pipe.model, {**pipe.spec, "sampler": {**pipe.spec["sampler"], "rule": "euler"}},
                                 pipe.encoder)  # fmt: skip
        with pytest.raises(ValueError, match="embedded guidance input"):  # Euler gives it no h
            as_euler.generate(PROMPTS, seeds)


@pytest.mark.slow
def test_int8_calibration_covers_every_timestep_and_both_cfg_branches(cfg_bundle):
    _, manifest = cfg_bundle
    int8 = {e["id"]: e for e in manifest["engines"] + manifest["refused"]}
    assert {"onnx-int8-nncf", "openvino-int8"} <= set(int8)
    written = [e for e in manifest["engines"] if e["precision"] == "int8"]
    assert written, "no int8 engine passed its gates"
    calib = written[0]["calibration"]
    assert calib["timesteps"] == [1.0, 0.5]  # the student's schedule minus its final t = 0
    assert calib["guidance_mode"] == "cfg"
    assert calib["samples"] == 2 * 2 * FAST["calibration_prompts"]  # 2 steps x (cond + uncond) x prompts
    assert written[0]["info"]["kept_float"]  # first/last conv and time embedding stay in float


def test_calibration_records_null_and_conditional_rows(ckpts):
    from fewstep.export.calibration import record_sampler_inputs

    pipe = TorchPipeline.from_checkpoint(ckpts["euler-cfg"])
    calls, summary = record_sampler_inputs(pipe, ["a red circle", "a blue square"], [0, 1])
    assert summary["calls"] == 2 and all(len(c["t"]) == 4 for c in calls)  # one batched call per step
    null = pipe.encoder.encode([""]).text[0].numpy()
    np.testing.assert_allclose(calls[0]["text"][0], null, atol=1e-6)  # first half: the unconditional branch
    assert not np.allclose(calls[0]["text"][2], null)


@pytest.mark.slow
def test_the_manifest_keeps_the_verdict_measured_on_the_exported_checkpoint(tmp_path):
    from fewstep.core.verdict_record import write_verdict
    from fewstep.models.loading import model_sha256

    ckpt = _checkpoint(tmp_path, "euler-none")
    verdict = {"outcome": "better", "basis": "teacher gap", "steps": 1, "systems": {}, "line": "verdict: ...",
               "student_sha256": model_sha256(ckpt)}  # fmt: skip
    write_verdict(tmp_path, verdict)
    manifest = _export(ckpt, tmp_path / "b", to=("onnx",), precision=("fp32",))
    kept = manifest["model"]["equal_steps_verdict"]
    assert kept["outcome"] == "better" and kept["line"] == "verdict: ..." and "student_sha256" not in kept
    write_verdict(tmp_path, {**verdict, "student_sha256": "weights-since-retrained"})
    manifest = _export(ckpt, tmp_path / "b2", to=("onnx",), precision=("fp32",))
    assert "equal_steps_verdict" not in manifest["model"]  # another checkpoint's verdict is not this one's


def test_calibration_of_an_interval_student_records_each_step_size(ckpts):
    from fewstep.export.calibration import record_sampler_inputs

    pipe = TorchPipeline.from_checkpoint(ckpts["interval-none"])
    calls, summary = record_sampler_inputs(pipe, ["a red circle", "a blue square"], [0, 1])
    assert summary["rule"] == "interval" and summary["calls"] == 2
    assert [c["guidance"].tolist() for c in calls] == [[0.25, 0.25], [0.75, 0.75]]  # h = t - s of each step


@pytest.mark.slow
def test_bundle_round_trip_and_tampered_file_refused_by_name(cfg_bundle, tmp_path):
    import shutil

    src, manifest = cfg_bundle
    out = tmp_path / "copy"
    shutil.copytree(src, out)
    m = read_manifest(out).to_json()
    assert m["format"] == "fewstep-bundle/1" and m["model"]["source_sha256"] == manifest["model"]["source_sha256"]
    assert m["sampler"]["timesteps"] == [1.0, 0.5, 0.0] and m["sampler"]["guidance"]["mode"] == "cfg"
    assert {"text_encoder.onnx", "tokenizer.json"} <= {p.name for p in out.iterdir()}
    Generator.from_bundle(out, engine="onnx-fp32").generate(["a red circle"], [0])
    engine_file = out / next(iter(m["engines"][0]["files"]))
    data = bytearray(engine_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    engine_file.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=engine_file.name):
        Generator.from_bundle(out, engine=m["engines"][0]["id"])


@pytest.mark.slow
def test_reexport_reuses_valid_engines_and_rewrites_nothing(ckpts, tmp_path):
    out = tmp_path / "b"
    first = _export(ckpts["euler-none"], out, to=("onnx",), precision=("fp32",))
    stamp = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    second = _export(ckpts["euler-none"], out, to=("onnx",), precision=("fp32",))
    assert second["engines"] == first["engines"]
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.name != "manifest.json"} == {
        k: v for k, v in stamp.items() if k != "manifest.json"
    }
    # a damaged engine is rebuilt; another checkpoint into the same bundle is refused without --force
    engine_file = out / next(iter(first["engines"][0]["files"]))
    engine_file.write_bytes(b"broken")
    third = _export(ckpts["euler-none"], out, to=("onnx",), precision=("fp32",))
    rebuilt = third["engines"][0]
    assert engine_file.read_bytes() != b"broken" and rebuilt["verified"]  # rebuilt, gated again
    assert sha256_of(engine_file) == rebuilt["files"][engine_file.name]
    Generator.from_bundle(out).generate(["a red circle"], [0])
    with pytest.raises(ExportError, match="another checkpoint"):
        _export(ckpts["euler-cfg"], out, to=("onnx",), precision=("fp32",))


@pytest.mark.slow
def test_interrupted_export_never_looks_complete(ckpts, tmp_path, monkeypatch):
    from fewstep.export.targets import openvino as to_openvino

    out = tmp_path / "b"

    def crash(ctx, precision):
        raise KeyboardInterrupt  # a kill in the middle of the second engine

    monkeypatch.setattr(to_openvino, "export", crash)
    with pytest.raises(KeyboardInterrupt):
        _export(ckpts["euler-none"], out, to=("onnx", "openvino"), precision=("fp32",))
    assert (out / IN_PROGRESS).exists()
    with pytest.raises(BundleError, match="incomplete"):
        Generator.from_bundle(out)
    monkeypatch.undo()
    finished = out / "denoiser.onnx-fp32.onnx"
    stamp = finished.stat().st_mtime_ns
    manifest = _export(ckpts["euler-none"], out, to=("onnx", "openvino"), precision=("fp32",))
    assert not (out / IN_PROGRESS).exists() and len(manifest["engines"]) == 2
    assert finished.stat().st_mtime_ns == stamp  # the engine finished before the kill is kept, not rebuilt
    assert not [p for p in out.iterdir() if ".tmp" in p.name]


@pytest.mark.slow
def test_parity_gate_refuses_a_broken_engine(ckpts, tmp_path, monkeypatch):
    import onnx
    from onnx import numpy_helper

    from fewstep.export.targets import onnx as to_onnx

    real = to_onnx.to_fp16

    def broken_fp16(src, dst):  # an "fp16" engine whose output layer is damaged
        real(src, dst)
        model = onnx.load(str(dst))
        for init in model.graph.initializer:
            if "conv_out.weight" in init.name:
                init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * 3, init.name))
        onnx.save(model, str(dst))
        return dst

    monkeypatch.setattr(to_onnx, "to_fp16", broken_fp16)
    manifest = _export(ckpts["euler-none"], tmp_path / "b", to=("onnx",), precision=("fp32", "fp16"))
    assert [e["id"] for e in manifest["engines"]] == ["onnx-fp32"]
    (refused,) = manifest["refused"]
    assert refused["id"] == "onnx-fp16" and "PSNR" in refused["reason"]
    assert not list((tmp_path / "b").glob("denoiser.onnx-fp16*"))


def test_speed_gate_refuses_an_engine_slower_than_fp32():
    import time

    from fewstep.export.gates import GateConfig, speed_gate

    class Sleeper:
        def __init__(self, seconds):
            self.seconds = seconds

        def run(self, inputs):
            time.sleep(self.seconds)
            return {"v": inputs["x"]}

    inputs = {"x": np.zeros((8, 3, 4, 4), np.float32), "t": np.ones(8, np.float32)}
    slow = speed_gate(Sleeper(0.004), Sleeper(0.001), inputs, GateConfig(speed_runs=5))
    assert not slow["passed"] and "not faster than fp32" in slow["reason"]
    fast = speed_gate(Sleeper(0.001), Sleeper(0.004), inputs, GateConfig(speed_runs=5))
    assert fast["passed"] and fast["speedup_vs_fp32"] > 2
    off = speed_gate(Sleeper(0.004), Sleeper(0.001), inputs, GateConfig(speed=False, speed_runs=5))
    assert off["passed"] and "gate off" in off["reason"]


@pytest.mark.slow
def test_speed_gate_times_big_engines_one_after_the_other(ckpts, cfg_bundle, tmp_path, monkeypatch):
    from fewstep.export import engine_build

    _out, small = cfg_bundle  # tiny engines: held together, runs interleaved
    assert {e["gates"]["speed"]["timed"] for e in small["engines"] if e["precision"] != "fp32"} == {"interleaved"}
    monkeypatch.setattr(engine_build, "INTERLEAVE_BELOW", 0)  # every engine counts as SD-size
    manifest = _export(ckpts["euler-none"], tmp_path / "b", to=("onnx",), precision=("fp16",))
    (fp16,) = manifest["engines"]  # its fp32 reference is a temporary engine, deleted after
    speed = fp16["gates"]["speed"]
    assert speed["timed"] == "one after the other" and speed["ms"] > 0 and speed["fp32_ms"] > 0
    assert not list((tmp_path / "b").glob("*reference*"))


def test_bundled_tokenizer_and_text_encoder_match_torch(cfg_bundle, encoder):
    from fewstep.core.errors import PromptTooLongError
    from fewstep.runtime.text import RuntimeTextEncoder

    root, _ = cfg_bundle
    rt = RuntimeTextEncoder.from_bundle(root, read_manifest(root).text_encoder)
    out = rt.encode(PROMPTS)
    ref = encoder.encode(PROMPTS)
    np.testing.assert_array_equal(out["text_mask"], ref.text_mask.numpy())
    np.testing.assert_allclose(out["text"], ref.text.numpy(), atol=5e-4)
    with pytest.raises(PromptTooLongError, match="at most 32"):
        rt.encode(["a red circle " * 20])


def test_bad_export_requests_are_clear(ckpts, tmp_path):
    from fewstep.core.config import ConfigError

    with pytest.raises(ConfigError, match="unknown export target 'onnxx'"):
        _export(ckpts["euler-none"], tmp_path / "b", to=("onnxx",))
    with pytest.raises(ExportError, match="coreml writes none of"):
        _export(ckpts["euler-none"], tmp_path / "b", to=("coreml",), precision=("int8",))
    from fewstep.runtime.registry import get_backend

    if get_backend("tensorrt").unavailable_reason():  # no GPU / no TensorRT here: refused before any work
        with pytest.raises(ExportError, match="built on the NVIDIA GPU"):
            _export(ckpts["euler-none"], tmp_path / "b", to=("tensorrt",), precision=("fp16",))
        assert not (tmp_path / "b").exists()
    with pytest.raises(ConfigError, match="quantizer"):
        ExportConfig(quantizer=("tflite",))


def test_export_cli_prints_config_and_help(capsys):
    from fewstep.cli import main

    assert main(["export", "--print-config"]) == 0
    text = capsys.readouterr().out
    assert "quantizer:" in text and "min_psnr_int8: 30.0" in text
    with pytest.raises(SystemExit):
        main(["export", "--help"])
    assert "precisions per target" in capsys.readouterr().out


def test_export_cli_missing_model_is_one_clear_line(capsys):
    from fewstep.cli import main

    assert main(["export", "--out", "x"]) == 2
    assert "give a MODEL and --out DIR" in capsys.readouterr().err


def test_manifest_is_json_with_command(cfg_bundle):
    root, _ = cfg_bundle
    m = json.loads((root / "manifest.json").read_text())
    assert m["created_by"]["command"] == "test" and m["created_by"]["fewstep"]
    assert os.path.exists(root / m["text_encoder"]["file"])


@pytest.mark.slow
def test_generate_cli_runs_a_bundle_torch_free_path(cfg_bundle, tmp_path, capsys):
    from fewstep.cli import main

    root, _ = cfg_bundle
    out = tmp_path / "grid.png"
    args = ["generate", str(root), "--prompt", "a red circle", "--seeds", "0,1", "--out", str(out)]
    assert main([*args, "--engine", "openvino-fp32"]) == 0
    text = capsys.readouterr().out
    assert out.is_file() and "engine openvino-fp32" in text and "guidance 3 (cfg)" in text
    assert main([*args, "--engine", "nope"]) == 2
    assert "has no engine 'nope'" in capsys.readouterr().err


@pytest.mark.slow
def test_runtime_generates_from_a_bundle_with_torch_unimportable(cfg_bundle, tmp_path):
    import subprocess
    import sys

    root, _ = cfg_bundle
    code = (
        "import sys; [sys.modules.__setitem__(m, None) for m in ('torch', 'diffusers', 'transformers')]\n"
        "import numpy as np\n"
        "from fewstep.runtime import Generator\n"
        f"gen = Generator.from_bundle({str(root)!r}, engine='onnx-fp32')\n"
        f"np.save({str(tmp_path / 'out.npy')!r}, gen.generate({PROMPTS!r}, [5, 6, 7]))\n"
        "assert not {m for m in ('torch', 'diffusers', 'transformers') if sys.modules.get(m) is not None}\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    ckpt = TorchPipeline.from_checkpoint(read_manifest(root).to_json()["model"]["source"])
    ref = ckpt.generate(PROMPTS, [5, 6, 7])
    assert np.abs(np.load(tmp_path / "out.npy").astype(int) - ref.astype(int)).max() <= 1


@pytest.mark.slow
def test_bench_cli_reports_latency_stages_cold_start_and_edge_profiles(cfg_bundle, tmp_path, capsys):
    from fewstep.cli import main

    root, _ = cfg_bundle
    out = tmp_path / "bench.json"
    args = ["bench", str(root), "--engine", "onnx-fp32", "--batch-sizes", "1,2", "--runs", "3", "--warmup", "1"]
    assert main([*args, "--edge", "--teacher", "none", "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    assert [b["batch"] for b in r["batches"]] == [1, 2] and r["backend"] == "onnxruntime"
    b1 = r["batches"][0]
    assert b1["p50_ms"] <= b1["p90_ms"] <= b1["p99_ms"] and b1["images_per_s"] > 0
    # two Euler steps with CFG: text, both denoiser steps, decoding and PNG encoding are timed separately
    assert {"text_encode", "denoise_step_1", "denoise_step_2", "decode", "image_encode_png"} <= set(b1["stages_p50_ms"])
    assert r["cold_start"]["ok"] and r["cold_start"]["first_image_s"] > 0 and r["cold_start"]["peak_rss_mb"] > 0
    assert [e["profile"] for e in r["edge_profiles"]] == ["server-2t", "edge-1t-1g", "phone-1t-512m"]
    assert all("not the device's" in e["emulated"] for e in r["edge_profiles"])
    (student,) = r["torch"]
    assert student["system"].startswith("torch student") and student["runtime_speedup"] > 0
    assert "cold start" in capsys.readouterr().out
    with pytest.raises(SystemExit) as refused:  # argparse refuses it before any work
        main(["bench", str(root), "--runs", "0"])
    assert refused.value.code == 2 and "--runs: must be >= 1" in capsys.readouterr().err


def test_a_probe_past_its_timeout_is_a_failed_row_and_the_timeout_follows_the_engine_speed():
    from fewstep.runtime.bench import probe_timeout, run_probe

    slow = run_probe("import time; time.sleep(30)", [], threads=1, timeout=0.5)
    assert not slow["ok"] and slow["error"].startswith("timed out after")
    fast = [{"batch": 4, "p50_ms": 100.0}, {"batch": 1, "p50_ms": 40.0}]
    sd_size = [{"batch": 1, "p50_ms": 28_000.0}]  # an SD1.5 UNet, 4 steps, on 2 cores
    assert probe_timeout(fast, 10) == pytest.approx(300 + 3 * 11 * 0.04)
    assert probe_timeout(sd_size, 10) > 11 * 28  # room for eleven images at that speed


def test_engine_boundary_rejects_wrong_names_dtypes_and_shapes():
    from fewstep.core.manifest import TensorSpec
    from fewstep.runtime.engine import EngineInputError, check_inputs

    specs = {"x": TensorSpec(("B", 3, 4, 4)), "t": TensorSpec(("B",))}
    good = {"x": np.zeros((2, 3, 4, 4), np.float32), "t": np.zeros(2, np.float32)}
    assert check_inputs(good, specs) == 2
    bad = [
        ({"x": good["x"]}, "missing \\['t'\\]"),
        ({**good, "y": good["t"]}, "unexpected \\['y'\\]"),
        ({**good, "t": np.zeros(2, np.float64)}, "'t' must be float32; got float64"),
        (
            {**good, "x": np.zeros((2, 3, 8, 8), np.float32)},
            "'x' must have shape \\(B, 3, 4, 4\\); got \\(2, 3, 8, 8\\)",
        ),
        ({**good, "t": np.zeros(3, np.float32)}, "batch 3 but another input has batch 2"),
        ({**good, "x": [[0.0]]}, "must be a numpy array"),
    ]
    for inputs, message in bad:
        with pytest.raises(EngineInputError, match=message):
            check_inputs(inputs, specs)
    with pytest.raises(EngineInputError, match="built for batch 1"):
        check_inputs(good, specs, fixed_batch=1)


@pytest.mark.slow
def test_loaded_engines_validate_their_inputs(cfg_bundle):
    from fewstep.runtime.engine import EngineInputError

    root, _ = cfg_bundle
    for engine in ("onnx-fp32", "openvino-fp32"):
        gen = Generator.from_bundle(root, engine=engine)
        with pytest.raises(EngineInputError, match="'x' must have shape"):
            gen.denoiser.run({
                "x": np.zeros((1, 3, 8, 8), np.float32), "t": np.zeros(1, np.float32),
                "text": np.zeros((1, 32, 384), np.float32), "text_mask": np.ones((1, 32), np.float32),
            })  # fmt: skip


def test_generator_splits_requests_to_the_engines_largest_batch(cfg_bundle):
    """A TensorRT profile or fixed-shape CoreML package caps rows per call; CFG sends two rows per image."""
    gen = Generator.from_bundle(cfg_bundle[0], engine="onnx-fp32")
    prompts, seeds = [f"a red circle number {i}" for i in range(5)], list(range(5))
    unlimited = gen.generate(prompts, seeds, guidance=3.0)
    rows, inner = [], gen.denoiser

    class Capped:
        backend, inputs, outputs, max_batch = inner.backend, inner.inputs, inner.outputs, 4

        def run(self, feed):
            rows.append(len(feed["x"]))
            return inner.run(feed)

    gen.denoiser = Capped()
    capped = gen.generate(prompts, seeds, guidance=3.0)
    assert max(rows) <= 4 and sum(rows) == 2 * 5 * gen.sampler.steps()
    np.testing.assert_allclose(capped.astype(float), unlimited.astype(float), atol=1)  # same images, per-call split
    Capped.max_batch = 1
    with pytest.raises(ValueError, match="CFG needs 2"):
        gen.generate(prompts[:1], seeds[:1], guidance=3.0)
    assert gen.generate(prompts[:1], seeds[:1], guidance=1.0).shape[0] == 1


def test_openvino_static_batch_sizes_match_the_dynamic_model_and_stay_bounded(cfg_bundle):
    """OpenVINO runs static copies of the model at power-of-two batch sizes (padded rows dropped): the same
    images as the dynamic model, a bounded set of compiled sizes, and `prepare` compiling them ahead of time."""
    root, _ = cfg_bundle
    prompts, seeds = [f"a blue square number {i}" for i in range(3)], [3, 4, 5]
    dynamic = Generator.from_bundle(root, engine="openvino-fp32", static_shapes=False)
    static = Generator.from_bundle(root, engine="openvino-fp32")
    assert dynamic.denoiser.compiled_batches == [None] and static.denoiser.compiled_batches == [1]
    ref = dynamic.generate(prompts, seeds, guidance=3.0)
    out = static.generate(prompts, seeds, guidance=3.0)  # CFG: 6 rows per call, run at 8
    assert out.shape == ref.shape and np.abs(out.astype(int) - ref.astype(int)).max() <= 1
    assert static.denoiser.compiled_batches == [1, 8]
    static.prepare(2)  # 2 images with CFG: up to 4 rows
    assert sorted(static.denoiser.compiled_batches) == [1, 2, 4, 8]
    small = Generator.from_bundle(root, engine="openvino-fp32", max_shapes=2)
    small.prepare(8)
    assert small.denoiser.compiled_batches == [8, 16]  # the largest sizes kept, least recently used dropped
    np.testing.assert_allclose(small.generate(prompts[:1], seeds[:1]).astype(float), ref[:1].astype(float), atol=1)
    assert small.denoiser.compiled_batches == [16, 2]  # one image with CFG: 2 rows
    with pytest.raises(ValueError, match="max_shapes"):
        Generator.from_bundle(root, engine="openvino-fp32", max_shapes=0)


@pytest.mark.parametrize("static_shapes", [True, False])
def test_openvino_shared_inputs_are_read_not_kept_or_written(cfg_bundle, static_shapes):
    """The OpenVINO engine hands its numpy inputs to the request without copying (`share_inputs`): a call must
    leave them as they were, and one call's inputs must not linger into the next (an array changed in place
    between calls gives the new result; the earlier output, already copied out, stays as it was)."""
    root, _ = cfg_bundle
    engine = Generator.from_bundle(root, engine="openvino-fp32", static_shapes=static_shapes).denoiser
    rng = np.random.default_rng(0)
    shapes = {k: s.concrete(1) for k, s in engine.inputs.items()}
    feed = {k: rng.standard_normal(shape).astype(np.float32) for k, shape in shapes.items()}
    feed["t"] = np.full(1, 0.7, np.float32)
    before = {k: v.copy() for k, v in feed.items()}
    first = engine.run(feed)
    assert all(np.array_equal(feed[k], before[k]) for k in feed)
    kept = {k: v.copy() for k, v in first.items()}
    feed["x"] *= -1  # the same array object, new values
    second = engine.run(feed)
    fresh = engine.run({k: v.copy() for k, v in feed.items()})
    for k in first:
        np.testing.assert_array_equal(first[k], kept[k])
        np.testing.assert_allclose(second[k], fresh[k], atol=1e-6)
        assert not np.allclose(second[k], first[k])


def test_openvino_compiled_model_cache_is_reused_by_a_later_load(cfg_bundle, tmp_path, monkeypatch):
    """With a cache directory the first load stores the compiled shape; a later load (here through the environment
    variable) imports it: no new blob, the same images. An unusable directory is a clear error."""
    root, _ = cfg_bundle
    cache = tmp_path / "ov-cache"
    first = Generator.from_bundle(root, engine="openvino-fp32", cache_dir=str(cache))
    assert first.denoiser.cache_dir == str(cache) and len(list(cache.iterdir())) == 1  # the batch-1 shape
    ref = first.generate(["a red circle"], [7])  # CFG: 2 rows, a second shape
    blobs = sorted(p.name for p in cache.iterdir())
    assert len(blobs) == 2
    monkeypatch.setenv("FEWSTEP_OPENVINO_CACHE_DIR", str(cache))
    again = Generator.from_bundle(root, engine="openvino-fp32")
    assert sorted(p.name for p in cache.iterdir()) == blobs
    np.testing.assert_array_equal(again.generate(["a red circle"], [7]), ref)
    monkeypatch.delenv("FEWSTEP_OPENVINO_CACHE_DIR")
    assert Generator.from_bundle(root, engine="openvino-fp32").denoiser.cache_dir is None
    with pytest.raises(ValueError, match="onnxruntime engines take no option cache_dir"):
        Generator.from_bundle(root, cache_dir=str(cache))  # the default engine is ONNX Runtime's
    (tmp_path / "a-file").write_text("")
    with pytest.raises(ValueError, match="cache directory"):
        Generator.from_bundle(root, engine="openvino-fp32", cache_dir=str(tmp_path / "a-file" / "cache"))


def test_a_released_denoiser_says_why_it_cannot_run():
    from fewstep.export.denoiser import Denoiser

    d = Denoiser(torch.nn.Identity(), {"channels": 1, "height": 4, "width": 4}, tokens=2, text_dim=3)
    d.release()
    assert d.io_specs()[0]["x"].shape == ("B", 1, 4, 4)  # the signature stays
    with pytest.raises(RuntimeError, match="released after its fp32 ONNX graph"):
        d(*d.example_inputs(1))


def test_static_int8_that_would_not_fit_memory_is_refused_before_it_starts(ckpts, tmp_path, monkeypatch):
    """NNCF's static int8 calibration holds several copies of the graph (an SD-size one was OOM-killed): with too
    little memory available, that engine is refused up front with the estimate and the way out, and the export
    goes on with the others."""
    from fewstep.export import engine_build

    graph_seen = []
    monkeypatch.setattr("fewstep.core.resources.available_memory", lambda: 1024)  # 1 KiB: nothing fits
    real = engine_build.EngineBuilder._memory_refusal

    def spy(self, job):
        refused = real(self, job)
        graph_seen.append((job.id, refused is not None))
        return refused

    monkeypatch.setattr(engine_build.EngineBuilder, "_memory_refusal", spy)
    manifest = _export(ckpts["euler-none"], tmp_path / "b", to=("onnx",), precision=("fp32", "int8"))
    written = [e["id"] for e in manifest["engines"]]
    assert "onnx-fp32" in written and "onnx-int8-nncf" not in written  # ORT's own quantizer is not NNCF's: built
    refused = {e["id"]: e for e in manifest["refused"]}["onnx-int8-nncf"]
    assert (
        refused["size_bytes"] == 0
        and "NNCF static int8 calibration needs about" in refused["reason"]
        and "int8w or int4w" in refused["reason"]
    )
    assert ("onnx-int8-nncf", True) in graph_seen and ("onnx-fp32", False) in graph_seen
