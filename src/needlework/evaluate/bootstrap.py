"""Bootstrap confidence intervals over examples: percentile intervals from resampled example
indices, seeded and vectorised. Evaluation uses `bootstrap_ci` for metric means; head comparison
and the study use `bootstrap_fn_ci` / `paired_diff_ci`, which resample the same indices for every
array so that paired quantities (two models on the same examples) keep their pairing.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def bootstrap_indices(n: int, n_boot: int = 1000, seed: int = 0) -> np.ndarray:
    """`n_boot` resamples with replacement of `range(n)`, shape (n_boot, n), from a seeded generator."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, n, size=(n_boot, n))


def _interval(samples: np.ndarray, alpha: float) -> tuple[float, float]:
    lo, hi = np.quantile(samples, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def bootstrap_ci(
    values: np.ndarray,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
    stat: Callable = np.mean,
) -> tuple[float, float]:
    """Percentile bootstrap interval of `stat(values)` over examples.

    Args:
        values: one number per example; NaNs are dropped first (e.g. a metric undefined for an example).
        n_boot: number of resamples.
        alpha: 1 - confidence level (0.05 gives a 95% interval).
        seed: seeds the resampling, so the interval is reproducible.
        stat: reducer; called as `stat(samples, axis=1)` on the (n_boot, n) matrix when it accepts
            `axis` (numpy reducers do), else once per resample.
    Returns:
        (lo, hi); (nan, nan) when no finite value is left; (v, v) for one value.
    """
    v = np.asarray(values, dtype=float).ravel()
    v = v[~np.isnan(v)]
    if v.size == 0:
        return float("nan"), float("nan")
    idx = bootstrap_indices(v.size, n_boot, seed)
    samples = v[idx]  # (n_boot, n)
    try:
        stats = np.asarray(stat(samples, axis=1), dtype=float)
    except TypeError:  # a reducer without `axis`
        stats = np.array([stat(row) for row in samples], dtype=float)
    return _interval(stats, alpha)


def bootstrap_fn_ci(
    fn: Callable[..., float],
    *arrays: np.ndarray,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> tuple[float, float, float]:
    """Bootstrap any statistic of per-example arrays, resampling example indices jointly.

    Args:
        fn: maps the arrays (rows = examples; e.g. an (n, n_heads) score matrix) to one number.
        arrays: each has the examples on axis 0, all with the same length n.
        n_boot, alpha, seed: as in `bootstrap_ci`.
    Returns:
        (point, lo, hi): `fn` on the full arrays and the percentile interval of `fn` on resamples.
    Raises:
        ValueError: no arrays, or arrays of different lengths.
    """
    if not arrays:
        raise ValueError("bootstrap_fn_ci needs at least one array")
    arrays = tuple(np.asarray(a) for a in arrays)
    n = len(arrays[0])
    if any(len(a) != n for a in arrays):
        raise ValueError(f"arrays differ in length: {[len(a) for a in arrays]}")
    point = float(fn(*arrays))
    if n == 0:
        return point, float("nan"), float("nan")
    idx = bootstrap_indices(n, n_boot, seed)
    stats = np.array([fn(*(a[row] for a in arrays)) for row in idx], dtype=float)
    stats = stats[~np.isnan(stats)]
    if stats.size == 0:
        return point, float("nan"), float("nan")
    return (point, *_interval(stats, alpha))


def paired_diff_ci(a: np.ndarray, b: np.ndarray, n_boot: int = 1000, alpha: float = 0.05, seed: int = 0) -> tuple[float, float, float]:
    """Mean of `a - b` over paired examples with its bootstrap interval, vectorised.

    Returns:
        (mean difference, lo, hi). Raises ValueError when the lengths differ.
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired arrays differ in shape: {a.shape} vs {b.shape}")
    d = a - b
    return (float(np.nanmean(d)) if d.size else float("nan"), *bootstrap_ci(d, n_boot, alpha, seed))
