"""CoreML export: conversion and spec checks run anywhere; prediction (CoreML itself) only on macOS."""

from __future__ import annotations

import gc
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import TINY_UNET

# coremltools 9.0 warns ~800 times per conversion about its own deprecated op-registry lookup
pytestmark = pytest.mark.filterwarnings("ignore:Function _TORCH_OPS_REGISTRY:DeprecationWarning")

IMAGE = {"channels": 3, "height": 16, "width": 16}
TOKENS, TEXT_DIM = 6, 24  # TINY_UNET's encoder_hid_dim
NEEDS_CT = "coremltools is not installed (pip install 'fewstep[export]')"
ON_MAC = sys.platform == "darwin"
# The tiny UNet's tensors are small: with coremltools' default threshold (2048 elements) only 10 of its 193 weights
# would be compressed. 256 compresses the 35 matrices/kernels that hold ~80% of its weights, as a real model's do.
SMALL_THRESHOLD = 256


def tiny_denoiser(**unet_extra):
    from fewstep.export.denoiser import Denoiser
    from fewstep.models.unet_flow import build_unet_flow

    torch.manual_seed(0)
    return Denoiser(build_unet_flow({**TINY_UNET, **unet_extra}).eval(), IMAGE, tokens=TOKENS, text_dim=TEXT_DIM)


def export(denoiser, out_dir, precision: str, **options):
    from fewstep.export.context import ExportContext
    from fewstep.export.targets import coreml as to_coreml

    return to_coreml.export(ExportContext(denoiser, out_dir, options=options), precision)


@pytest.fixture(scope="module")
def packages(tmp_path_factory):
    """fp16, int8w and palette4 packages of one tiny denoiser: {precision: (artifact, describe(path))}."""
    pytest.importorskip("coremltools", reason=NEEDS_CT)
    from fewstep.export.context import ExportContext
    from fewstep.export.targets import coreml as to_coreml

    denoiser = tiny_denoiser()
    # one context, as a bundle export uses: the fp16 conversion is reused for int8w and palette4
    ctx = ExportContext(
        denoiser, tmp_path_factory.mktemp("coreml"), options={"coreml_weight_threshold": SMALL_THRESHOLD}
    )
    result = {}
    for precision in ("fp16", "int8w", "palette4"):
        artifact = to_coreml.export(ctx, precision)
        result[precision] = (artifact, to_coreml.describe(artifact.path))
    return denoiser, result


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp16", "int8w", "palette4"])
def test_conversion_writes_the_declared_signature(packages, precision):
    denoiser, result = packages
    artifact, facts = result[precision]
    assert artifact.path.name == f"denoiser.{precision}.mlpackage" and artifact.path.is_dir()
    assert artifact.backend == "coreml" and artifact.precision == precision
    assert artifact.info["fixed_batch"] == 1
    assert artifact.info["compute_precision"] == "float16"
    assert artifact.info["minimum_deployment_target"] == "macOS13"
    want = {s.name: {"shape": list(s.concrete(1)), "dtype": "float32"} for s in denoiser.inputs}
    assert facts["inputs"] == want
    assert list(want) == ["x", "t", "text", "text_mask"]
    assert facts["outputs"] == {"v": {"shape": [1, 3, 16, 16], "dtype": "float32"}}
    assert facts["metadata"]["fewstep.fixed_batch"] == "1"


@pytest.mark.slow
def test_engine_reads_the_fixed_batch_from_the_package(packages):
    import coremltools as ct

    from fewstep.backends.coreml import _package_batch

    artifact, _ = packages[1]["palette4"]
    assert _package_batch(ct.models.MLModel(str(artifact.path), skip_model_load=True)) == 1


@pytest.mark.slow
def test_weights_are_stored_as_declared(packages):
    _, result = packages
    fp16 = result["fp16"][1]["weights"]
    int8 = result["int8w"][1]["weights"]
    lut = result["palette4"][1]["weights"]
    assert set(fp16) == {"float16"}, "an fp16 package must hold fp16 weights only"
    assert result["fp16"][0].info["weights"] == "fp16"

    assert int8["constexpr_affine_dequantize"]["tensors"] >= 30
    assert int8["constexpr_affine_dequantize"]["bits_per_weight"] < 9  # int8 + per-channel scales
    assert result["int8w"][0].info["weights"] == "int8"

    palettized = lut["constexpr_lut_to_dense"]
    assert palettized["tensors"] >= 30
    assert result["palette4"][0].info["weights"] == "palettized 4-bit"
    # 4-bit indices + a 16-entry fp16 LUT per tensor: at most 30% of the same weights in fp16
    assert palettized["bits_per_weight"] <= 0.30 * 16
    # all stored weights (palettized + the small tensors left in fp16) vs the model's weights in fp32
    fp32_bytes = 4 * fp16["float16"]["elements"]
    assert lut["float16"]["elements"] + palettized["elements"] == fp16["float16"]["elements"]
    assert lut["float16"]["bytes"] + palettized["bytes"] <= 0.30 * fp32_bytes


@pytest.mark.slow
def test_compressed_packages_are_smaller(packages):
    # Whole packages shrink less than the weights: the tiny model's program (model.mlmodel, ~220 KB of op
    # descriptions and inline constants) outweighs its 130 KB of fp16 weights, so only the order is checked here.
    _, result = packages
    size = {p: facts["package_bytes"] for p, (_, facts) in result.items()}
    weights = {p: facts["weight_file_bytes"] for p, (_, facts) in result.items()}
    assert size["palette4"] < size["int8w"] < size["fp16"]
    assert weights["palette4"] < 0.6 * weights["fp16"]


@pytest.mark.slow
def test_embedded_guidance_and_cfg_batch(tmp_path):
    pytest.importorskip("coremltools", reason=NEEDS_CT)
    from fewstep.export.targets.coreml import describe

    denoiser = tiny_denoiser(time_cond_proj_dim=8)
    artifact = export(denoiser, tmp_path, "fp16", cfg=True)
    facts = describe(artifact.path)
    assert artifact.info["fixed_batch"] == 2  # CFG runs the conditional and unconditional rows together
    assert list(facts["inputs"]) == ["x", "t", "text", "text_mask", "guidance"]
    assert facts["inputs"]["guidance"] == {"shape": [2], "dtype": "float32"}
    assert facts["outputs"]["v"]["shape"] == [2, 3, 16, 16]


def test_fixed_batch_and_precision_errors(tmp_path):
    from fewstep.export.targets.coreml import fixed_batch
    from fewstep.runtime.registry import get_backend

    assert get_backend("coreml").precisions == ("fp32", "fp16", "int8w", "palette4")
    assert fixed_batch({}) == 1
    assert fixed_batch({"cfg": True}) == 2
    assert fixed_batch({"cfg": True, "coreml_batch": 4}) == 4
    with pytest.raises(ValueError, match="coreml_batch"):
        fixed_batch({"coreml_batch": 0})
    with pytest.raises(ValueError, match="fp16, int8w, palette4"):
        export(None, tmp_path, "int4")


def test_conversion_is_reused_per_context_until_the_weights_change(monkeypatch, tmp_path):
    from fewstep.export.context import ExportContext
    from fewstep.export.targets import coreml as to_coreml

    calls = []
    monkeypatch.setattr(to_coreml, "_convert", lambda *args: calls.append(args) or object())
    monkeypatch.setattr(to_coreml, "_last", {})
    denoiser = tiny_denoiser()
    ctx = ExportContext(denoiser, tmp_path)
    first = to_coreml._converted(None, ctx, 1, "float16", "macOS13")
    assert to_coreml._converted(None, ctx, 1, "float16", "macOS13") is first and len(calls) == 1
    to_coreml._converted(None, ctx, 2, "float16", "macOS13")  # another batch is another program
    assert len(calls) == 2
    with torch.no_grad():
        next(denoiser.parameters()).data.add_(1.0)  # through .data: no version bump, caught by the sums
    to_coreml._converted(None, ctx, 2, "float16", "macOS13")
    other = ExportContext(denoiser, tmp_path)
    to_coreml._converted(None, other, 2, "float16", "macOS13")  # another context converts afresh
    assert len(calls) == 4
    del ctx
    gc.collect()
    assert to_coreml._last  # the live context's program stays
    del other
    gc.collect()
    assert not to_coreml._last  # and is dropped with its context


@pytest.mark.skipif(ON_MAC, reason="checks the refusal on systems without CoreML")
def test_engine_refuses_off_macos(tmp_path):
    from fewstep.backends.coreml import CoreMLEngine
    from fewstep.runtime.engine import BackendUnavailable
    from fewstep.runtime.registry import get_backend, load_engine

    assert "macOS" in get_backend("coreml").unavailable_reason()
    with pytest.raises(BackendUnavailable, match="only on macOS"):
        CoreMLEngine(tmp_path / "denoiser.fp16.mlpackage", {}, {}, fixed_batch=1)
    with pytest.raises(BackendUnavailable, match="only on macOS"):
        load_engine("coreml", tmp_path / "denoiser.fp16.mlpackage", tiny_denoiser().entry("coreml"), threads=1)


def test_engine_module_is_torch_free():
    code = (
        "import sys; [sys.modules.__setitem__(m, None) for m in ('torch', 'diffusers', 'transformers')]\n"
        "from fewstep.backends.coreml import CoreMLEngine, unavailable_reason\n"
        "assert CoreMLEngine.backend == 'coreml'\n"
        "reason = unavailable_reason()\n"
        "print(reason is None or 'macOS' in reason or 'coremltools' in reason)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "True"


@pytest.mark.slow
@pytest.mark.skipif(not ON_MAC, reason="CoreML prediction exists only on macOS (MLModel.predict raises elsewhere)")
@pytest.mark.parametrize(
    # relative RMS error vs torch fp32; the compressed bounds are ~2x the error of simulating the same
    # weight rounding in torch on this tiny random model (k-means 4-bit: 0.14 rel RMS at threshold 256)
    ("precision", "tol"),
    [("fp32", 1e-4), ("fp16", 1e-2), ("int8w", 5e-2), ("palette4", 0.3)],
)
def test_prediction_matches_torch(tmp_path, precision, tol):
    pytest.importorskip("coremltools", reason=NEEDS_CT)
    from fewstep.backends.coreml import CoreMLEngine

    denoiser = tiny_denoiser()
    artifact = export(denoiser, tmp_path, precision, coreml_batch=2, coreml_weight_threshold=SMALL_THRESHOLD)
    io = denoiser.io_json()
    engine = CoreMLEngine(artifact.path, io["inputs"], io["outputs"], fixed_batch=2, compute_units="CPU_ONLY")
    args = denoiser.example_inputs(2)
    with torch.no_grad():
        ref = denoiser(*args).numpy()
    out = engine.run({s.name: a.numpy() for s, a in zip(denoiser.inputs, args, strict=True)})["v"]
    assert out.shape == ref.shape and out.dtype == np.float32
    rel = np.sqrt(np.mean((out - ref) ** 2) / np.mean(ref**2))
    assert rel < tol, f"{precision}: relative RMS error {rel:.3g} vs torch (limit {tol})"
