"""The Pareto frontier of (cost, badness) points: lower is better on both axes."""

from __future__ import annotations

import math
from collections.abc import Sequence


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point dominates, sorted by the first coordinate.

    A point dominates another when it is <= on both coordinates and < on at least one. Exact duplicates are all
    kept (neither dominates the other). Points with a NaN or infinite coordinate are never on the frontier.
    """
    finite = [i for i, (x, y) in enumerate(points) if math.isfinite(x) and math.isfinite(y)]
    order = sorted(finite, key=lambda i: (points[i][0], points[i][1]))
    front: list[int] = []
    best_y = math.inf
    last: tuple[float, float] | None = None
    for i in order:
        x, y = points[i]
        if y < best_y:
            front.append(i)
            best_y, last = y, (x, y)
        elif (x, y) == last:  # a duplicate of the last frontier point
            front.append(i)
    return front
