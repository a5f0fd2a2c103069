"""Intervals for patching, torch-free so the report can recompute them from per-example rows: the
share of the source-target gap a patch recovers, with a paired bootstrap over examples."""

from __future__ import annotations

import numpy as np

__all__ = ["recovered_ci"]


def recovered_ci(
    patched, target, source, n_boot: int = 1000, alpha: float = 0.05, seed: int = 0
) -> tuple[float | None, float | None, float | None]:
    """Gap recovered = mean(patched - target) / mean(source - target) over the same examples, with a
    percentile interval from resampling examples jointly (paired: one index draw for all three).

    Args:
        patched, target, source: one score per example, aligned.
    Returns:
        (recovered, lo, hi); (None, None, None) when source and target score alike (no gap), and
        lo/hi None when too few resamples have a gap (the ratio is undefined there).
    """
    p, t, s = (np.asarray(x, float) for x in (patched, target, source))
    gap = float(np.mean(s - t)) if s.size else 0.0
    if abs(gap) < 1e-12:
        return None, None, None
    rec = float(np.mean(p - t)) / gap
    idx = np.random.default_rng(seed).integers(0, p.size, (n_boot, p.size))  # (n_boot, n) example draws
    num, den = (p - t)[idx].mean(axis=1), (s - t)[idx].mean(axis=1)
    ok = np.abs(den) > 1e-12  # resamples without a gap have no ratio
    if ok.sum() < max(10, n_boot // 2):
        return rec, None, None
    lo, hi = np.quantile(num[ok] / den[ok], [alpha / 2, 1 - alpha / 2])
    return rec, float(lo), float(hi)
