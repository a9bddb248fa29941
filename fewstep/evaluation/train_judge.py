"""Train the judges (attribute / digit classifiers) on the built-in data and record their held-out accuracy."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from fewstep import __version__
from fewstep.evaluation.adherence import decode_shapes, digits_adherent, shapes_adherent
from fewstep.evaluation.judges import CELLS, JUDGES, DigitsJudge, ShapesJudge
from fewstep.models.checkpoint import CheckpointError, load_state_strict, load_tensors, save_tensors
from fewstep.models.datasets import DigitsDataset, ShapesDataset, to_model_range
from fewstep.models.datasets.shapes import BACKGROUND_NAMES, COLOUR_NAMES, SHAPES, SIZES
from fewstep.models.loading import resolve_checkpoint

JUDGE_FORMAT = "fewstep-judge/1"
SHAPES_TRAIN_SEED, SHAPES_TEST_SEED = 777, 778


def shapes_targets(labels: list) -> dict[str, torch.Tensor]:
    n = len(labels)
    shape = torch.zeros(n, CELLS, dtype=torch.long)
    colour = torch.full((n, CELLS), -100, dtype=torch.long)  # ignored on empty cells
    size = torch.full((n, CELLS), -100, dtype=torch.long)
    bg = torch.tensor([BACKGROUND_NAMES.index(lb.background) for lb in labels])
    for i, lb in enumerate(labels):
        for o in lb.objects:
            shape[i, o.cell] = SHAPES.index(o.shape) + 1
            colour[i, o.cell] = COLOUR_NAMES.index(o.colour)
            size[i, o.cell] = SIZES.index(o.size)
    return {"shape": shape, "colour": colour, "size": size, "background": bg}


def _load_set(kind: str, n: int, seed: int, split: str) -> tuple[np.ndarray, list]:
    ds = ShapesDataset(n=n, seed=seed) if kind == "shapes" else DigitsDataset(seed=0, split=split)
    items = [ds.item(i) for i in range(len(ds))]
    return np.stack([it[0] for it in items]), [it[2] for it in items]


def _loss(kind: str, out: dict[str, torch.Tensor], labels: list) -> torch.Tensor:
    ce = nn.functional.cross_entropy
    if kind == "digits":
        return ce(out["digit"], torch.tensor(labels))
    tgt = shapes_targets(labels)
    return (
        ce(out["shape"].flatten(0, 1), tgt["shape"].flatten())
        + ce(out["colour"].flatten(0, 1), tgt["colour"].flatten())
        + ce(out["size"].flatten(0, 1), tgt["size"].flatten())
        + ce(out["background"], tgt["background"])
    )


@torch.no_grad()
def judge_accuracy(kind: str, judge: nn.Module, images: np.ndarray, labels: list) -> dict[str, float]:
    """Accuracy of the judge on real images whose labels are known (adherence of real data to its caption)."""
    judge.eval()
    out = {k: torch.cat(v) for k, v in _batched_logits(judge, images).items()}
    if kind == "digits":
        return {"digit_accuracy": float(np.mean(digits_adherent(out, labels)))}
    det = decode_shapes(out)
    full = [replace(lb, named=frozenset({"size", "background"})) for lb in labels]  # every attribute checked
    tgt = shapes_targets(labels)
    occupied = tgt["shape"] > 0
    return {
        "adherence_on_real": float(np.mean([shapes_adherent(d, lb) for d, lb in zip(det, labels, strict=True)])),
        "all_attributes_exact": float(np.mean([shapes_adherent(d, lb) for d, lb in zip(det, full, strict=True)])),
        "cell_shape_accuracy": float((out["shape"].argmax(-1) == tgt["shape"]).float().mean()),
        "colour_accuracy": float((out["colour"].argmax(-1) == tgt["colour"])[occupied].float().mean()),
        "size_accuracy": float((out["size"].argmax(-1) == tgt["size"])[occupied].float().mean()),
        "background_accuracy": float((out["background"].argmax(-1) == tgt["background"]).float().mean()),
    }


def _batched_logits(judge: nn.Module, images: np.ndarray, batch: int = 256) -> dict[str, list[torch.Tensor]]:
    outs: dict[str, list[torch.Tensor]] = {}
    for i in range(0, len(images), batch):
        for k, v in judge(torch.from_numpy(to_model_range(images[i : i + batch]))).items():
            outs.setdefault(k, []).append(v)
    return outs


def train_judge(
    kind: str,
    out: str | Path,
    n_train: int = 20000,
    n_test: int = 2000,
    epochs: int = 6,
    batch_size: int = 128,
    lr: float = 2e-3,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """Train the `shapes` or `digits` judge and save it with its held-out accuracy; returns the accuracy."""
    if kind not in ("shapes", "digits"):
        raise ValueError(f"judge kind must be 'shapes' or 'digits'; got {kind!r}")
    torch.manual_seed(seed)
    x_tr, y_tr = _load_set(kind, n_train, SHAPES_TRAIN_SEED, "train")
    x_te, y_te = _load_set(kind, n_test, SHAPES_TEST_SEED, "test")
    judge = ShapesJudge() if kind == "shapes" else DigitsJudge()
    opt = torch.optim.AdamW(judge.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * int(np.ceil(len(x_tr) / batch_size))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    rng = np.random.default_rng(seed)
    bar = tqdm(total=steps, desc=f"train {kind} judge", disable=not progress, mininterval=1)
    for _ in range(epochs):
        judge.train()
        for idx in np.array_split(rng.permutation(len(x_tr)), int(np.ceil(len(x_tr) / batch_size))):
            x = torch.from_numpy(to_model_range(x_tr[idx]))
            # mild noise/blur robustness so that slightly soft generated images are judged on content
            x = x + 0.05 * torch.rand(len(x), 1, 1, 1) * torch.randn_like(x)
            if kind == "digits":  # the digits set is small: shift by up to 2 px
                x = torch.roll(x, shifts=tuple(int(s) for s in rng.integers(-2, 3, size=2)), dims=(2, 3))
            loss = _loss(kind, judge(x), [y_tr[i] for i in idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
    bar.close()
    acc = judge_accuracy(kind, judge, x_te, y_te)
    meta = {
        "format": JUDGE_FORMAT,
        "kind": judge.kind,
        "accuracy": acc,
        "test_images": len(x_te),
        "training": {
            "n_train": len(x_tr),
            "epochs": epochs,
            "batch_size": batch_size,
            "lr": lr,
            "seed": seed,
            "train_seed": SHAPES_TRAIN_SEED if kind == "shapes" else "digits split=train",
            "test_seed": SHAPES_TEST_SEED if kind == "shapes" else "digits split=test",
        },
        "created_by": {"fewstep": __version__, "command": f"fewstep train-judge {kind} --out {out}"},
    }
    save_tensors(out, judge.state_dict(), meta)
    return acc


def load_judge(name_or_path: str | Path) -> tuple[nn.Module, dict]:
    path = resolve_checkpoint(name_or_path)
    tensors, meta = load_tensors(path)
    if meta.get("format") != JUDGE_FORMAT or meta.get("kind") not in JUDGES:
        raise CheckpointError(
            f"{path} is not a fewstep judge (format {meta.get('format')!r}, kind {meta.get('kind')!r})"
        )
    judge = JUDGES[meta["kind"]]()
    load_state_strict(judge, tensors, str(path))
    return judge.eval().requires_grad_(False), meta
