"""Graphs past protobuf's 2 GiB: weights in one external `.data` file, checked by path, moved with their graph,
hashed in a bundle, and run by ONNX Runtime and OpenVINO. The first test writes a real 2.2 GB initializer so
the >2 GiB path can never regress; the others force the external layout on tiny models to cover every bundle
file (engines of each precision, prompt graph, VAE decoder) in seconds."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from fewstep.export import onnx_files
from fewstep.export.targets import onnx as onnx_target
from fewstep.export.targets.onnx import export_graph

ort = pytest.importorskip("onnxruntime")


class _BigWeights(nn.Module):
    """y = x W[:, :8]^T + mean(W): one 2.2 GB parameter that the graph must keep (no constant folding)."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(4, 137_500_000))
        self.w.data[:, :8] = torch.randn(4, 8, generator=torch.Generator().manual_seed(0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.w[:, :8].T + self.w.mean()


@pytest.mark.slow
def test_a_graph_over_2_gib_exports_moves_and_runs(tmp_path):
    module = _BigWeights()
    x = torch.randn(3, 8)
    path = export_graph(module, (torch.randn(2, 8),), tmp_path / ".big.tmp.onnx", ["x"], ["y"])
    data = tmp_path / onnx_files.data_name(path)
    assert data.stat().st_size > 2**31  # past protobuf's limit: an inline graph could not be written at all
    assert path.stat().st_size < 1 << 20  # the graph itself holds no weights
    moved = onnx_files.relocate(path, tmp_path / "denoiser.onnx-fp32.onnx")
    assert [p.name for p in moved] == ["denoiser.onnx-fp32.onnx", "denoiser.onnx-fp32.onnx.data"]
    assert not path.exists() and not data.exists()
    assert onnx_files.external_files(moved[0]) == ["denoiser.onnx-fp32.onnx.data"]
    ref = module(x).detach().numpy()
    del module  # free the torch copy before ONNX Runtime loads its own
    session = ort.InferenceSession(str(moved[0]), providers=["CPUExecutionProvider"])
    got = session.run(None, {"x": x.numpy()})[0]
    np.testing.assert_allclose(got, ref, atol=1e-5)


def test_small_graphs_stay_one_file(tmp_path):
    path = export_graph(nn.Linear(8, 4), (torch.randn(2, 8),), tmp_path / "small.onnx", ["x"], ["y"])
    assert onnx_files.graph_files(path) == [path]
    assert [p.name for p in onnx_files.relocate(path, tmp_path / "moved.onnx", copy=True)] == ["moved.onnx"]
    assert path.exists()  # copy=True keeps the source (the shared fp32 graph other exporters start from)


def test_relocate_copy_keeps_the_source_and_its_weights(tmp_path, monkeypatch):
    monkeypatch.setattr(onnx_target, "EXTERNAL_DATA_ABOVE", 0)
    path = export_graph(nn.Linear(64, 32), (torch.randn(2, 64),), tmp_path / "src.onnx", ["x"], ["y"])
    assert onnx_files.external_files(path) == ["src.onnx.data"]
    moved = onnx_files.relocate(path, tmp_path / "dst.onnx", copy=True)
    assert path.exists() and (tmp_path / "src.onnx.data").exists()
    onnx_files.remove(path)
    assert not (tmp_path / "src.onnx.data").exists()
    x = np.random.default_rng(0).standard_normal((2, 64)).astype(np.float32)
    assert ort.InferenceSession(str(moved[0])).run(None, {"x": x})[0].shape == (2, 32)


@pytest.mark.slow
def test_a_bundle_of_external_data_graphs_runs_like_one_of_inline_graphs(tmp_path, monkeypatch):
    """Every graph of a latent bundle with its weights outside (as SD-size graphs have them): fp32, fp16 and
    both int8 quantizers on ONNX Runtime and OpenVINO pass their gates, every data file is listed with its
    sha256 and checked on load, and the images equal those of the same bundle's ONNX engines with inline graphs
    (exported without OpenVINO and fp16, which have no external-data path of their own to compare)."""
    from fewstep.core.manifest import BundleError
    from fewstep.export.bundle import BundleExport
    from fewstep.export.config import ExportConfig
    from fewstep.runtime import Generator
    from fewstep.testing.tiny_pipelines import tiny_sd_pipeline

    pipe = tiny_sd_pipeline(tmp_path / "sd")
    cfg = ExportConfig(to=("onnx", "openvino"), precision=("fp32", "fp16", "int8"), parity_prompts=2,
                       calibration_prompts=4, speed_gate=False, min_psnr_int8=15.0)  # a random teacher  # fmt: skip
    inline_cfg = dataclasses.replace(cfg, to=("onnx",), precision=("fp32", "int8"))
    inline = BundleExport(str(pipe), tmp_path / "inline", inline_cfg, log=lambda m: None).run()
    monkeypatch.setattr(onnx_target, "EXTERNAL_DATA_ABOVE", 0)
    manifest = BundleExport(str(pipe), tmp_path / "external", cfg, log=lambda m: None).run()
    root = tmp_path / "external"
    assert not manifest.refused, manifest.refused
    onnx_engines = [e for e in manifest.engines if e.backend == "onnxruntime"]
    assert len(onnx_engines) == 4  # fp32, fp16, int8 nncf, int8 ort
    for e in onnx_engines:
        assert list(e.files) == [f"denoiser.{e.id}.onnx", f"denoiser.{e.id}.onnx.data"], e.files
        assert onnx_files.external_files(root / e.main_file) == [f"denoiser.{e.id}.onnx.data"]
    assert list(manifest.text_encoder.data_files) == ["text_encoder.onnx.data"]
    assert list(manifest.decoders["vae"].data_files) == ["decoder.onnx.data"]
    assert not list(root.glob(".*")), "temporary files were left behind"
    prompts = ["a red circle", "a blue square"]
    want = Generator.from_bundle(tmp_path / "inline", engine="onnx-fp32").generate(prompts, [1, 2])
    for engine in ("onnx-fp32", "openvino-fp32"):  # OpenVINO read the fp32 graph and its data file by path
        got = Generator.from_bundle(root, engine=engine).generate(prompts, [1, 2])
        assert np.abs(got.astype(int) - want.astype(int)).max() <= 1, engine
    # the same quantization from weights outside the graph as from weights inside it
    psnr = {e.id: e.gates["parity"]["psnr_db"] for e in inline.engines}
    assert psnr.keys() == {e.id for e in onnx_engines if e.precision != "fp16"}
    for e in manifest.engines:
        if e.id in psnr:
            assert abs(e.gates["parity"]["psnr_db"] - psnr[e.id]) < 0.5, (e.id, e.gates, psnr[e.id])
    data = root / "denoiser.onnx-fp32.onnx.data"
    with open(data, "r+b") as f:  # one flipped byte in the weights is caught before the engine runs
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(BundleError, match="does not match its sha256"):
        Generator.from_bundle(root, engine="onnx-fp32")
    Path(root / "decoder.onnx.data").unlink()
    with pytest.raises(BundleError, match=r"missing decoder\.onnx\.data"):
        Generator.from_bundle(root, engine="openvino-fp32")


@pytest.mark.slow
def test_openvino_weight_only_int8_and_int4_engines(tmp_path):
    """int8w and int4w (NNCF weight compression, no calibration) pass their floors, store their weights in fewer
    bits (int4 where the channels allow, int8 elsewhere) and run through the runtime."""
    pytest.importorskip("openvino")
    import openvino as ov

    from fewstep.export.bundle import BundleExport
    from fewstep.export.config import ExportConfig
    from fewstep.runtime import Generator
    from fewstep.testing.tiny_pipelines import tiny_sd_pipeline

    pipe = tiny_sd_pipeline(tmp_path / "sd")
    cfg = ExportConfig(to=("openvino",), precision=("fp32", "int8w", "int4w"), parity_prompts=2, speed_gate=False)
    manifest = BundleExport(str(pipe), tmp_path / "b", cfg, log=lambda m: None).run()
    engines = {e.id: e for e in manifest.engines}
    assert set(engines) == {"openvino-fp32", "openvino-int8w", "openvino-int4w"}, manifest.refused
    assert engines["openvino-int4w"].gates["parity"]["passed"] is True
    assert (
        engines["openvino-int4w"].size_bytes
        < engines["openvino-int8w"].size_bytes
        < engines["openvino-fp32"].size_bytes
    )
    model = ov.Core().read_model(str(tmp_path / "b" / engines["openvino-int4w"].main_file))
    types = {
        op.get_output_element_type(0).get_type_name() for op in model.get_ops() if op.get_type_name() == "Constant"
    }
    assert "i4" in types or "u4" in types  # 4-bit weights are really stored
    images = Generator.from_bundle(tmp_path / "b", engine="openvino-int4w").generate(["a red circle"], [0])
    assert images.shape == (1, 32, 32, 3)
