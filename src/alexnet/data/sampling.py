"""Evenly spaced samples of a dataset: one rule for every place that looks at a part of one."""

from __future__ import annotations


def spaced_indices(n: int, k: int | None) -> list[int]:
    """``min(k, n)`` indices spread evenly over ``range(n)``, each the middle of its stretch.

    Datasets are sorted by class, so the sample gives every class its share (statistics
    estimates, ``--max-eval``, index limits, the explorer's gallery). ``k=None`` or
    ``k >= n``: every index. Integer arithmetic, so the choice is exact and reproducible.
    """
    if k is None or k >= n:
        return list(range(n))
    if k <= 0:
        return []
    return [(2 * i + 1) * n // (2 * k) for i in range(k)]
