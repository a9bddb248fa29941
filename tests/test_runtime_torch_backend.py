"""The runtime's torch backends: `--to torch` engines (the network run in torch eager, the comparison point)
and the Torch-TensorRT loader, which needs a GPU and is checked here only up to what runs without one."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from tests.test_export import PROMPTS, _checkpoint, _export

pytest.importorskip("onnxscript", reason="export needs the export extra: pip install 'fewstep[export]'")

from fewstep.core.manifest import EngineEntry, Manifest, TensorSpec
from fewstep.export.denoiser import HalfIO
from fewstep.models.pipeline import TorchPipeline
from fewstep.runtime import Generator
from fewstep.runtime.engine import BackendUnavailable, EngineInputError
from fewstep.runtime.registry import backends, load_engine


@pytest.fixture(scope="module")
def torch_bundle(tmp_path_factory):
    """An embedded-guidance student (its w input exercises HalfIO's float32 pass-through) with ONNX and torch."""
    root = tmp_path_factory.mktemp("torch-bundle")
    ckpt = _checkpoint(root, "euler-embedded")
    out = root / "b"
    return out, ckpt, _export(ckpt, out, to=("onnx", "torch"), precision=("fp32", "fp16"))


def test_every_backend_with_an_exporter_resolves_it_and_names_itself_once():
    """Gates and `Generator` load engines by the backend recorded with them; each backend is described once, with
    its exporter (Torch-TensorRT engines once named a runtime backend that did not exist)."""
    from fewstep.export.context import exporter_of

    found = backends()
    assert {"onnxruntime", "openvino", "coreml", "tensorrt", "torch-tensorrt", "torch"} <= {b.name for b in found}
    assert len({b.target for b in found}) == len(found)
    for b in found:
        assert b.exporter is None or callable(exporter_of(b)), b.name


@pytest.mark.slow
def test_torch_engines_pass_the_gates_and_match_the_torch_student_and_onnx(torch_bundle):
    root, ckpt, manifest = torch_bundle
    engines = {e["id"]: e for e in manifest["engines"]}
    assert {"onnx-fp32", "torch-fp32", "torch-fp16"} <= set(engines)
    assert engines["torch-fp32"]["gates"]["parity"]["psnr_db"] >= 60
    assert engines["torch-fp16"]["gates"]["parity"]["psnr_db"] >= 40
    assert engines["torch-fp32"]["files"] == {"denoiser.torch-fp32.safetensors": engines["torch-fp32"]["files"][
        "denoiser.torch-fp32.safetensors"]}  # fmt: skip
    seeds = [5, 6, 7]
    ref = TorchPipeline.from_checkpoint(ckpt).generate(PROMPTS, seeds, guidance=4.0)
    onnx = Generator.from_bundle(root, engine="onnx-fp32").generate(PROMPTS, seeds, guidance=4.0)
    gen = Generator.from_bundle(root, engine="torch-fp32", threads=1)
    assert gen.denoiser.backend == "torch"
    out = gen.generate(PROMPTS, seeds, guidance=4.0)
    assert np.abs(out.astype(int) - ref.astype(int)).max() <= 1
    assert np.abs(out.astype(int) - onnx.astype(int)).max() <= 1
    half = Generator.from_bundle(root, engine="torch-fp16").generate(PROMPTS, seeds, guidance=4.0)
    assert np.abs(half.astype(int) - ref.astype(int)).mean() < 1.0  # fp16 compute: close, not exact
    # the comparison point is never picked over a real engine, by priority or by the server's timing
    assert Generator.from_bundle(root).engine_entry.backend != "torch"
    from fewstep.runtime.engine_pick import measure_engines

    rows = {r["engine"]: r for r in measure_engines(root, 1, threads=1, runs=1)}
    assert "pin it with --engine torch-fp32" in rows["torch-fp32"]["skipped"] and "images_per_s" in rows["onnx-fp32"]


@pytest.mark.slow
def test_torch_engine_validates_its_inputs_and_reads_only_safetensors(torch_bundle):
    from safetensors import safe_open

    root, _, manifest = torch_bundle
    entry = Manifest.from_json(manifest).engine("torch-fp32")
    path = root / "denoiser.torch-fp32.safetensors"
    with safe_open(str(path), "pt") as f:  # a plain safetensors checkpoint: the spec rides in its metadata
        assert json.loads(f.metadata()["fewstep"])["kind"] == "unet-flow"
    engine = load_engine("torch", path, entry, threads=1)
    feed = {n: np.zeros(s.concrete(2), np.float32) for n, s in entry.inputs.items()}
    assert engine.run(feed)["v"].shape == entry.outputs["v"].concrete(2)
    with pytest.raises(EngineInputError, match="'x' must have shape"):
        engine.run({**feed, "x": np.zeros((2, 3, 8, 8), np.float32)})
    with pytest.raises(EngineInputError, match="missing \\['guidance'\\]"):
        engine.run({k: v for k, v in feed.items() if k != "guidance"})


@pytest.mark.slow
def test_torch_engine_is_a_clear_error_where_torch_cannot_be_imported(torch_bundle):
    root, _, _ = torch_bundle
    code = (
        "import sys; [sys.modules.__setitem__(m, None) for m in ('torch', 'diffusers', 'transformers')]\n"
        "from fewstep.runtime import Generator\n"
        f"assert Generator.from_bundle({str(root)!r}).engine_entry.backend == 'onnxruntime'\n"
        "try:\n"
        f"    Generator.from_bundle({str(root)!r}, engine='torch-fp32')\n"
        "except Exception as e:\n"
        "    print(type(e).__name__, e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "torch engines need torch" in out.stdout


def test_half_io_computes_in_fp16_but_keeps_t_and_guidance_float32():
    seen = {}

    class Recorder(torch.nn.Module):
        input_names = ("x", "t", "text", "text_mask", "guidance")

        def __init__(self):
            super().__init__()
            self.register_buffer("table", torch.linspace(0.9, 0.91, 11, dtype=torch.float64))  # like VP's t table
            self.register_buffer("scale", torch.ones(1))

        def forward(self, *args):
            seen.update({n: a.dtype for n, a in zip(self.input_names, args, strict=True)})
            return args[0]

    args = [torch.zeros(2, 3, 4, 4), torch.ones(2), torch.zeros(2, 5, 8), torch.ones(2, 5), torch.full((2,), 3.0)]
    half = HalfIO(Recorder())
    out = half(*args)
    assert seen == {"x": torch.float16, "t": torch.float32, "text": torch.float16, "text_mask": torch.float16,
                    "guidance": torch.float32}  # fmt: skip
    assert out.dtype == torch.float32
    # float64 tables keep their precision (in fp16 these 11 values would collapse to 2); other floats go fp16
    assert half.inner.table.dtype == torch.float64 and len(set(half.inner.table.tolist())) == 11
    assert half.inner.scale.dtype == torch.float16


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_torch_tensorrt_program_exports_with_every_optional_input_and_a_dynamic_batch(precision):
    """The torch.export step of the Torch-TensorRT exporter, on CPU: an embedded-guidance student (a fifth,
    optional input) exports with one batch dimension and the program matches the module at other batches."""
    from fewstep.export.denoiser import denoiser_from_spec
    from fewstep.export.targets.torch_tensorrt import export_program
    from fewstep.models.unet_flow import build_unet_flow
    from tests.conftest import tiny_spec
    from tests.distill_fixtures import TINY_TEACHER

    unet = dict(TINY_TEACHER, time_cond_proj_dim=8)
    torch.manual_seed(0)
    spec = tiny_spec(unet)
    denoiser = denoiser_from_spec(build_unet_flow(unet), spec).eval()
    assert denoiser.input_names[-1] == "guidance"
    module = HalfIO(denoiser) if precision == "fp16" else denoiser
    with torch.no_grad():
        program = export_program(module, denoiser.example_inputs(2), max_batch=8).module()
        for batch in (1, 5):
            inputs = denoiser.example_inputs(batch, seed=batch)
            torch.testing.assert_close(program(*inputs), module(*inputs), atol=1e-4, rtol=1e-4)


def test_torch_tensorrt_engine_declares_its_profiles_batch_limit(monkeypatch, tmp_path):
    """The Generator splits requests by `max_batch`; without it a parity gate of 32 CFG prompts (64 rows) would
    overrun a profile of 32 on the GPU."""
    from fewstep.backends import torch_tensorrt

    monkeypatch.setattr(torch_tensorrt, "unavailable_reason", lambda: None)
    monkeypatch.setattr(torch.jit, "load", lambda *a, **k: torch.nn.Identity())
    entry = EngineEntry("torch-tensorrt-fp16", "torch-tensorrt", "fp16", {"d.ts": ""}, {"x": TensorSpec(("B",))},
                        {"v": TensorSpec(("B",))})  # fmt: skip
    path = tmp_path / "denoiser.torch-tensorrt-fp16.ts"
    profiled = EngineEntry(**{**entry.__dict__, "info": {"profile": {"min": 1, "opt": 1, "max": 32}}})
    engine = torch_tensorrt.open_engine(path, profiled)
    assert engine.backend == "torch-tensorrt" and engine.max_batch == 32
    assert not hasattr(torch_tensorrt.open_engine(path, entry), "max_batch")  # the speed gate's temporary fp32


def test_server_times_a_torch_engine_when_no_other_engine_runs_here(monkeypatch):
    from fewstep.runtime import engine_pick

    spec = {"x": TensorSpec(("B",))}
    engines = [EngineEntry("torch-fp32", "torch", "fp32", {"a": ""}, spec, spec),
               EngineEntry("tensorrt-fp16", "tensorrt", "fp16", {"b": ""}, spec, spec)]  # fmt: skip
    manifest = type("M", (), {"engines": engines})()
    monkeypatch.setattr(engine_pick, "read_manifest", lambda _p: manifest)
    runs_here = {"torch-fp32"}

    def measure(path, entry, *args):
        if entry.id in runs_here:
            return {"engine": entry.id, "batch": 1, "ms_per_call": 1.0, "images_per_s": 1.0}
        return {"engine": entry.id, "skipped": "no GPU"}

    monkeypatch.setattr(engine_pick, "_measure", measure)
    assert engine_pick.fastest_engine(engine_pick.measure_engines("b", 1)) == "torch-fp32"
    runs_here.add("tensorrt-fp16")
    rows = {r["engine"]: r for r in engine_pick.measure_engines("b", 1)}
    assert "images_per_s" in rows["tensorrt-fp16"] and "pin it with --engine" in rows["torch-fp32"]["skipped"]


def test_torch_tensorrt_backend_says_why_it_cannot_run_here(tmp_path):
    from fewstep.backends.torch_tensorrt import unavailable_reason

    entry = EngineEntry("torch-tensorrt-fp16", "torch-tensorrt", "fp16", {"d": ""}, {}, {"v": TensorSpec(("B",))})
    with pytest.raises(BackendUnavailable, match=r"TorchScript \(\.ts\) only"):
        load_engine("torch-tensorrt", tmp_path / "denoiser.torch-tensorrt-fp16.ep", entry)
    reason = unavailable_reason()
    if reason is None:
        pytest.skip("Torch-TensorRT can run here: the GPU tests in test_export_tensorrt.py cover it")
    with pytest.raises(BackendUnavailable, match=r"torch-tensorrt|CUDA"):
        load_engine("torch-tensorrt", tmp_path / "denoiser.torch-tensorrt-fp16.ts", entry, threads=2)
