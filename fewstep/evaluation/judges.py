"""Judges: small classifiers trained on the built-in data. They check prompt adherence exactly (shapes:
shape, colour, size and position in every grid cell plus the background; digits: the digit) and their
penultimate features are the feature space of *domain* FID/KID (never reported as FID-Inception).
"""

from __future__ import annotations

import torch
from torch import nn

from fewstep.models.datasets.shapes import BACKGROUND_NAMES, COLOUR_NAMES, GRID, SHAPES, SIZES

CELLS = GRID * GRID
FEATURES = 256


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.GroupNorm(8, cout), nn.SiLU())


class ShapesJudge(nn.Module):
    """(B, 3, 32, 32) in [-1, 1] -> per-cell shape (none + 4), colour (6), size (2) logits and background (3)."""

    kind = "shapes-judge"

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _conv(3, 32),
            _conv(32, 64, 2),
            _conv(64, 64),
            _conv(64, 64, 2),
            _conv(64, 64),
            nn.Flatten(),
            nn.Linear(64 * 8 * 8, FEATURES),
            nn.SiLU(),
        )
        self.shape = nn.Linear(FEATURES, CELLS * (len(SHAPES) + 1))
        self.colour = nn.Linear(FEATURES, CELLS * len(COLOUR_NAMES))
        self.size = nn.Linear(FEATURES, CELLS * len(SIZES))
        self.background = nn.Linear(FEATURES, len(BACKGROUND_NAMES))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        f = self.body(x)
        b = x.shape[0]
        return {
            "shape": self.shape(f).view(b, CELLS, -1),
            "colour": self.colour(f).view(b, CELLS, -1),
            "size": self.size(f).view(b, CELLS, -1),
            "background": self.background(f),
        }


class DigitsJudge(nn.Module):
    """(B, 3, 32, 32) in [-1, 1] -> 10 digit logits."""

    kind = "digits-judge"

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _conv(3, 32),
            _conv(32, 64, 2),
            _conv(64, 64, 2),
            nn.Flatten(),
            nn.Linear(64 * 8 * 8, FEATURES),
            nn.SiLU(),
            nn.Dropout(0.2),
        )
        self.head = nn.Linear(FEATURES, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"digit": self.head(self.body(x))}


JUDGES: dict[str, type[nn.Module]] = {"shapes-judge": ShapesJudge, "digits-judge": DigitsJudge}


class JudgeFeatures(nn.Module):
    """torchmetrics feature extractor: uint8 (B, 3, H, W) -> spatial mean and std of every conv stage.

    Like Inception's pooled features, plus per-stage texture statistics: measured on real shapes images, the
    judge's 256-d classification layer was nearly blind to blur (it is trained to ignore it) and needed far
    more samples for a low real-vs-real floor; these statistics separate blur and noise at a few hundred images.
    """

    def __init__(self, judge: nn.Module):
        super().__init__()
        self.judge = judge.eval()
        self.num_features = int(self(torch.zeros(1, 3, 32, 32, dtype=torch.uint8)).shape[1])

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float() / 127.5 - 1.0
        if x.shape[-1] != 32:
            x = nn.functional.interpolate(x, size=(32, 32), mode="bilinear", antialias=True, align_corners=False)
        stats = []
        for layer in self.judge.body:
            if isinstance(layer, nn.Flatten):
                break
            x = layer(x)
            stats += [x.mean((2, 3)), x.std((2, 3))]
        return torch.cat(stats, dim=1).double()
