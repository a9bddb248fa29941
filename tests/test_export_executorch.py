"""ExecuTorch export: `.pte` programs (XNNPACK) in a bundle, run by ExecuTorch's own runtime, against torch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.test_export import _checkpoint, _export

pytest.importorskip("executorch.runtime", reason="ExecuTorch export needs the edge extra: pip install 'fewstep[edge]'")

from fewstep.backends.executorch import ExecuTorchLoadError
from fewstep.core.manifest import EngineEntry, read_manifest
from fewstep.export.targets import executorch as to_executorch
from fewstep.runtime import Generator
from fewstep.runtime.registry import load_engine

PROMPTS = ["a red circle on the left", "a small blue square", ""]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """fp32 + int8 `.pte` engines of a CFG student (fixed batch 2), beside its torch engine."""
    root = tmp_path_factory.mktemp("et")
    ckpt = _checkpoint(root, "euler-cfg")
    return root / "b", _export(ckpt, root / "b", to=("torch", "executorch"), precision=("fp32", "int8"))


def _engine(manifest: dict, engine_id: str) -> dict:
    return next(e for e in manifest["engines"] if e["id"] == engine_id)


@pytest.mark.slow
@pytest.mark.parametrize("guidance", [None, 1.0])  # CFG: 2 rows per call; guidance 1: 1 row, padded to 2
def test_pte_images_match_the_torch_student(bundle, guidance):
    root, manifest = bundle
    entry = _engine(manifest, "executorch-fp32")
    assert entry["verified"] and entry["gates"]["parity"]["psnr_db"] >= 60
    assert entry["info"]["fixed_batch"] == 2 and entry["info"]["pte_bytes"] == entry["size_bytes"]
    assert entry["info"]["delegated_nodes"] > 0
    assert "aten_native_group_norm_default" in entry["info"]["non_delegated_ops"]  # XNNPACK has no group norm
    et = Generator.from_bundle(root, engine="executorch-fp32").generate(PROMPTS, [0, 1, 2], guidance=guidance)
    eager = Generator.from_bundle(root, engine="torch-fp32").generate(PROMPTS, [0, 1, 2], guidance=guidance)
    assert np.abs(et.astype(int) - eager.astype(int)).max() <= 1


@pytest.mark.slow
def test_int8_is_quantized_calibrated_and_gated(bundle):
    _, manifest = bundle
    int8, fp32 = _engine(manifest, "executorch-int8"), _engine(manifest, "executorch-fp32")
    info = int8["info"]
    assert info["quantizer"] == "xnnpack-pt2e" and info["calibration_batches"] >= 1
    assert int8["calibration"] and int8["size_bytes"] < 0.8 * fp32["size_bytes"]
    assert 30 <= int8["gates"]["parity"]["psnr_db"] < 60  # quantized (not fp32 in disguise), within the int8 floor
    assert "speedup_vs_fp32" in int8["gates"]["speed"]


@pytest.mark.slow
def test_engine_pads_and_chunks_to_its_fixed_batch(bundle):
    root, _ = bundle
    manifest = read_manifest(root)
    entry, eager = manifest.engine("executorch-fp32"), manifest.engine("torch-fp32")
    engine = load_engine("executorch", root / entry.main_file, entry)
    reference = load_engine("torch", root / eager.main_file, eager)
    g = np.random.default_rng(0)
    for batch in (1, 2, 3, 5):  # below, at and above the program's batch of 2
        x = {n: g.standard_normal(s.concrete(batch)).astype(np.float32) for n, s in entry.inputs.items()}
        x["t"] = g.uniform(0.05, 1, batch).astype(np.float32)
        x["text_mask"] = np.ones_like(x["text_mask"])
        got, want = engine.run(x)["v"], reference.run(x)["v"]
        assert got.shape == want.shape and np.abs(got - want).max() < 1e-4


def test_calibration_rows_regroup_into_the_fixed_batch():
    rows = [{"x": np.arange(3, dtype=np.float32)[:, None] + 10 * i, "t": np.ones(3, np.float32)} for i in range(2)]
    batches = to_executorch.calibration_batches(rows, 4)
    assert [tuple(b[0].shape) for b in batches] == [(4, 1)]  # 6 rows: one batch of 4, the rest dropped
    assert batches[0][0][:, 0].tolist() == [0, 1, 2, 10]
    few = to_executorch.calibration_batches(rows[:1], 4)
    assert [b[0][:, 0].tolist() for b in few] == [[0, 1, 2, 0]]  # fewer rows than a batch: repeated
    assert to_executorch.calibration_batches([], 2) == []


def test_an_operator_without_a_kernel_is_named_with_its_layer():
    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.block = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.GELU())

        def forward(self, x):
            return self.block(x)

    program = torch.export.export(Model(), (torch.randn(2, 4),)).run_decompositions({})
    with pytest.raises(to_executorch.ExecuTorchExportError, match=r"aten::gelu.*block\.1.*GELU"):
        to_executorch.check_kernels(program.graph_module, available={"aten::linear"})
    to_executorch.check_kernels(program.graph_module, available={"aten::linear", "aten::gelu"})


def test_a_broken_pte_fails_with_the_runtime_reason(tmp_path):
    bad = tmp_path / "denoiser.pte"
    bad.write_bytes(b"not a program" * 10)
    entry = EngineEntry("executorch-fp32", "executorch", "fp32", {}, {}, {}, info={"fixed_batch": 1})
    with pytest.raises(ExecuTorchLoadError, match="ExecuTorch cannot load"):
        load_engine("executorch", bad, entry)
    with pytest.raises(ValueError, match="fixed_batch"):
        load_engine("executorch", bad, EngineEntry("e", "executorch", "fp32", {}, {}, {}))


def test_fixed_batch_follows_the_guidance_mode_unless_set():
    from fewstep.export.context import fixed_batch

    assert fixed_batch({}, to_executorch.BATCH_OPTION) == 1
    assert fixed_batch({"cfg": True}, to_executorch.BATCH_OPTION) == 2
    assert fixed_batch({"cfg": True, "executorch_batch": 4}, to_executorch.BATCH_OPTION) == 4
    with pytest.raises(ValueError, match="executorch_batch"):
        fixed_batch({"executorch_batch": 0}, to_executorch.BATCH_OPTION)
