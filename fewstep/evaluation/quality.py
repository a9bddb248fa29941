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

from .judges import JudgeFeatures
from .train_judge import load_judge


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
    from torchmetrics.image.fid import NoTrainInceptionV3

    net = NoTrainInceptionV3(
        name="inception-v3-compat", features_list=["2048"], feature_extractor_weights_path=str(weights)
    )
    net.num_features = 2048
    return FeatureSpace(net, "FID-Inception")


def _to_nchw(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))


@torch.no_grad()
def fid_kid(real: np.ndarray, fake: np.ndarray, space: FeatureSpace, kid_subset: int = 100, seed: int = 0) -> dict:
    """uint8 (N, H, W, 3) sets -> {'fid', 'kid_mean', 'kid_std'} in the given feature space."""
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    if real.ndim != 4 or fake.ndim != 4 or real.dtype != np.uint8 or fake.dtype != np.uint8:
        raise ValueError(
            f"fid_kid expects uint8 (N, H, W, 3) arrays; got {real.dtype}{real.shape}, {fake.dtype}{fake.shape}"
        )
    if min(len(real), len(fake)) < 2:
        raise ValueError("FID needs at least 2 images per set")
    fid = FrechetInceptionDistance(feature=space.module, normalize=False)
    subset = min(kid_subset, len(real), len(fake))
    torch.manual_seed(seed)  # KID draws random subsets
    kid = KernelInceptionDistance(feature=space.module, subset_size=subset, normalize=False)
    for i in range(0, len(real), 256):
        batch = _to_nchw(real[i : i + 256])
        fid.update(batch, real=True)
        kid.update(batch, real=True)
    for i in range(0, len(fake), 256):
        batch = _to_nchw(fake[i : i + 256])
        fid.update(batch, real=False)
        kid.update(batch, real=False)
    kid_mean, kid_std = kid.compute()
    return {"fid": float(fid.compute()), "kid_mean": float(kid_mean), "kid_std": float(kid_std)}
