"""LoRA students (peft adapters on the teacher's frozen network), gradient checkpointing and the optimizer choice."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fewstep.compress.trainer import LoopConfig
from fewstep.models.checkpoint import CheckpointError, load_tensors
from fewstep.models.loading import load_model
from fewstep.models.lora import add_lora
from fewstep.models.model_kinds import build_model
from fewstep.testing.tiny_pipelines import tiny_sd_pipeline
from tests.distill_fixtures import distill_tiny

pytest.importorskip("peft")

LORA = {"lora_rank": 4, "lora_alpha": 8.0}


@pytest.fixture(scope="module")
def sd_pipe(tmp_path_factory):
    return tiny_sd_pipeline(tmp_path_factory.mktemp("lora") / "sd", "epsilon")


def _unfused(student_path):
    """The student as trained: base weights + adapters side by side (not merged)."""
    tensors, spec = load_tensors(student_path)
    lora = spec["lora"]
    base, _ = load_model(lora["base"])
    model = build_model(spec)
    model.load_state_dict(base.state_dict(), strict=False)
    add_lora(model, spec, lora["rank"], lora["alpha"], lora["extra"])
    model.load_state_dict(tensors, strict=False)
    return model.eval()


def test_lora_guidance_student_holds_adapters_only_and_fuses_exactly(sd_pipe, tmp_path):
    """The LCM-LoRA pattern on an SD pipeline: the checkpoint holds the adapters (+ the new w projection), and
    the fused network computes what base + adapters computed."""
    path = distill_tiny(sd_pipe, tmp_path / "g", "guidance", student_steps=2, lr=1e-2, **LORA)
    tensors, spec = load_tensors(path)
    lora = spec["lora"]
    assert lora["rank"] == 4 and lora["alpha"] == 8.0 and lora["base"] == str(sd_pipe.resolve())
    assert any("cond_proj" in k for k in lora["extra"])  # the guidance input is new: trained in full
    assert set(tensors) and all("lora_" in k or k in lora["extra"] for k in tensors)
    assert lora["adapter_params"] == sum(v.numel() for v in tensors.values()) < spec["params"] / 4
    assert any(v.abs().max() > 0 for k, v in tensors.items() if "lora_B" in k)  # B starts at 0: it trained
    # the training state checkpoints only what trains (no copy of the frozen base)
    state, _ = load_tensors(tmp_path / "g" / "state.safetensors")
    assert all("lora_" in k or k.split(".", 1)[1] in lora["extra"] for k in state if k.startswith("model."))

    fused, fused_spec = load_model(path)
    assert not any("lora_" in k for k in fused.state_dict())
    assert fused_spec["sampler"]["guidance"]["mode"] == "embedded"
    unfused = _unfused(path)
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([0.3, 0.8])
    from fewstep.models.text_encoders import load_text_encoder

    cond = (
        load_text_encoder(spec["text_encoder"])
        .encode(["a red circle", "a blue square"])
        .with_guidance(torch.tensor([2.0, 5.0]))
    )
    with torch.no_grad():
        np.testing.assert_allclose(fused(x, t, cond).numpy(), unfused(x, t, cond).numpy(), atol=1e-5)


@pytest.mark.slow
def test_lora_student_resumes_like_an_uninterrupted_run(sd_pipe, tmp_path):
    whole = distill_tiny(sd_pipe, tmp_path / "whole", "progressive", start_steps=4, student_steps=2, steps=4, **LORA)
    distill_tiny(sd_pipe, tmp_path / "cut", "progressive", start_steps=4, student_steps=2, steps=2, **LORA)
    cut = distill_tiny(sd_pipe, tmp_path / "cut", "progressive", start_steps=4, student_steps=2, steps=4,
                       resume=True, **LORA)  # fmt: skip
    a, b = load_tensors(whole)[0], load_tensors(cut)[0]
    assert set(a) == set(b)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)


def test_lora_consistency_target_shares_the_frozen_base_and_resumes_exactly(tmp_path, tiny_teacher):
    """The consistency target of a LoRA student keeps its own copy of the adapters only: the resume state holds
    no base weights (3.4 GB at SD1.5 size otherwise), and a resumed run matches an uninterrupted one."""
    teacher, _, _ = tiny_teacher
    run = {"student_steps": 2, "grid": 8, "skip": 2, **LORA}
    whole = distill_tiny(teacher, tmp_path / "whole", "consistency", steps=4, **run)
    state = load_tensors(tmp_path / "whole" / "state.safetensors")[0]
    target = [k for k in state if k.startswith("loss.target.")]
    assert target and all("lora_" in k for k in target), target[:3]
    distill_tiny(teacher, tmp_path / "cut", "consistency", steps=2, **run)
    cut = distill_tiny(teacher, tmp_path / "cut", "consistency", steps=4, resume=True, **run)
    a, b = load_tensors(whole)[0], load_tensors(cut)[0]
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)


def test_lora_progressive_rounds_chain_their_bases(tmp_path, tiny_teacher):
    teacher, _, _ = tiny_teacher
    path = distill_tiny(teacher, tmp_path / "p", "progressive", start_steps=4, student_steps=1, **LORA)
    spec = load_tensors(path)[1]
    assert spec["lora"]["base"].endswith("round1_4to2/model.safetensors")  # round 2 adapts round 1's student
    model, _ = load_model(path)  # base of the base is the teacher: both adapters fused in turn
    assert not any("lora_" in k for k in model.state_dict())


def test_lora_base_missing_or_changed_is_named(tmp_path, tiny_teacher):
    teacher, _, _ = tiny_teacher
    path = distill_tiny(teacher, tmp_path / "r", "guidance", student_steps=2, **LORA)
    moved = teacher.with_name("moved.safetensors")
    teacher.rename(moved)
    with pytest.raises(CheckpointError, match=r"needs its base model.*missing"):
        load_model(path)
    data = bytearray(moved.read_bytes())
    data[-1] ^= 1  # one flipped bit in a weight
    teacher.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="has changed since training"):
        load_model(path)


def test_lora_needs_the_teachers_network(tmp_path):
    from fewstep.compress.distill import make_config

    with pytest.raises(ValueError, match="--student same"):
        make_config("reflow", student="student-s", lora_rank=4)
    with pytest.raises(ValueError, match="--student same"):
        make_config("reflow", student="same", init="sliced", lora_rank=4)
    with pytest.raises(ValueError, match=r"'lora_rank' \(--lora-rank\) must be >= 0"):
        make_config("reflow", student="same", lora_rank=-1)


def test_gradient_checkpointing_gives_the_same_gradients(tmp_path, tiny_teacher):
    teacher, _, _ = tiny_teacher
    grads = []
    for checkpointing in (False, True):
        model, spec = load_model(teacher)
        model.requires_grad_(True).train()
        if checkpointing:
            model.unet.enable_gradient_checkpointing()
        from fewstep.models.text_encoders import load_text_encoder

        cond = load_text_encoder(spec["text_encoder"]).encode(["a red circle", "a blue square"])
        x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
        model(x, torch.tensor([0.2, 0.7]), cond).square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-7)
    path = distill_tiny(teacher, tmp_path / "gc", "guidance", student_steps=2, gradient_checkpointing=True)
    assert load_model(path)[1]["training"]["config"]["gradient_checkpointing"] is True


def test_8bit_optimizer_is_refused_off_gpu():
    with pytest.raises(ValueError, match="CUDA GPUs only"):
        LoopConfig(optimizer="adamw8bit")
    with pytest.raises(ValueError, match="'sgd' is not one of adamw, adamw8bit"):
        LoopConfig(optimizer="sgd")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="bitsandbytes' 8-bit AdamW needs a CUDA GPU (none here)")
def test_8bit_optimizer_trains_on_gpu(tmp_path, tiny_teacher):
    pytest.importorskip("bitsandbytes")
    teacher, _, _ = tiny_teacher
    path = distill_tiny(teacher, tmp_path / "b", "guidance", student_steps=2, device="cuda", optimizer="adamw8bit")
    assert load_model(path)[1]["training"]["config"]["optimizer"] == "adamw8bit"


@pytest.mark.slow
def test_lora_transformer_student_exports_fused(tmp_path):
    """SD3-style transformer: adapters on the joint-attention projections; the bundle holds the fused network."""
    import onnx

    from fewstep.export.bundle import BundleExport
    from fewstep.export.config import ExportConfig
    from fewstep.testing.tiny_pipelines import tiny_sd3_pipeline

    pipe = tiny_sd3_pipeline(tmp_path / "sd3")
    student = distill_tiny(pipe, tmp_path / "run", "progressive", start_steps=4, student_steps=2, dataset_size=16,
                           steps=2, batch_size=2, sample_every=100, lr=1e-2, **LORA)  # fmt: skip
    tensors, spec = load_tensors(student)
    assert any("add_q_proj.lora_A" in k for k in tensors) and any("ff_context" in k for k in tensors)
    cfg = ExportConfig(to=("onnx",), precision=("fp32",), parity_prompts=4, calibration_prompts=4)
    manifest = BundleExport(str(student), tmp_path / "bundle", cfg, log=lambda m: None).run().to_json()
    assert manifest["model"]["lora"] == {"rank": 4, "alpha": 8.0, "base_sha256": spec["lora"]["base_sha256"],
                                         "fused": True}  # fmt: skip
    assert manifest["engines"][0]["gates"]["parity"]["passed"] is True
    graph = onnx.load(str(tmp_path / "bundle" / next(iter(manifest["engines"][0]["files"]))), load_external_data=False)
    assert not [i.name for i in graph.graph.initializer if "lora" in i.name.lower()]
    assert manifest["model"]["params"] == spec["params"]
