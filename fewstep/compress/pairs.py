"""Trajectory-pair cache (docs/concepts/methods/index.md): teacher ODE solutions `(noise, cond) -> x0_hat`.

A cache is a directory: `manifest.json` (the key: teacher checkpoint sha256, dataset, CFG scale, solver, steps,
seed, shard size), `captions.safetensors` (the text embeddings of every distinct caption) and
`shard_NNNNN.safetensors` files of `shard_size` pairs (noise, x0, caption index). Shards are written atomically
and skipped when present, so a killed run resumes; under `torchrun` rank r writes the shards s with
s % world_size == r. Every method that needs pairs (reflow, SlimFlow, InstaFlow, DMD's regression) reads it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from fewstep.core.config import Config, param, to_dict
from fewstep.core.fsio import atomic_write_text, remove_stale_temps
from fewstep.models.checkpoint import CheckpointError, load_tensors, save_tensors
from fewstep.models.contract import Cond
from fewstep.models.datasets import make_dataset
from fewstep.models.diffusers_dir import decoded_size
from fewstep.models.loading import load_model, model_sha256, resolve_checkpoint
from fewstep.models.samplers import get_sampler, seeded_noise, uniform_timesteps
from fewstep.models.text_encoders import load_text_encoder

PAIRS_FORMAT = "fewstep-pairs/1"
MANIFEST = "manifest.json"
CAPTIONS = "captions.safetensors"
NOISE_SEED_BASE = 10**12  # pair noise seeds never meet evaluation or sample-grid seeds


@dataclass(frozen=True)
class PairsConfig(Config):
    """Which teacher ODE solutions to cache. Every field but `teacher` (its sha256 stands in) and `batch_size`
    is part of the cache key: a directory holding pairs of another key is refused."""

    teacher: str = param("shapes32-teacher", "the teacher: a checkpoint, run directory, shipped name or local "
                         "diffusers pipeline directory", path="checkpoint")  # fmt: skip
    dataset: Literal["shapes", "digits", "imagefolder"] = param("shapes", "where the captions come from")
    data_path: str | None = param(None, "imagefolder only: a folder with metadata.jsonl", path="dir")
    data_seed: int = param(0, "shapes: which captions (the teacher's training captions by default)", min=0)
    n: int = param(8192, "number of pairs", min=1)
    guidance: float = param(3.0, "CFG scale of the teacher's ODE", min=0, max=30)
    solver: Literal["heun", "euler"] = param("heun", "the ODE solver")
    steps: int = param(16, "solver steps (Heun: 2 evaluations per step but the last)", min=1)
    shard_size: int = param(256, "pairs per shard file (a killed run redoes at most one shard)", min=1)
    seed: int = param(0, "noise seeds are NOISE_SEED_BASE * (seed + 1) + pair index", min=0)
    batch_size: int = param(64, "pairs solved per teacher call", min=1)


def dist_rank_world() -> tuple[int, int]:
    """(rank, world size) from torchrun's environment; (0, 1) in a plain process."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def cache_key(cfg: PairsConfig, teacher_sha: str, dataset_fingerprint: str) -> dict:
    key = {k: v for k, v in to_dict(cfg).items() if k not in ("batch_size", "teacher")}
    return {"format": PAIRS_FORMAT, "teacher_sha256": teacher_sha, "dataset_fingerprint": dataset_fingerprint, **key}


def _shard_path(root: Path, s: int) -> Path:
    return root / f"shard_{s:05d}.safetensors"


def build_pairs(
    cfg: PairsConfig, out: str | Path, rank: int | None = None, world: int | None = None, progress: bool = True
) -> Path:
    """Generate (or finish) the pair cache in `out`; returns `out`. Refuses a directory holding another key."""
    out = Path(out)
    env_rank, env_world = dist_rank_world()
    rank, world = env_rank if rank is None else rank, env_world if world is None else world
    teacher_path = resolve_checkpoint(cfg.teacher)
    model, spec = load_model(teacher_path)
    encoder = load_text_encoder(spec["text_encoder"])
    img = spec["image"]
    shape = (img["channels"], img["height"], img["width"])
    dataset = make_dataset(cfg.dataset, decoded_size(spec), cfg.data_seed, cfg.n, cfg.data_path)
    key = cache_key(cfg, model_sha256(teacher_path), dataset.fingerprint())
    out.mkdir(parents=True, exist_ok=True)
    if world == 1:  # ranks write shards side by side: only a lone writer may clear temp files
        remove_stale_temps(out)
    manifest_path = out / MANIFEST
    if manifest_path.is_file():
        saved = json.loads(manifest_path.read_text())["key"]
        if saved != key:
            diff = {k: (saved.get(k), v) for k, v in key.items() if saved.get(k) != v}
            raise CheckpointError(
                f"{out} holds pairs made with other settings {diff} (saved, now); use another --out or delete it"
            )
    captions = [dataset.caption(i % len(dataset)) for i in range(cfg.n)]
    distinct = list(dict.fromkeys(captions))
    where = {c: j for j, c in enumerate(distinct)}
    caption_index = torch.tensor([where[c] for c in captions], dtype=torch.int64)
    n_shards = -(-cfg.n // cfg.shard_size)
    if rank == 0:
        if not (out / CAPTIONS).is_file():
            c = Cond.cat([encoder.encode(distinct[i : i + 256]) for i in range(0, len(distinct), 256)])
            tensors = {"text": c.text.half(), "mask": c.text_mask.to(torch.uint8)}
            if c.pooled is not None:  # pooled text (SDXL / SD3) and SDXL size/crop ids go with each caption
                tensors["pooled"] = c.pooled.half()
            if c.extra_ids is not None:
                tensors["extra_ids"] = c.extra_ids
            save_tensors(out / CAPTIONS, tensors, {"captions": distinct})
        manifest = {"key": key, "n_shards": n_shards, "teacher_spec": {k: spec[k] for k in ("name", "image")},
                    "text_encoder": spec["text_encoder"]}  # fmt: skip
        atomic_write_text(manifest_path, json.dumps(manifest, indent=1))
    mine = [s for s in range(n_shards) if s % world == rank and not _shard_path(out, s).is_file()]
    null = encoder.null(1)
    solve = get_sampler(cfg.solver)
    timesteps = uniform_timesteps(cfg.steps)
    bar = tqdm(total=sum(min(cfg.shard_size, cfg.n - s * cfg.shard_size) for s in mine), desc=f"pairs[rank {rank}]",
               disable=not progress, mininterval=2, smoothing=0.05)  # fmt: skip
    for s in mine:
        lo, hi = s * cfg.shard_size, min(cfg.n, (s + 1) * cfg.shard_size)
        noise_all, x0_all = [], []
        for b in range(lo, hi, cfg.batch_size):
            idx = list(range(b, min(hi, b + cfg.batch_size)))
            noise = seeded_noise([NOISE_SEED_BASE * (cfg.seed + 1) + i for i in idx], shape)
            cond = encoder.encode([captions[i] for i in idx])
            with torch.no_grad():
                x0 = solve(model, noise, timesteps, cond, cfg.guidance, null.repeat(len(idx)))
            noise_all.append(noise)
            x0_all.append(x0)
            bar.update(len(idx))
        tensors = {"noise": torch.cat(noise_all), "x0": torch.cat(x0_all), "caption_index": caption_index[lo:hi]}
        save_tensors(_shard_path(out, s), tensors, {"key": key, "shard": s, "range": [lo, hi]})
    bar.close()
    return out


class PairCache:
    """All pairs of a complete cache in memory; `batch(step, B, seed)` is deterministic in (seed, step)."""

    def __init__(self, noise: torch.Tensor, x0: torch.Tensor, caption_index: torch.Tensor, text, mask, meta: dict,
                 pooled: torch.Tensor | None = None, extra_ids: torch.Tensor | None = None):  # fmt: skip
        self.noise, self.x0, self.caption_index, self.text, self.mask, self.meta = (
            noise, x0, caption_index, text, mask, meta,
        )  # fmt: skip
        self.pooled, self.extra_ids = pooled, extra_ids

    def __len__(self) -> int:
        return len(self.noise)

    @property
    def key(self) -> dict:
        return self.meta["key"]

    @classmethod
    def open(cls, root: str | Path) -> PairCache:
        root = Path(root)
        if not (root / MANIFEST).is_file():
            raise CheckpointError(
                f"{root} is not a pair cache (no {MANIFEST}); build one with `fewstep pairs --out {root}`"
            )
        meta = json.loads((root / MANIFEST).read_text())
        if meta.get("key", {}).get("format") != PAIRS_FORMAT:
            raise CheckpointError(f"{root}/{MANIFEST} is not a {PAIRS_FORMAT} manifest")
        missing = [s for s in range(meta["n_shards"]) if not _shard_path(root, s).is_file()]
        if missing:
            raise CheckpointError(
                f"pair cache {root} is incomplete: {len(missing)} of {meta['n_shards']} shards missing "
                f"(first: {missing[0]}); finish it with `fewstep pairs --out {root}` and the same settings"
            )
        parts = []
        for s in range(meta["n_shards"]):
            tensors, smeta = load_tensors(_shard_path(root, s))
            if smeta.get("key") != meta["key"]:
                raise CheckpointError(f"{_shard_path(root, s)} belongs to another pair cache (key differs)")
            parts.append(tensors)
        caps, _ = load_tensors(root / CAPTIONS)
        cat = lambda k: torch.cat([p[k] for p in parts])  # noqa: E731
        return cls(cat("noise"), cat("x0"), cat("caption_index"), caps["text"], caps["mask"], meta, caps.get("pooled"),
                   caps.get("extra_ids"))  # fmt: skip

    def cond(self, idx: torch.Tensor) -> Cond:
        ci = self.caption_index[idx]
        pooled = None if self.pooled is None else self.pooled[ci].float()
        ids = None if self.extra_ids is None else self.extra_ids[ci].float()
        return Cond(self.text[ci].float(), self.mask[ci].float(), pooled, None, ids)

    def batch(self, step: int, batch_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, Cond]:
        """(noise, x0_hat, Cond) for training step `step`."""
        idx = torch.from_numpy(np.random.default_rng([seed, step, 11]).integers(0, len(self), size=batch_size))
        return self.noise[idx], self.x0[idx], self.cond(idx)
