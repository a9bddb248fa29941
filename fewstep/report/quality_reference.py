"""The sweep's fixed prompts, real images and feature network; scores a system's images against them."""

from __future__ import annotations

import numpy as np
from PIL import Image

from fewstep.evaluation.evaluate import EVAL_PROMPT_SEED, REFERENCE_SEED, adherence, eval_set
from fewstep.evaluation.quality import FeatureSpace, ReferenceMetrics, fid_kid, inception_features, judge_features
from fewstep.evaluation.train_judge import load_judge
from fewstep.models.datasets import make_dataset
from fewstep.report.sweep import SweepConfig


def resize(images: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    h, w = size
    return np.stack([np.asarray(Image.fromarray(im).resize((w, h), Image.Resampling.BICUBIC)) for im in images])


class QualityReference:
    """Prompt i (seed i) for every system; FID/KID against the real images of those prompts; adherence by the judge."""

    def __init__(self, cfg: SweepConfig):
        d, m = cfg.data, cfg.metrics
        self.dataset, self.kid_subset = d.dataset, m.kid_subset
        if d.dataset == "imagefolder":
            ds = make_dataset("imagefolder", path=cfg.resolve(d.path))
            if len(ds) < d.n:
                raise ValueError(f"data.n is {d.n} but the folder {d.path} has only {len(ds)} images; lower data.n")
        else:
            ds = eval_set(d.dataset, d.n, EVAL_PROMPT_SEED)
        items = [ds.item(i) for i in range(min(d.n, len(ds)))]
        self.real = np.stack([it[0] for it in items])
        self.prompts = [it[1] for it in items]
        self.labels = [it[2] for it in items]
        shipped = f"{d.dataset}32-judge" if d.dataset != "imagefolder" else None
        judge_name = cfg.resolve(m.judge) if m.judge else shipped
        self.judge = load_judge(judge_name)[0] if judge_name and d.dataset != "imagefolder" else None
        self.judge_name = judge_name
        self.space: FeatureSpace = (inception_features(cfg.resolve(m.inception_weights)) if m.inception_weights
                                    else judge_features(judge_name))  # fmt: skip
        self.metrics = ReferenceMetrics(self.real, self.space, kid_subset=self.kid_subset)  # real features once
        self.real_vs_real = None
        if d.dataset == "shapes":  # the floor: a second real set of the same prompts' distribution
            ref = eval_set("shapes", len(self.real), REFERENCE_SEED)
            self.real_vs_real = fid_kid(self.real, np.stack([ref.item(i)[0] for i in range(len(ref))]), self.space,
                                        kid_subset=self.kid_subset)  # fmt: skip

    def describe(self) -> dict:
        return {
            "feature_space": self.space.label,
            "real_vs_real": self.real_vs_real,
            "reference": {
                "dataset": self.dataset,
                "images": len(self.real),
                "judge": self.judge_name,
                "adherence": "judge's exact attribute check" if self.judge is not None else "not measured",
            },
        }

    def score(self, images: np.ndarray) -> dict:
        if len(images) != len(self.real) or images.shape[-1] != self.real.shape[-1]:
            raise ValueError(f"the system made images of shape {images.shape}; the reference set is {self.real.shape}")
        if images.shape[1:3] != self.real.shape[1:3]:  # another resolution: compared at the reference's
            images = resize(images, self.real.shape[1:3])
        out = self.metrics.score(images)
        out["adherence"] = None
        if self.judge is not None:
            out["adherence"] = float(np.mean(adherence(self.dataset, self.judge, images, self.labels)))
        return out
