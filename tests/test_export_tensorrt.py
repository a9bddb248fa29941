"""TensorRT, Torch-TensorRT and Triton export.

GPU-free parts run everywhere: the TensorRT operator check on a real dynamo ONNX export of a tiny denoiser, the
Q/DQ checks, polygraphy on that graph (when installed) and Triton configs parsed against Triton's own ModelConfig
proto (when tritonclient is installed). Engine builds and runs need an NVIDIA GPU with TensorRT and skip otherwise.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import TEXT_DIM, TINY_UNET, TOKENS

from fewstep.core.manifest import TensorSpec
from fewstep.runtime.registry import get_backend

IMAGE = {"channels": 3, "height": 16, "width": 16}


def _gpu_skip_reason(can_run) -> str | None:
    reason = can_run()
    return None if reason is None else f"needs an NVIDIA GPU with TensorRT: not available on this machine ({reason})"


@pytest.fixture(scope="module")
def denoiser():
    from fewstep.export.denoiser import Denoiser
    from fewstep.models.unet_flow import build_unet_flow

    torch.manual_seed(0)
    return Denoiser(build_unet_flow(TINY_UNET), IMAGE, tokens=TOKENS, text_dim=TEXT_DIM).eval()


@pytest.fixture(scope="module")
def denoiser_onnx(denoiser, tmp_path_factory):
    """The fp32 graph TensorRT would parse: dynamo export, opset 20, dynamic batch on every input."""
    pytest.importorskip("onnxscript", reason="ONNX export needs the export extra: pip install 'fewstep[export]'")
    path = tmp_path_factory.mktemp("onnx") / "denoiser.onnx"
    batch = torch.export.Dim("batch", min=1, max=64)
    with torch.no_grad():
        torch.onnx.export(
            denoiser,
            denoiser.example_inputs(2),
            str(path),
            input_names=denoiser.input_names,
            output_names=["v"],
            dynamic_shapes={name: {0: batch} for name in denoiser.input_names},
            opset_version=20,
            dynamo=True,
            external_data=False,
        )
    return path


def _feed(denoiser, batch: int, seed: int = 1) -> dict[str, np.ndarray]:
    return {n: a.numpy() for n, a in zip(denoiser.input_names, denoiser.example_inputs(batch, seed), strict=True)}


def _torch_v(denoiser, feed: dict[str, np.ndarray]) -> np.ndarray:
    with torch.no_grad():
        return denoiser(*(torch.from_numpy(feed[n]) for n in denoiser.input_names)).numpy()


# ---- GPU-free: operator support ----------------------------------------------------------------------------


def test_op_table_follows_the_onnx_tensorrt_matrix():
    from fewstep.export.targets.tensorrt import TENSORRT_ONNX_OPS

    for op in ("Conv", "InstanceNormalization", "LayerNormalization", "Gelu", "Resize", "QuantizeLinear"):
        assert op in TENSORRT_ONNX_OPS
    for op in ("ConvInteger", "MatMulInteger", "QLinearConv", "DynamicQuantizeLinear", "Unique", "SequenceAt"):
        assert op not in TENSORRT_ONNX_OPS  # "N" rows of operators.md


@pytest.mark.slow
def test_exported_denoiser_uses_only_ops_tensorrt_parses(denoiser_onnx):
    import onnx

    from fewstep.export.targets.tensorrt import check_for_tensorrt, unsupported_ops

    assert unsupported_ops(denoiser_onnx) == {}
    check_for_tensorrt(denoiser_onnx)  # does not raise
    model = onnx.load(str(denoiser_onnx), load_external_data=False)
    assert [i.name for i in model.graph.input] == ["x", "t", "text", "text_mask"]
    assert all(i.type.tensor_type.shape.dim[0].dim_param for i in model.graph.input)  # dynamic batch axis


def _graph_with_foreign_ops():
    """Relu (fine), an ORT contrib op, ConvInteger (unsupported), an If whose branch hides MatMulInteger, and a
    model-local function whose body uses Unique."""
    from onnx import TensorProto, helper

    f32 = TensorProto.FLOAT
    then_g = helper.make_graph(
        [helper.make_node("MatMulInteger", ["a8", "a8"], ["m"], name="hidden_mmi")],
        "then",
        [],
        [helper.make_tensor_value_info("m", TensorProto.INT32, None)],
    )
    else_g = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["e"], name="else_id")],
        "else",
        [],
        [helper.make_tensor_value_info("e", f32, None)],
    )
    func = helper.make_function(
        "my.funcs",
        "Dedup",
        ["i"],
        ["o"],
        [helper.make_node("Unique", ["i"], ["o"], name="uniq")],
        [helper.make_opsetid("", 20)],
    )
    nodes = [
        helper.make_node("Relu", ["x"], ["r"], name="relu"),
        helper.make_node("FusedMatMul", ["r", "r"], ["fm"], name="fused", domain="com.microsoft"),
        helper.make_node("ConvInteger", ["a8", "a8"], ["ci"], name="convint"),
        helper.make_node("If", ["cond"], ["branch"], name="maybe", then_branch=then_g, else_branch=else_g),
        helper.make_node("Dedup", ["x"], ["d"], name="call_dedup", domain="my.funcs"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [
            helper.make_tensor_value_info("x", f32, [2, 2]),
            helper.make_tensor_value_info("a8", TensorProto.UINT8, [2, 2]),
            helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
        ],
        [helper.make_tensor_value_info("fm", f32, None)],
    )
    opsets = [helper.make_opsetid("", 20), helper.make_opsetid("com.microsoft", 1), helper.make_opsetid("my.funcs", 1)]
    return helper.make_model(graph, opset_imports=opsets, functions=[func])


def test_unsupported_and_custom_domain_ops_are_flagged(tmp_path):
    import onnx

    from fewstep.export.targets.tensorrt import check_for_tensorrt, unsupported_ops

    model = _graph_with_foreign_ops()
    expected = {
        "com.microsoft::FusedMatMul": ["fused"],
        "ConvInteger": ["convint"],
        "MatMulInteger": ["maybe/then_branch/hidden_mmi"],
        "Unique": ["call_dedup/uniq"],
    }
    assert unsupported_ops(model) == expected
    path = tmp_path / "foreign.onnx"
    onnx.save(model, str(path))
    assert unsupported_ops(path) == expected  # a path works as well as a ModelProto
    with pytest.raises(ValueError, match="TensorRT ONNX parser does not support") as err:
        check_for_tensorrt(path)
    for line in ("com.microsoft::FusedMatMul: fused", "ConvInteger: convint", "Unique: call_dedup/uniq"):
        assert line in str(err.value)


def _qdq_model(zero_point: np.ndarray | None):
    from onnx import TensorProto, helper, numpy_helper

    inits = [numpy_helper.from_array(np.array(0.1, dtype=np.float32), "scale")]
    q_inputs = ["x", "scale"]
    if zero_point is not None:
        inits.append(numpy_helper.from_array(zero_point, "zp"))
        q_inputs.append("zp")
    nodes = [
        helper.make_node("QuantizeLinear", q_inputs, ["q"], name="q"),
        helper.make_node("DequantizeLinear", ["q", *q_inputs[1:]], ["y"], name="dq"),
    ]
    graph = helper.make_graph(
        nodes,
        "qdq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 4])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])


def _plain_model():
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "plain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])


def test_qdq_graphs_must_be_symmetric_int8():
    from fewstep.export.targets.tensorrt import qdq_problems

    assert qdq_problems(_qdq_model(np.array(0, dtype=np.int8))) == []
    assert qdq_problems(_qdq_model(None)) == []
    uint8 = qdq_problems(_qdq_model(np.array(128, dtype=np.uint8)))  # ORT's u8 activations: refused by TensorRT
    assert len(uint8) == 2 and "uint8" in uint8[0]
    assert "not explicitly quantized" in qdq_problems(_plain_model())[0]


@pytest.mark.slow
def test_export_errors_name_the_fix(denoiser, tmp_path):
    import onnx

    from fewstep.export.context import ExportContext, get_exporter
    from fewstep.export.targets import tensorrt as to_tensorrt

    export = get_exporter("tensorrt")
    ctx = ExportContext(denoiser, tmp_path)
    # int8 is built from a symmetric Q/DQ graph it quantizes itself, from the student's sampler inputs
    with pytest.raises(ValueError, match="calibration data"):
        export(ctx, "int8")
    with pytest.raises(ValueError, match="writes fp32, fp16, int8"):
        export(ctx, "int4")
    plain = tmp_path / "plain.onnx"
    onnx.save(_plain_model(), str(plain))
    with pytest.raises(ValueError, match="not explicitly quantized"):
        to_tensorrt.export(ExportContext(denoiser, tmp_path, options={"qdq_onnx": plain}), "int8")
    with pytest.raises(ValueError, match="opt_batch <= max_batch"):
        to_tensorrt.batch_profile(ExportContext(denoiser, tmp_path, max_batch=4, options={"opt_batch": 8}))
    assert to_tensorrt.batch_profile(ExportContext(denoiser, tmp_path, max_batch=8, options={"opt_batch": 2})) == {
        "min": 1,
        "opt": 2,
        "max": 8,
    }


def test_can_run_gives_a_reason_without_tensorrt():
    for name, package in (("tensorrt", "tensorrt"), ("torch-tensorrt", "torch_tensorrt")):
        reason = get_backend(name).unavailable_reason()
        try:
            __import__(package)
        except ImportError:
            assert reason is not None and "fewstep[gpu]" in reason
        else:
            assert reason is None or "GPU" in reason or "CUDA" in reason


def test_tensorrt_runtime_backend_is_torch_free_and_explains_absence():
    code = (
        "import sys; [sys.modules.__setitem__(m, None) for m in ('torch', 'diffusers', 'transformers')]\n"
        "from fewstep.backends.tensorrt import TensorRTEngine, unavailable_reason\n"
        "from fewstep.runtime.engine import BackendUnavailable\n"
        "reason = unavailable_reason()\n"
        "try:\n"
        "    TensorRTEngine('missing.plan')\n"
        "except BackendUnavailable as e:\n"
        "    assert reason is not None and str(e) == reason\n"
        "except FileNotFoundError:\n"
        "    assert reason is None\n"
        "assert 'torch' not in {m for m, v in sys.modules.items() if v is not None}\n"
        "print(reason or 'available')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip()


# ---- polygraphy (GPU-free parts) ---------------------------------------------------------------------------


@pytest.mark.slow
def test_polygraphy_inspects_and_runs_the_graph_with_onnxruntime(denoiser, denoiser_onnx):
    pytest.importorskip("polygraphy", reason="polygraphy is not installed (pip install polygraphy)")
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx

    cli = [sys.executable, "-c", "import sys; from polygraphy.tools import main; sys.exit(main())"]
    inspect = subprocess.run([*cli, "inspect", "model", str(denoiser_onnx)], capture_output=True, text=True)
    assert inspect.returncode == 0, inspect.stdout + inspect.stderr
    assert "x [dtype=float32, shape=('batch', 3, 16, 16)]" in inspect.stdout
    feed = _feed(denoiser, batch=3)  # a batch the export never saw: the dynamic axis works
    with OnnxrtRunner(SessionFromOnnx(str(denoiser_onnx), providers=["CPUExecutionProvider"])) as runner:
        v = runner.infer(feed)["v"]
    np.testing.assert_allclose(v, _torch_v(denoiser, feed), atol=1e-4)


# ---- Triton model repository -------------------------------------------------------------------------------

IO_IN = {
    "x": TensorSpec(("B", 3, 16, 16)),
    "t": TensorSpec(("B",)),
    "text": TensorSpec(("B", TOKENS, TEXT_DIM)),
    "text_mask": TensorSpec(("B", TOKENS)),
}
IO_OUT = {"v": TensorSpec(("B", 3, 16, 16))}


@pytest.mark.parametrize("platform", ["onnxruntime_onnx", "tensorrt_plan"])
def test_triton_config_parses_as_triton_model_config(platform, tmp_path):
    mc = pytest.importorskip(
        "tritonclient.grpc.model_config_pb2", reason="tritonclient is not installed (pip install 'tritonclient[grpc]')"
    )
    import onnx
    from google.protobuf import text_format

    from fewstep.export.triton import write_triton_repository

    engine = tmp_path / "engine.bin"
    if platform == "onnxruntime_onnx":
        onnx.save(_plain_model(), str(engine))  # the repository writer reads ONNX graphs for external weights
    else:
        engine.write_bytes(b"plan bytes")
    text = write_triton_repository(
        tmp_path / "repo", "fewstep_denoiser", engine, platform, IO_IN, IO_OUT, 16, [8, 4, 8], 500, 2, "KIND_GPU"
    )
    cfg = text_format.Parse(text, mc.ModelConfig())
    assert (cfg.name, cfg.platform, cfg.max_batch_size) == ("fewstep_denoiser", platform, 16)
    dims = {i.name: list(i.dims) for i in cfg.input}
    assert dims == {"x": [3, 16, 16], "t": [1], "text": [TOKENS, TEXT_DIM], "text_mask": [TOKENS]}
    assert all(i.data_type == mc.TYPE_FP32 for i in (*cfg.input, *cfg.output))
    t = next(i for i in cfg.input if i.name == "t")
    assert t.HasField("reshape") and list(t.reshape.shape) == []  # [B] in the model, [B, 1] in requests
    assert [(o.name, list(o.dims)) for o in cfg.output] == [("v", [3, 16, 16])]
    assert cfg.WhichOneof("scheduling_choice") == "dynamic_batching"
    assert list(cfg.dynamic_batching.preferred_batch_size) == [4, 8]
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 500
    assert [(g.count, g.kind) for g in cfg.instance_group] == [(2, mc.ModelInstanceGroup.KIND_GPU)]


def test_triton_repository_layout_and_unbatched_config(tmp_path):
    from fewstep.export.triton import config_pbtxt, write_triton_repository

    engine = tmp_path / "denoiser.plan"
    engine.write_bytes(b"plan")
    repo = tmp_path / "repo"
    text = write_triton_repository(repo, "m", engine, "tensorrt_plan", IO_IN, IO_OUT, 8, [], 0)
    model_file = repo / "m" / "1" / "model.plan"
    assert model_file.read_bytes() == b"plan" and (repo / "m" / "config.pbtxt").read_text() == text
    inode = model_file.stat().st_ino
    write_triton_repository(repo, "m", engine, "tensorrt_plan", IO_IN, IO_OUT, 8, [], 0)
    assert model_file.stat().st_ino == inode  # an identical engine is kept, not rewritten
    assert "preferred_batch_size" not in text and "max_queue_delay_microseconds: 0" in text
    unbatched = config_pbtxt("m", "onnxruntime_onnx", IO_IN, IO_OUT, 0)
    assert (
        "dims: [ -1, 3, 16, 16 ]" in unbatched and "dims: [ -1 ]" in unbatched and "dynamic_batching" not in unbatched
    )


def test_triton_copies_onnx_external_weights(tmp_path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from fewstep.export.triton import write_triton_repository

    w = numpy_helper.from_array(np.ones((2, 2), dtype=np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "ext",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 2])],
        [w],
    )
    src = tmp_path / "src" / "model.onnx"
    src.parent.mkdir()
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    onnx.save(model, str(src), save_as_external_data=True, location="weights.bin", size_threshold=0)
    io = {"x": TensorSpec(("B", 2))}
    write_triton_repository(tmp_path / "repo", "mm", src, "onnxruntime_onnx", io, {"y": io["x"]}, 4, [2], 100)
    assert (tmp_path / "repo" / "mm" / "1" / "weights.bin").read_bytes() == (src.parent / "weights.bin").read_bytes()


def test_triton_config_refuses_what_triton_would():
    from fewstep.export.triton import config_pbtxt, triton_dtype

    assert (triton_dtype("float16"), triton_dtype("int64"), triton_dtype("bool")) == (
        "TYPE_FP16",
        "TYPE_INT64",
        "TYPE_BOOL",
    )
    with pytest.raises(ValueError, match="'B' must come first"):
        config_pbtxt("m", "tensorrt_plan", {"x": TensorSpec((3, "B"))}, IO_OUT, 8)
    with pytest.raises(ValueError, match="only on a GPU"):
        config_pbtxt("m", "tensorrt_plan", IO_IN, IO_OUT, 8, kind="KIND_CPU")
    with pytest.raises(ValueError, match=r"1\.\.max_batch_size"):
        config_pbtxt("m", "onnxruntime_onnx", IO_IN, IO_OUT, 8, preferred_batch_sizes=[16])
    with pytest.raises(ValueError, match="platform must be one of"):
        config_pbtxt("m", "pytorch_libtorch", IO_IN, IO_OUT, 8)
    with pytest.raises(ValueError, match="no Triton datatype"):
        triton_dtype("complex64")


# ---- GPU: TensorRT engines and Torch-TensorRT ---------------------------------------------------------------


def _tensorrt_ctx(denoiser, denoiser_onnx, tmp_path, **options):
    from fewstep.export.context import ExportContext

    return ExportContext(denoiser, tmp_path, onnx_fp32=denoiser_onnx, max_batch=8, options={"opt_batch": 2, **options})


def _max_rel_err(got: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(got - ref).max() / max(1.0, float(np.abs(ref).max())))


@pytest.mark.slow
@pytest.mark.parametrize("precision, tol", [("fp32", 1e-3), ("fp16", 2e-2)])
def test_tensorrt_engine_matches_torch(precision, tol, denoiser, denoiser_onnx, tmp_path):
    from fewstep.export.targets import tensorrt as to_tensorrt

    reason = _gpu_skip_reason(get_backend("tensorrt").unavailable_reason)
    if reason:
        pytest.skip(reason)
    from fewstep.backends.tensorrt import TensorRTEngine
    from fewstep.runtime.engine import EngineInputError

    art = to_tensorrt.export(_tensorrt_ctx(denoiser, denoiser_onnx, tmp_path), precision)
    assert art.path.name == f"denoiser.{precision}.plan" and art.backend == "tensorrt"
    assert art.info["profile"]["min"] == 1 and art.info["profile"]["max"] == 8
    assert art.info["profile"]["shapes"]["x"]["opt"] == [2, 3, 16, 16]
    inputs, outputs = denoiser.io_specs()
    engine = TensorRTEngine(art.path, inputs, outputs)
    assert engine.batch_range == (1, 8)
    for batch in (1, 3, 8):
        feed = _feed(denoiser, batch)
        v = engine.run(feed)["v"]
        assert v.shape == (batch, 3, 16, 16) and v.dtype == np.float32
        assert _max_rel_err(v, _torch_v(denoiser, feed)) < tol
    with pytest.raises(EngineInputError, match=r"batches 1\.\.8"):
        engine.run(_feed(denoiser, 9))
    engine.close()


@pytest.mark.slow
def test_tensorrt_int8_engine_from_an_nncf_qdq_graph(denoiser, denoiser_onnx, tmp_path):
    from fewstep.export.targets import tensorrt as to_tensorrt

    reason = _gpu_skip_reason(get_backend("tensorrt").unavailable_reason)
    if reason:
        pytest.skip(reason)
    nncf = pytest.importorskip("nncf", reason="the Q/DQ graph comes from NNCF: pip install 'fewstep[export]'")
    import onnx

    from fewstep.backends.tensorrt import TensorRTEngine

    # symmetric activations: TensorRT needs zero points of 0 (NNCF's TRANSFORMER default, MIXED, is asymmetric)
    qdq = tmp_path / "denoiser.int8.qdq.onnx"
    quantized = nncf.quantize(
        onnx.load(str(denoiser_onnx)),
        nncf.Dataset([_feed(denoiser, 2, seed) for seed in range(8)]),
        preset=nncf.QuantizationPreset.PERFORMANCE,
        model_type=nncf.ModelType.TRANSFORMER,
        subset_size=8,
    )
    onnx.save(quantized, str(qdq))
    art = to_tensorrt.export(_tensorrt_ctx(denoiser, denoiser_onnx, tmp_path, qdq_onnx=qdq), "int8")
    assert art.info["network_flags"] == ["STRONGLY_TYPED"] and art.info["quantization"] == "explicit Q/DQ"
    feed = _feed(denoiser, 4)
    v, ref = TensorRTEngine(art.path).run(feed)["v"], _torch_v(denoiser, feed)
    assert np.sqrt(np.mean((v - ref) ** 2)) < 0.25 * np.sqrt(np.mean(ref**2))  # int8: close, not exact


@pytest.mark.slow
def test_torch_tensorrt_fp16_module_matches_torch(denoiser, tmp_path):
    from fewstep.export.context import ExportContext
    from fewstep.export.targets import torch_tensorrt as to_torch_tensorrt

    reason = _gpu_skip_reason(get_backend("torch-tensorrt").unavailable_reason)
    if reason:
        pytest.skip(reason)
    import torch_tensorrt  # noqa: F401  (registers the TensorRT ops TorchScript needs to load)

    ctx = ExportContext(denoiser, tmp_path, max_batch=8, options={"opt_batch": 2})
    art = to_torch_tensorrt.export(ctx, "fp16")
    assert art.path.name == "denoiser.fp16.ts" and art.info["format"] == "torchscript"
    module = torch.jit.load(str(art.path)).cuda()
    for batch in (1, 5):
        feed = _feed(denoiser, batch)
        with torch.no_grad():
            v = module(*(torch.from_numpy(feed[n]).cuda() for n in denoiser.input_names)).float().cpu().numpy()
        assert _max_rel_err(v, _torch_v(denoiser, feed)) < 2e-2
    # and through the runtime's torch-tensorrt backend, which the gates and Generator use
    from fewstep.runtime.registry import load_engine

    engine = load_engine("torch-tensorrt", art.path, denoiser.entry("torch-tensorrt", "fp16"), threads=2)
    feed = _feed(denoiser, 3)
    assert _max_rel_err(engine.run(feed)["v"], _torch_v(denoiser, feed)) < 2e-2


def test_every_backend_takes_the_options_the_generator_always_passes():
    """Generator.from_bundle passes `threads` to whichever backend it loads; an option a backend does not take is
    a clear ValueError naming what it does take (not a TypeError read as a malformed manifest)."""
    import inspect

    from fewstep.runtime.registry import backends, load_engine

    for backend in backends():
        assert "threads" in inspect.signature(backend.open_engine).parameters, backend.name
    with pytest.raises(ValueError, match=r"tensorrt engines take no option cache_dir .*device, threads"):
        load_engine("tensorrt", "engine.plan", None, cache_dir="x")
