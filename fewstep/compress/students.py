"""Students: build a (smaller) network from a preset and initialise it from scratch, the teacher, or a slice.

`sliced` keeps, for every channel width of the teacher, the most important channels by weight norm
(summed per output channel over every tensor of that width, each tensor normalised), ONE index set per
width so that residual additions stay aligned. Inputs that concatenate two widths (UNet skip connections,
`cat([up, skip])` in diffusers' order) are sliced part by part. Any tensor that cannot be matched this way
keeps its fresh initialisation, and the report says how many did.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import torch

from fewstep.models.model_kinds import build_model, network_key, network_of
from fewstep.models.presets import get_preset

INITS = ("scratch", "teacher", "sliced")


def student_unet_config(preset: str | None, teacher_unet: dict, guidance_dim: int | None = None) -> dict:
    """The student's UNet config: a preset's, the teacher's own ('same') or a JSON file's (path ending .json)."""
    if preset in (None, "", "same"):
        unet = dict(teacher_unet)
    elif preset.endswith(".json"):  # a UNet2DConditionModel config of your own
        path = Path(preset)
        if not path.is_file():
            raise ValueError(f"student config {preset} does not exist")
        unet = json.loads(path.read_text())
    else:
        unet = dict(get_preset(preset).unet)
    # a student must read the teacher's text states: same encoder width and image channels
    for key in ("encoder_hid_dim", "in_channels", "out_channels", "sample_size"):
        if key in teacher_unet:
            unet[key] = teacher_unet[key]
    if guidance_dim:
        unet["time_cond_proj_dim"] = guidance_dim
    return unet


def _width_importance(state: dict[str, torch.Tensor]) -> dict[int, torch.Tensor]:
    scores: dict[int, torch.Tensor] = defaultdict(lambda: torch.zeros(0))
    for v in state.values():
        if not v.is_floating_point() or v.ndim == 0:
            continue
        rows = v.reshape(v.shape[0], -1).norm(dim=1)
        rows = rows / rows.mean().clamp_min(1e-12)
        n = v.shape[0]
        scores[n] = rows if scores[n].numel() == 0 else scores[n] + rows
    return dict(scores)


def _index_sets(teacher: dict, student: dict) -> dict[tuple[int, int], torch.Tensor]:
    """(teacher width, student width) -> kept channel indices, from output dims that shrink consistently."""
    importance = _width_importance(teacher)
    pairs: dict[int, set[int]] = defaultdict(set)
    for k, s in student.items():
        t = teacher.get(k)
        if t is not None and t.ndim >= 1 and s.ndim == t.ndim and s.shape[0] < t.shape[0]:
            pairs[t.shape[0]].add(s.shape[0])
    sets = {}
    for tw, sws in pairs.items():
        for sw in sws:
            sets[(tw, sw)] = importance[tw].topk(sw).indices.sort().values
    return sets


def _dim_index(tw: int, sw: int, sets: dict, widths: list[int]) -> torch.Tensor | None:
    if tw == sw:
        return torch.arange(tw)
    if (tw, sw) in sets:
        return sets[(tw, sw)]
    for a in widths:  # concatenated input [a | tw - a] -> [a' | sw - a']
        for ta, sa in [k for k in sets if k[0] == a]:
            rest = (tw - a, sw - sa)
            if rest in sets or rest[0] == rest[1]:
                tail = sets[rest] if rest in sets else torch.arange(rest[0])
                return torch.cat([sets[(ta, sa)], tail + a])
    return None


def slice_state(teacher: dict[str, torch.Tensor], student: dict[str, torch.Tensor]) -> tuple[dict, dict]:
    """Teacher tensors sliced to the student's shapes -> (state for load_state_dict(strict=False), report)."""
    sets = _index_sets(teacher, student)
    widths = sorted({k[0] for k in sets})
    out, report = {}, {"copied": 0, "sliced": 0, "fresh": 0}
    for k, s in student.items():
        t = teacher.get(k)
        if t is None or t.ndim != s.ndim:
            report["fresh"] += 1
            continue
        if t.shape == s.shape:
            out[k] = t.clone()
            report["copied"] += 1
            continue
        idx = [_dim_index(tw, sw, sets, widths) for tw, sw in zip(t.shape, s.shape, strict=True)]
        if any(i is None or len(i) != sw for i, sw in zip(idx, s.shape, strict=True)):
            report["fresh"] += 1
            continue
        v = t
        for d, i in enumerate(idx):
            v = v.index_select(d, i)
        out[k] = v.clone()
        report["sliced"] += 1
    return out, report


def student_architecture(preset: str | None, teacher_spec: dict, guidance_dim: int | None = None) -> dict:
    """The student's `kind` + network config (+ the teacher's parametrization: VP alphas, flow time scale).

    Built-in (pixel, `unet-flow`) teachers take any preset; latent pipeline teachers (`unet-vp`,
    `transformer-flow`) take 'same' or a JSON config of your own (the presets are 32x32 pixel designs)."""
    kind = teacher_spec["kind"]
    arch = {k: teacher_spec[k] for k in ("kind", "vp", "flow") if k in teacher_spec}
    if kind != "unet-flow" and preset not in (None, "", "same") and not str(preset).endswith(".json"):
        raise ValueError(f"student preset {preset!r} is a 32x32 pixel design; a {kind} pipeline teacher takes "
                         "--student same (LoRA or full) or a JSON network config of your own")  # fmt: skip
    if kind == "transformer-flow":
        if guidance_dim:
            raise ValueError("this method adds a scalar input (guidance w or the step size) to a UNet's time "
                             "embedding; SD3-style transformers have none: distil with another method")  # fmt: skip
        if preset not in (None, "", "same"):
            raise ValueError("transformer students are the teacher's own architecture: use --student same")
        return {**arch, "transformer": dict(teacher_spec["transformer"])}
    return {**arch, "unet": student_unet_config(preset, teacher_spec["unet"], guidance_dim)}


def same_architecture(student_arch: dict, teacher_spec: dict) -> bool:
    """Equal networks, ignoring an added guidance input."""
    key = network_key(teacher_spec)
    strip = {k: v for k, v in student_arch[key].items() if k != "time_cond_proj_dim"}
    return strip == {k: v for k, v in teacher_spec[key].items() if k != "time_cond_proj_dim"}


def init_student(student: torch.nn.Module, teacher: torch.nn.Module | None, how: str) -> dict:
    """Initialise `student` in place: scratch | teacher (same architecture) | sliced; returns a report."""
    if how not in INITS:
        raise ValueError(f"unknown init {how!r}; choose one of {', '.join(INITS)}")
    if how == "scratch":
        return {"init": "scratch"}
    if teacher is None:
        raise ValueError(f"init {how!r} needs the teacher")
    s_state, t_state = student.state_dict(), teacher.state_dict()
    if how == "teacher":
        extra = [k for k in s_state if k not in t_state]  # e.g. the guidance projection of a guidance student
        mismatch = [k for k in s_state if k in t_state and s_state[k].shape != t_state[k].shape]
        if mismatch:
            raise ValueError(
                f"init 'teacher' needs the teacher's architecture, but {len(mismatch)} tensors differ in shape "
                f"(e.g. {mismatch[0]}); use --init sliced for a smaller student"
            )
        student.load_state_dict({k: v for k, v in t_state.items() if k in s_state}, strict=False)
        report = {"init": "teacher", "copied": len(s_state) - len(extra), "fresh": len(extra)}
    else:
        state, report = slice_state(t_state, s_state)
        student.load_state_dict(state, strict=False)
        report = {"init": "sliced", **report}
    # an added guidance input starts at zero: the student begins as the teacher's conditional branch
    proj = getattr(getattr(network_of(student), "time_embedding", None), "cond_proj", None)
    if proj is not None and not any(k.endswith("time_embedding.cond_proj.weight") for k in t_state):
        torch.nn.init.zeros_(proj.weight)
    return report


def build_student(architecture: dict) -> torch.nn.Module:
    """A fresh student of `student_architecture(...)`'s result."""
    return build_model(architecture)
