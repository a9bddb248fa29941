"""`fewstep eval`: domain FID / KID and prompt adherence of a model at several sampler settings.

Every setting uses the same prompts and seeds (prompt i, seed i), so systems are compared on equal terms.
The prompt set's own real images are the FID reference; the judge's accuracy on them is reported beside.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from fewstep.core.imaging import make_grid, save_png
from fewstep.evaluation.adherence import decode_shapes, digits_adherent, shapes_adherent
from fewstep.evaluation.quality import FeatureSpace, fid_kid, inception_features, judge_features
from fewstep.evaluation.train_judge import judge_accuracy, load_judge
from fewstep.models.datasets import DigitsDataset, ShapesDataset, to_model_range
from fewstep.models.pipeline import TorchPipeline

EVAL_PROMPT_SEED = 4242  # shapes prompts/images for evaluation (disjoint from training seed 0)
REFERENCE_SEED = 4343  # a second real set: the real-vs-real FID floor


@dataclass(frozen=True)
class Setting:
    sampler: str
    steps: int
    guidance: float

    @property
    def label(self) -> str:
        return f"{self.sampler}-{self.steps}step-w{self.guidance:g}"

    @property
    def nfe(self) -> int:
        per_step = 2 if self.guidance != 1.0 else 1
        heun_evals = 2 * self.steps - 1 if self.sampler == "heun" else self.steps
        return per_step * heun_evals

    @staticmethod
    def parse(text: str) -> Setting:
        """'euler:4:3.0' -> Setting('euler', 4, 3.0)."""
        try:
            sampler, steps, guidance = text.split(":")
            return Setting(sampler, int(steps), float(guidance))
        except ValueError:
            raise ValueError(f"setting {text!r} must look like SAMPLER:STEPS:GUIDANCE, e.g. euler:4:3") from None


DEFAULT_SETTINGS = tuple(Setting.parse(s) for s in ("euler:50:3", "euler:4:3", "euler:2:3", "euler:1:3", "euler:1:1"))


def eval_set(dataset: str, n: int, seed: int):
    if dataset == "shapes":
        return ShapesDataset(n=n, seed=seed)
    if dataset == "digits":
        ds = DigitsDataset(seed=0, split="test")
        return ds if n >= len(ds) else _Head(ds, n)
    raise ValueError(f"fewstep eval knows the built-in datasets 'shapes' and 'digits'; got {dataset!r}")


class _Head:
    def __init__(self, ds, n: int):
        self.ds, self.n = ds, n

    def __len__(self) -> int:
        return self.n

    def item(self, i: int):
        return self.ds.item(i)


def adherence(dataset: str, judge: torch.nn.Module, images: np.ndarray, labels: list) -> list[bool]:
    logits: dict[str, list[torch.Tensor]] = {}
    with torch.no_grad():
        for i in range(0, len(images), 256):
            for k, v in judge(torch.from_numpy(to_model_range(images[i : i + 256]))).items():
                logits.setdefault(k, []).append(v)
    out = {k: torch.cat(v) for k, v in logits.items()}
    if dataset == "digits":
        return digits_adherent(out, labels)
    return [shapes_adherent(d, lb) for d, lb in zip(decode_shapes(out), labels, strict=True)]


def evaluate(
    model: str,
    dataset: str = "shapes",
    n: int = 512,
    settings: tuple[Setting, ...] = DEFAULT_SETTINGS,
    judge_name: str | None = None,
    inception_weights: str | None = None,
    out_dir: str | Path | None = None,
    progress: bool = True,
) -> dict:
    pipe = TorchPipeline.from_checkpoint(model)
    judge_name = judge_name or f"{dataset}32-judge"
    judge, judge_meta = load_judge(judge_name)
    space: FeatureSpace = inception_features(inception_weights) if inception_weights else judge_features(judge_name)
    held_out = eval_set(dataset, n, EVAL_PROMPT_SEED)
    items = [held_out.item(i) for i in range(len(held_out))]
    real = np.stack([it[0] for it in items])
    prompts, labels = [it[1] for it in items], [it[2] for it in items]
    seeds = list(range(len(prompts)))
    result: dict = {
        "model": str(model),
        "model_name": pipe.spec.get("name"),
        "dataset": dataset,
        "images": len(prompts),
        "feature_space": space.label,
        "judge": judge_name,
        "judge_accuracy_on_real": judge_accuracy(dataset, judge, real, labels),
        "judge_accuracy_on_held_out (from training)": judge_meta["accuracy"],
        "systems": [],
    }
    if dataset == "shapes":
        ref = ShapesDataset(n=len(real), seed=REFERENCE_SEED)
        ref_images = np.stack([ref.item(i)[0] for i in range(len(ref))])
        result["real_vs_real"] = fid_kid(real, ref_images, space)
        two = np.array([len(lb.objects) == 2 for lb in labels])
    mode, rule = pipe.guidance_mode, pipe.spec["sampler"].get("rule", "euler")
    if mode != "cfg" or rule != "euler":  # students: their own rule and guidance, one row per step count
        settings = tuple(dict.fromkeys(
            Setting(rule, s.steps, 1.0 if mode == "none" else s.guidance) for s in settings
        ))  # fmt: skip
    for s in settings:
        bar = tqdm(total=len(prompts), desc=s.label, disable=not progress, leave=False)
        t0 = time.perf_counter()
        sampler = None if rule != "euler" else s.sampler
        guidance = None if mode == "none" else s.guidance
        fake = pipe.generate(prompts, seeds, s.steps, guidance, sampler, on_batch=bar.update)
        seconds = time.perf_counter() - t0
        bar.close()
        ok = np.array(adherence(dataset, judge, fake, labels))
        row = {
            "label": s.label,
            **asdict(s),
            "nfe": s.nfe if mode == "cfg" else s.nfe // (2 if s.guidance != 1.0 else 1),
            "guidance_mode": mode,
            **fid_kid(real, fake, space),
            "adherence": float(ok.mean()),
            "generate_seconds": round(seconds, 2),
            "ms_per_image": round(1000 * seconds / len(prompts), 2),
            # prompt i's verdict as '1'/'0': two systems on the same prompts and seeds compare pairwise
            "adherent_per_prompt": "".join("1" if v else "0" for v in ok),
        }
        if dataset == "shapes":
            row["adherence_one_shape"] = float(ok[~two].mean())
            row["adherence_two_shapes"] = float(ok[two].mean())
        result["systems"].append(row)
        if out_dir:
            save_png(make_grid(fake[:64], nrow=8), Path(out_dir) / f"samples_{s.label}.png")
    return result
