"""FID and KID through torchmetrics, with a pluggable feature network.

Default: the judge's features (labelled `domain FID`); with a local Inception weights file (torch-fidelity's
`pt_inception-2015-12-05` format) and torch-fidelity installed: FID-Inception. Nothing is downloaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fewstep.evaluation.judges import JudgeFeatures
from fewstep.evaluation.train_judge import load_judge


@dataclass
class FeatureSpace:
    module: nn.Module  # uint8 (B, 3, H, W) -> (B, F), with a `num_features` attribute
    label: str  # "domain FID (shapes32-judge features)" or "FID-Inception"


def judge_features(judge_name: str) -> FeatureSpace:
    judge, _ = load_judge(judge_name)
    return FeatureSpace(JudgeFeatures(judge), f"domain FID ({judge_name} features)")


def inception_features(weights: str | Path) -> FeatureSpace:
    weights = Path(weights)
    if not weights.is_file():
        raise FileNotFoundError(f"Inception weights {weights} do not exist (nothing is downloaded)")
    try:
        import torch_fidelity  # noqa: F401
    except ImportError as e:
        raise ImportError("FID-Inception needs `pip install torch-fidelity` (weights come from your local file)") from e
    from torchmetrics.image.fid import NoTrainInceptionV3  # train extra

    net = NoTrainInceptionV3(
        name="inception-v3-compat", features_list=["2048"], feature_extractor_weights_path=str(weights)
    )
    net.num_features = 2048
    return FeatureSpace(net, "FID-Inception")


def _to_nchw(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))


class ReferenceMetrics:
    """FID and KID against one real set whose features are computed once (a sweep scores many systems against it)."""

    def __init__(self, real: np.ndarray, space: FeatureSpace, kid_subset: int = 100, seed: int = 0):
        from torchmetrics.image.fid import FrechetInceptionDistance  # train extra
        from torchmetrics.image.kid import KernelInceptionDistance  # train extra

        _check_uint8(real)
        if len(real) < 2:
            raise ValueError("FID needs at least 2 images per set")
        self.n_real, self.kid_subset, self.seed = len(real), kid_subset, seed
        self.fid = FrechetInceptionDistance(feature=space.module, normalize=False, reset_real_features=False)
        # KID's subset size is fixed at construction; fake sets smaller than the real one get their own metric
        self.kid = KernelInceptionDistance(feature=space.module, subset_size=min(kid_subset, len(real)),
                                           normalize=False, reset_real_features=False)  # fmt: skip
        with torch.no_grad():
            for i in range(0, len(real), 256):
                batch = _to_nchw(real[i : i + 256])
                self.fid.update(batch, real=True)
                self.kid.update(batch, real=True)

    @torch.no_grad()
    def score(self, fake: np.ndarray) -> dict:
        """uint8 (N, H, W, 3) -> {'fid', 'kid_mean', 'kid_std'}."""
        _check_uint8(fake)
        if len(fake) < 2:
            raise ValueError("FID needs at least 2 images per set")
        if len(fake) < self.kid.subset_size:
            raise ValueError(f"KID subsets of {self.kid.subset_size} need at least that many images; got {len(fake)}")
        self.fid.reset()  # keeps the real features
        self.kid.reset()
        for i in range(0, len(fake), 256):
            batch = _to_nchw(fake[i : i + 256])
            self.fid.update(batch, real=False)
            self.kid.update(batch, real=False)
        torch.manual_seed(self.seed)  # KID draws random subsets
        kid_mean, kid_std = self.kid.compute()
        return {"fid": float(self.fid.compute()), "kid_mean": float(kid_mean), "kid_std": float(kid_std)}


def _check_uint8(images: np.ndarray) -> None:
    if images.ndim != 4 or images.dtype != np.uint8:
        raise ValueError(f"FID/KID expect uint8 (N, H, W, 3) arrays; got {images.dtype}{images.shape}")


def fid_kid(real: np.ndarray, fake: np.ndarray, space: FeatureSpace, kid_subset: int = 100, seed: int = 0) -> dict:
    """uint8 (N, H, W, 3) sets -> {'fid', 'kid_mean', 'kid_std'} in the given feature space."""
    _check_uint8(fake)
    return ReferenceMetrics(real, space, min(kid_subset, len(fake)), seed).score(fake)
