"""Distances between predictions and targets (docs/concepts/flow-contract.md)."""

from __future__ import annotations

import math

import torch

DISTANCES = ("pseudo_huber", "l2")


def pseudo_huber(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """sqrt(||a - b||^2 + c^2) - c per sample, c = 0.00054 sqrt(dim) (Song & Dhariwal 2024); batch mean."""
    diff = (a - b).flatten(1)
    c = 0.00054 * math.sqrt(diff.shape[1])
    return (torch.sqrt(diff.pow(2).sum(1) + c * c) - c).mean()


def l2(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean squared error."""
    return (a - b).pow(2).mean()


def get_distance(name: str):
    if name == "pseudo_huber":
        return pseudo_huber
    if name == "l2":
        return l2
    raise ValueError(f"unknown distance {name!r}; choose one of {', '.join(DISTANCES)}")
