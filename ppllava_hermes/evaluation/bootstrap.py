"""Paired bootstrap intervals: how sure a quality difference between two configurations is.

Two configurations answer the same items (questions, or videos for captions); the difference of a
statistic (a mean, or a corpus metric) between them is resampled by drawing items with replacement,
the *same* draw for both, so what the items share (hard questions, easy videos) cancels. The interval is
the percentile interval of the resampled differences: with ``level`` 0.95, the 2.5th and 97.5th
percentiles of ``n_boot`` resamples (numpy's default linear interpolation).

* :func:`resample_indices`: the ``(n_boot, n)`` draws, from a seeded generator (``numpy.random.
  default_rng(seed)``): the same seed gives the same intervals, and every statistic of one comparison
  can share one draw;
* :func:`paired_mean_difference`: ``mean(b) - mean(a)`` of per-item values and its interval (the
  accuracy difference of 0/1 outcomes, the CIDEr-D difference of per-video scores);
* :func:`percentile_interval`: the interval of any resampled statistic.

An empty item set gives no interval (None). What this module does not know: what the items are.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

DEFAULT_RESAMPLES = 1000
LEVEL = 0.95


def check_resamples(n_boot: int) -> int:
    """``n_boot`` as an int; ``ValueError`` unless it is an integer of at least 100 (fewer gives no stable 95% tail)."""
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 100:
        raise ValueError(f"bootstrap resamples must be an integer >= 100, got {n_boot!r}")
    return int(n_boot)


def resample_indices(n: int, n_boot: int = DEFAULT_RESAMPLES, seed: int = 0) -> np.ndarray:
    """``(n_boot, n)`` item indices drawn with replacement (seeded); ``(n_boot, 0)`` when ``n`` is 0."""
    n_boot = check_resamples(n_boot)
    if n < 0:
        raise ValueError(f"resample_indices: n must be >= 0, got {n}")
    return np.random.default_rng(seed).integers(0, max(n, 1), size=(n_boot, n))


def percentile_interval(samples: np.ndarray, level: float = LEVEL) -> list[float]:
    """``[lo, hi]``: the central ``level`` percentile interval of resampled statistics."""
    if not 0 < level < 1:
        raise ValueError(f"interval level must be in (0, 1), got {level}")
    tail = 100 * (1 - level) / 2
    return [float(np.percentile(samples, tail)), float(np.percentile(samples, 100 - tail))]


def paired_mean_difference(a: Sequence[float], b: Sequence[float], *, indices: np.ndarray | None = None,
                           n_boot: int = DEFAULT_RESAMPLES, seed: int = 0, level: float = LEVEL) -> dict[str, Any]:
    """``{"n", "a", "b", "diff", "ci95"}``: the means of ``a`` and ``b`` (one value per item, same order),
    ``diff = mean(b) - mean(a)`` and its paired bootstrap interval (None without items).

    ``indices`` (from :func:`resample_indices`) reuses a draw; otherwise one is made from ``n_boot`` and
    ``seed``. Items of different counts raise ``ValueError``.
    """
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"paired values: {x.shape} and {y.shape} are not one value per item each")
    n = len(x)
    if n == 0:
        return {"n": 0, "a": None, "b": None, "diff": None, "ci95": None}
    idx = resample_indices(n, n_boot, seed) if indices is None else indices
    diffs = (y - x)[idx].mean(axis=1)
    return {"n": n, "a": float(x.mean()), "b": float(y.mean()), "diff": float((y - x).mean()),
            "ci95": percentile_interval(diffs, level)}
