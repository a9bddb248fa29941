"""Every method end to end on a tiny teacher: checkpoint round-trip, exact resume, own schedule, bad input."""

from __future__ import annotations

import pytest
import torch

from fewstep.compress.distill import DistillConfig, distill, get_method, make_config, method_names
from fewstep.compress.pairs import PairCache, PairsConfig, build_pairs
from fewstep.compress.students import init_student, slice_state
from fewstep.core.config import ConfigError, field_names, from_dict
from fewstep.core.verdict_record import read_verdict
from fewstep.models.checkpoint import CheckpointError
from fewstep.models.loading import load_model, model_sha256, model_spec, resolve_checkpoint
from fewstep.models.pipeline import TorchPipeline
from fewstep.models.unet_flow import build_unet_flow
from tests.distill_fixtures import TINY_STUDENT, TINY_TEACHER

EXTRA = {
    "progressive": {"start_steps": 4, "student_steps": 1},
    "dmd": {"fake_updates": 2, "adv_weight": 0.1},
    "consistency": {"student_steps": 2, "grid": 10, "skip": 2},
    "instaflow": {"student_steps": 2},
    "meanflow": {"student_steps": 2},
    "shortcut": {"student_steps": 2, "max_steps": 8},
}


@pytest.fixture(scope="module")
def tiny(tiny_teacher_files):
    return tiny_teacher_files


def _cfg(tiny, method: str, steps: int = 4, **kw) -> DistillConfig:
    teacher, student, pairs = tiny
    base = dict(teacher=str(teacher), student=str(student), pairs=str(pairs), dataset_size=24, steps=steps,
                stage2_steps=steps, anneal_steps=2, batch_size=4, checkpoint_every=2, sample_every=0, warmup_steps=1,
                ema_decay=0.5, verdict_prompts=3)  # fmt: skip
    cls = get_method(method).config
    known = field_names(cls)  # the shared tiny settings this method has; `kw` must all be its own
    return from_dict(cls, {**{k: v for k, v in base.items() if k in known}, **EXTRA.get(method, {}), **kw})


def _weights(path) -> dict[str, torch.Tensor]:
    return load_model(path)[0].state_dict()


@pytest.mark.slow
@pytest.mark.parametrize("method", method_names())
def test_method_round_trips_resumes_exactly_and_generates(tiny, tmp_path, method):
    full = distill(_cfg(tiny, method), tmp_path / "full", progress=False)
    model, spec = load_model(full)
    assert spec["training"]["method"] == method and spec["role"] == "student"
    assert spec["params"] == sum(p.numel() for p in model.parameters()) < 0.5 * spec["training"]["teacher_params"]
    for key in ("rule", "timesteps", "guidance"):
        assert key in spec["sampler"]
    images = TorchPipeline.from_checkpoint(full).generate(["a red circle"], [0])
    assert images.shape == (1, 16, 16, 3)
    # every run ends with the equal-steps verdict of this very checkpoint (16x16: no judge, the teacher gap only)
    verdict = read_verdict(full, model_sha256(full))
    assert verdict is not None and verdict["outcome"] in ("better", "worse", "mixed") and verdict["prompts"] == 3
    assert set(verdict["systems"]) == {"student", "teacher_same_steps", "teacher_full_steps"}
    assert verdict["systems"]["teacher_full_steps"]["teacher_gap"] == 0 and verdict["basis"] == "teacher gap"
    assert verdict["line"].startswith("verdict: the student at")
    # the same run, killed half-way and resumed, ends with the same weights
    distill(
        _cfg(tiny, method, steps=2, **({"stage2_steps": 2} if method == "slimflow" else {})),
        tmp_path / "half",
        progress=False,
    )
    with pytest.raises(FileExistsError):
        distill(_cfg(tiny, method), tmp_path / "half", progress=False)
    if method in ("slimflow", "progressive"):
        return  # a shorter stage is another run for them: killed-and-resumed is tested below
    resumed = distill(_cfg(tiny, method), tmp_path / "half", resume=True, progress=False)
    a, b = _weights(full), _weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a), method


@pytest.mark.parametrize("method", ["slimflow", "progressive"])
def test_multi_stage_methods_resume_a_killed_stage(tiny, tmp_path, method, monkeypatch):
    full = distill(_cfg(tiny, method), tmp_path / "full", progress=False)
    from fewstep.compress import trainer

    real_run = trainer.TrainingLoop.run
    calls = {"n": 0}

    def dies_in_second_stage(self, resume=False, progress=True):
        calls["n"] += 1
        if calls["n"] == 2:
            self.on_step = lambda step: (_ for _ in ()).throw(KeyboardInterrupt) if step == 2 else None
        return real_run(self, resume, progress)

    monkeypatch.setattr(trainer.TrainingLoop, "run", dies_in_second_stage)
    with pytest.raises(KeyboardInterrupt):
        distill(_cfg(tiny, method), tmp_path / "killed", progress=False)
    monkeypatch.setattr(trainer.TrainingLoop, "run", real_run)
    resumed = distill(_cfg(tiny, method), tmp_path / "killed", resume=True, progress=False)
    a, b = _weights(full), _weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_student_schedules_and_guidance_modes(tiny, tmp_path):
    cons = load_model(distill(_cfg(tiny, "consistency"), tmp_path / "c", progress=False))[1]
    assert cons["sampler"]["rule"] == "consistency" and cons["sampler"]["timesteps"] == [1.0, 0.5]
    guid = distill(_cfg(tiny, "guidance", student_steps=3), tmp_path / "g", progress=False)
    pipe = TorchPipeline.from_checkpoint(guid)
    assert pipe.guidance_mode == "embedded" and pipe.spec["sampler"]["timesteps"] == pytest.approx([1, 2 / 3, 1 / 3, 0])
    cond, x, t = pipe.encoder.encode(["a red circle"]), torch.randn(1, 3, 16, 16), torch.full((1,), 0.5)
    assert not torch.equal(pipe.model(x, t, cond.with_guidance(2.0)), pipe.model(x, t, cond.with_guidance(5.0)))
    assert pipe.generate(["a red circle"], [0], guidance=5.0).shape == (1, 16, 16, 3)
    with pytest.raises(ValueError, match="learned guidance scales"):
        pipe.generate(["a red circle"], [0], guidance=9.0)
    insta = TorchPipeline.from_checkpoint(distill(_cfg(tiny, "instaflow"), tmp_path / "i", progress=False))
    assert insta.spec["sampler"]["timesteps"] == [1.0, 0.5, 0.0]
    with pytest.raises(ValueError, match="baked in"):
        insta.generate(["a red circle"], [0], guidance=3.0)
    slim = load_model(distill(_cfg(tiny, "slimflow", student_steps=2), tmp_path / "s", progress=False))[1]
    assert slim["sampler"]["timesteps"] == [1.0, 0.5, 0.0] and slim["training"]["train_times"] == [1.0, 0.5]


def test_dmd_multistep_declares_its_consistency_schedule_and_resumes_exactly(tiny, tmp_path):
    """DMD2 multi-step (--student-steps 2): consistency rule on the grid, exact resume through backward simulation."""
    cfg = _cfg(tiny, "dmd", student_steps=2, grid=10, adv_weight=0.0)
    full = distill(cfg, tmp_path / "full", progress=False)
    spec = load_model(full)[1]
    assert spec["sampler"]["rule"] == "consistency" and spec["sampler"]["timesteps"] == [1.0, 0.5]
    assert spec["sampler"]["grid"] == 10 and spec["training"]["train_times"] == [1.0, 0.5]
    pipe = TorchPipeline.from_checkpoint(full)
    one, two = pipe.generate(["a red circle"], [0], steps=1), pipe.generate(["a red circle"], [0])
    assert one.shape == two.shape == (1, 16, 16, 3) and not torch.equal(torch.as_tensor(one), torch.as_tensor(two))
    distill(_cfg(tiny, "dmd", steps=2, student_steps=2, grid=10, adv_weight=0.0), tmp_path / "half", progress=False)
    resumed = distill(cfg, tmp_path / "half", resume=True, progress=False)
    a, b = _weights(full), _weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_guidance_then_progressive_keeps_the_w_input_at_few_steps(tiny, tmp_path):
    """Meng et al. stages 1 + 2: guidance distillation, then w-conditioned rounds 4 -> 2 -> 1; resumable."""
    cfg = _cfg(tiny, "guidance", then_progressive=True, start_steps=4, student_steps=1, w_min=1.0, w_max=5.0)
    path = distill(cfg, tmp_path / "gp", progress=False)
    assert {p.parent.name for p in (tmp_path / "gp").glob("*/model.safetensors")} == {"stage1", "round1_4to2",
                                                                                      "round2_2to1"}  # fmt: skip
    pipe = TorchPipeline.from_checkpoint(path)
    guidance = pipe.spec["sampler"]["guidance"]
    assert guidance["mode"] == "embedded" and guidance["range"] == [1.0, 5.0]
    assert pipe.spec["sampler"]["timesteps"] == [1.0, 0.0] and pipe.spec["training"]["stage"] == 2
    cond, x, t = pipe.encoder.encode(["a red circle"]), torch.randn(1, 3, 16, 16), torch.full((1,), 1.0)
    assert not torch.equal(pipe.model(x, t, cond.with_guidance(2.0)), pipe.model(x, t, cond.with_guidance(5.0)))
    assert pipe.generate(["a red circle"], [0], guidance=4.0).shape == (1, 16, 16, 3)
    again = distill(cfg, tmp_path / "gp", resume=True, progress=False)  # finished stages load, not retrain
    a, b = _weights(path), _weights(again)
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ConfigError, match=r"unknown field.*then_progressive"):  # a flag the method does not read
        _cfg(tiny, "consistency", then_progressive=True)


def test_bad_distill_configs_are_refused(tiny, tmp_path):
    with pytest.raises(ValueError, match="--pairs"):
        distill(_cfg(tiny, "reflow", pairs=None), tmp_path / "x", progress=False)
    with pytest.raises(ValueError, match="powers of two"):
        _cfg(tiny, "progressive", start_steps=12, student_steps=2)
    with pytest.raises(ValueError, match="unknown method 'magic'; choose one of reflow"):
        make_config("magic")
    with pytest.raises(ConfigError, match=r"'distance' \(--distance\): 'foo' is not one of pseudo_huber, l2"):
        _cfg(tiny, "slimflow", distance="foo")  # refused when the config is made, before stage 1
    with pytest.raises(ValueError, match="tau_max"):
        _cfg(tiny, "slimflow", tau_min=0.5, tau_max=1.0)
    with pytest.raises(ValueError, match="need 0 < tau_min <= tau_max < 1"):
        _cfg(tiny, "slimflow", tau_min=0.6, tau_max=0.5)
    with pytest.raises(ValueError, match="sliced"):
        distill(_cfg(tiny, "reflow", init="teacher"), tmp_path / "y", progress=False)


def test_pair_cache_resumes_splits_by_rank_and_refuses_other_keys(tiny, tmp_path):
    teacher, _, pairs = tiny
    cfg = PairsConfig(teacher=str(teacher), n=24, steps=2, shard_size=8, batch_size=8)
    ref = PairCache.open(pairs)
    # two ranks write disjoint shards; together they equal the single-process cache
    build_pairs(cfg, tmp_path / "p", rank=0, world=2, progress=False)
    with pytest.raises(CheckpointError, match="incomplete"):
        PairCache.open(tmp_path / "p")
    build_pairs(cfg, tmp_path / "p", rank=1, world=2, progress=False)
    split = PairCache.open(tmp_path / "p")
    assert torch.equal(split.x0, ref.x0) and torch.equal(split.noise, ref.noise)
    # a lost shard is rebuilt, the others are kept
    (tmp_path / "p" / "shard_00001.safetensors").unlink()
    build_pairs(cfg, tmp_path / "p", progress=False)
    assert torch.equal(PairCache.open(tmp_path / "p").x0, ref.x0)
    with pytest.raises(CheckpointError, match="other settings"):
        build_pairs(PairsConfig(teacher=str(teacher), n=24, steps=3, shard_size=8), tmp_path / "p", progress=False)
    with pytest.raises(CheckpointError, match="not a pair cache"):
        PairCache.open(tmp_path)


def test_sliced_init_keeps_the_most_important_channels_aligned():
    torch.manual_seed(0)
    teacher = build_unet_flow(TINY_TEACHER)
    same = build_unet_flow(TINY_TEACHER)
    assert init_student(same, teacher, "sliced")["sliced"] == 0  # same widths: an exact copy
    x, t = torch.randn(2, 3, 16, 16), torch.rand(2)
    from fewstep.models.contract import Cond

    cond = Cond(torch.randn(2, 4, 384), torch.ones(2, 4))
    assert torch.equal(same(x, t, cond), teacher(x, t, cond))
    small = build_unet_flow(TINY_STUDENT)
    state, report = slice_state(teacher.state_dict(), small.state_dict())
    assert report["fresh"] == 0 and report["sliced"] > 0
    w_in = teacher.state_dict()["unet.conv_in.weight"]  # (8, 3, 3, 3) -> (4, 3, 3, 3): the 4 largest filters
    kept = w_in.flatten(1).norm(dim=1)
    assert set(state["unet.conv_in.weight"].flatten(1).norm(dim=1).tolist()) <= set(kept.tolist())


@pytest.mark.parametrize(
    ("name", "rule", "steps", "params_max"),
    [
        ("shapes32-slimflow", "euler", 1, 0.25),
        ("shapes32-slimflow-v2", "euler", 1, 0.25),
        ("shapes32-slimflow-4step", "euler", 4, 0.25),
        ("shapes32-progressive-4step", "euler", 4, 1.0),
        ("shapes32-consistency-4step", "consistency", 4, 1.0),
        ("shapes32-consistency-s-4step", "consistency", 4, 0.25),
    ],
)
def test_shipped_students_generate_with_their_own_schedule(name, rule, steps, params_max):
    pipe = TorchPipeline.from_checkpoint(name)
    spec = pipe.spec
    assert spec["role"] == "student" and spec["sampler"]["default_steps"] == steps
    assert spec["sampler"].get("rule", "euler") == rule
    assert spec["params"] <= params_max * spec["training"]["teacher_params"]
    assert spec["sampler"]["guidance"]["mode"] == "none"
    a = pipe.generate(["a red circle", "a blue square"], [0, 1])
    assert a.shape == (2, 32, 32, 3) and (a == pipe.generate(["a red circle", "a blue square"], [0, 1])).all()


def test_init_from_a_student_checkpoint_copies_it_and_refuses_another_architecture(tiny, tmp_path):
    """--init CHECKPOINT starts e.g. DMD from a reflowed student: its weights exactly, recorded in the spec."""
    reflowed = distill(_cfg(tiny, "reflow", lr=0.05), tmp_path / "reflow", progress=False)  # far from any init
    dmd = distill(_cfg(tiny, "dmd", steps=1, lr=1e-9, init=str(reflowed)), tmp_path / "dmd", progress=False)
    init = load_model(dmd)[1]["training"]["init"]
    assert init["init"] == "checkpoint" and init["checkpoint"] == str(reflowed) and len(init["checkpoint_sha256"]) == 64
    a, b = _weights(reflowed), _weights(dmd)  # one step at lr 1e-9: still the checkpoint it started from
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    fresh = _weights(distill(_cfg(tiny, "dmd", steps=1, lr=1e-9), tmp_path / "sliced", progress=False))
    assert not all(torch.allclose(a[k], fresh[k], atol=1e-3) for k in a)  # the default init would differ
    with pytest.raises(CheckpointError, match="not the student"):  # the teacher is not a student-sized network
        distill(_cfg(tiny, "dmd", init=str(tiny[0])), tmp_path / "bad", progress=False)
    with pytest.raises(ValueError, match="init must be one of"):
        _cfg(tiny, "dmd", init="slice")


def test_shipped_students_record_the_teacher_they_were_distilled_from():
    """Provenance survives the rename: the first students' teacher_sha256 is shapes32-teacher-v1 (where the
    fine-tuned teacher started); the re-shipped consistency student and the v2 SlimFlow student are the
    fine-tuned teacher's, and so is the quarter-size consistency student distilled on top of the v2 SlimFlow one."""
    v1 = model_sha256(resolve_checkpoint("shapes32-teacher-v1"))
    v2 = model_sha256(resolve_checkpoint("shapes32-teacher"))
    for name in ("shapes32-slimflow", "shapes32-progressive-4step"):
        assert model_spec(name)["training"]["teacher_sha256"] == v1, name
    for name in (
        "shapes32-consistency-4step",
        "shapes32-slimflow-v2",
        "shapes32-consistency-s-4step",
        "shapes32-slimflow-4step",
    ):
        assert model_spec(name)["training"]["teacher_sha256"] == v2, name
    teacher = model_spec("shapes32-teacher")
    assert teacher["role"] == "teacher" and teacher["training"]["init"]["sha256"] == v1
    assert v2 != v1
