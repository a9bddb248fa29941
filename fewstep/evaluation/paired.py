"""Paired comparison of two systems' prompt adherence on the same prompts and seeds (McNemar's exact test).

Two `fewstep eval` runs with the same dataset and --n judge the same prompts (prompt i with seed i), so a
difference in adherence is judged pairwise: only the prompts where exactly one system is right carry information.
"""

from __future__ import annotations

import math


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Two-sided exact p-value for the discordant counts (binomial with p = 1/2)."""
    n, k = only_a + only_b, min(only_a, only_b)
    if n == 0:
        return 1.0
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n)


def paired_adherence(a: str, b: str) -> dict:
    """a, b: per-prompt verdicts ('1' adherent, '0' not) of two systems on the same prompts, as `fewstep eval`
    records them in `adherent_per_prompt`. Returns both rates, the discordant counts, b - a with its paired
    standard error, and McNemar's exact p-value."""
    if len(a) != len(b):
        raise ValueError(f"the two runs judged different numbers of prompts ({len(a)} vs {len(b)}): use the same --n")
    if not a or set(a + b) - {"0", "1"}:
        raise ValueError("verdicts must be non-empty strings of '0' and '1'")
    n = len(a)
    only_a = sum(x == "1" and y == "0" for x, y in zip(a, b, strict=True))
    only_b = sum(x == "0" and y == "1" for x, y in zip(a, b, strict=True))
    se = math.sqrt(max(only_a + only_b - (only_b - only_a) ** 2 / n, 0.0)) / n
    return {"n": n, "adherence_a": a.count("1") / n, "adherence_b": b.count("1") / n, "only_a": only_a,
            "only_b": only_b, "difference_b_minus_a": (only_b - only_a) / n, "paired_se": se,
            "mcnemar_p": mcnemar_exact(only_a, only_b)}  # fmt: skip
