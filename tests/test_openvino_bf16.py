"""OpenVINO bf16 engines: written with fp16-stored weights, computed in bf16 where the CPU has it natively (AMX or
AVX-512 BF16), gated like every engine, and refused with the reason (the runtime then takes another engine) on a
CPU without it, where emulated bf16 would be far slower than f32."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("openvino")
pytest.importorskip("onnxscript", reason="building a bundle needs the export extra")
import openvino as ov
import torch

from fewstep.backends import openvino as ov_backend
from fewstep.runtime import Generator
from fewstep.runtime.engine import BackendUnavailable
from tests.conftest import tiny_spec

NATIVE = ov_backend.native_bf16(ov.Core())


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    from fewstep.export.bundle import BundleExport
    from fewstep.export.config import ExportConfig
    from fewstep.models.loading import save_model
    from fewstep.models.unet_flow import build_unet_flow
    from tests.distill_fixtures import TINY_TEACHER

    root = tmp_path_factory.mktemp("bf16")
    torch.manual_seed(3)
    ckpt = root / "tiny.safetensors"
    save_model(ckpt, build_unet_flow(TINY_TEACHER), tiny_spec(TINY_TEACHER, name="tiny-bf16"))
    # speed gate off: at this size bf16 is not faster, and the gate would (rightly) refuse it
    cfg = ExportConfig(to=("openvino",), precision=("fp32", "bf16"), parity_prompts=4, speed_gate=False)
    BundleExport(str(ckpt), root / "b", cfg, "test", log=lambda _m: None).run()
    return root / "b"


def _hint(gen: Generator) -> str:
    compiled, _ = next(iter(gen.denoiser._compiled.values()))
    return str(compiled.get_property("INFERENCE_PRECISION_HINT"))


@pytest.mark.skipif(not NATIVE, reason="this CPU has no native bf16 (AMX or AVX-512 BF16)")
def test_bf16_engine_passes_its_gate_and_computes_in_bf16(bundle):
    from fewstep.core.manifest import read_manifest

    engines = {e.id: e for e in read_manifest(bundle).engines}
    assert set(engines) == {"openvino-fp32", "openvino-bf16"}, read_manifest(bundle).refused
    bf16 = engines["openvino-bf16"]
    assert bf16.gates["parity"]["passed"] and bf16.gates["parity"]["min_psnr_db"] == 30.0
    weights = {e: (bundle / f"denoiser.{e}.bin").stat().st_size for e in engines}
    assert weights["openvino-bf16"] <= 0.51 * weights["openvino-fp32"]  # fp16-stored weights
    fast, exact = (Generator.from_bundle(bundle, engine=e) for e in ("openvino-bf16", "openvino-fp32"))
    assert "bfloat16" in _hint(fast) and "float32" in _hint(exact)
    a, b = (g.generate_float(["a red circle"], [0]) for g in (fast, exact))
    assert 0 < np.abs(a - b).max() < 0.1  # close, and not the f32 computation
    assert Generator.from_bundle(bundle).engine_entry.id == "openvino-bf16"  # ranked before fp32


def test_without_native_bf16_the_engine_is_refused_and_another_runs(bundle, monkeypatch):
    from fewstep.core.manifest import read_manifest

    monkeypatch.setattr(ov_backend, "native_bf16", lambda core, device="CPU": False)
    if "openvino-bf16" not in read_manifest(bundle).engine_ids:  # exported where bf16 could not be gated
        pytest.skip("the bundle has no bf16 engine on this CPU")
    with pytest.raises(BackendUnavailable, match="needs native bf16"):
        Generator.from_bundle(bundle, engine="openvino-bf16")
    assert Generator.from_bundle(bundle).engine_entry.id == "openvino-fp32"


def test_the_decoder_of_a_bf16_engine_runs_in_bf16_and_every_other_keeps_its_own():
    from fewstep.core.manifest import DecoderEntry, EngineEntry
    from fewstep.runtime.generator import decoder_backend

    vae = DecoderEntry("decoder.onnx", "0" * 64, {}, {}, "onnxruntime", "fp32")
    coreml = DecoderEntry("decoder.mlpackage", "0" * 64, {}, {}, "coreml", "fp16")

    def engine(backend: str, precision: str) -> EngineEntry:
        return EngineEntry(id=f"{backend}-{precision}", backend=backend, precision=precision, files={}, inputs={},
                           outputs={})  # fmt: skip

    assert decoder_backend(vae, engine("openvino", "bf16")) == ("openvino", "bf16")
    for other in (engine("openvino", "fp32"), engine("openvino", "int8"), engine("onnxruntime", "fp32"), None):
        assert decoder_backend(vae, other) == ("onnxruntime", "fp32")
    assert decoder_backend(coreml, engine("openvino", "bf16")) == ("coreml", "fp16")  # not an ONNX file
