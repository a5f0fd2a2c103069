import math

import numpy as np
import pytest

from needlework.evaluate.bootstrap import bootstrap_ci, bootstrap_fn_ci, paired_diff_ci


def test_ci_contains_mean_and_shrinks_with_n():
    rng = np.random.default_rng(1)
    widths = []
    for n in (20, 200, 2000):
        v = rng.binomial(1, 0.3, size=n).astype(float)
        lo, hi = bootstrap_ci(v, n_boot=500, seed=0)
        assert lo <= v.mean() <= hi
        widths.append(hi - lo)
    assert widths[0] > widths[1] > widths[2] > 0
    # about 1/sqrt(n): 100x more examples gives a ~10x narrower interval
    assert 5 < widths[0] / widths[2] < 20


def test_ci_is_seeded_and_level_matters():
    v = np.random.default_rng(2).normal(size=100)
    assert bootstrap_ci(v, seed=3) == bootstrap_ci(v, seed=3)
    assert bootstrap_ci(v, seed=3) != bootstrap_ci(v, seed=4)
    lo95, hi95 = bootstrap_ci(v, alpha=0.05)
    lo50, hi50 = bootstrap_ci(v, alpha=0.5)
    assert lo95 < lo50 < hi50 < hi95


def test_ci_degenerate_inputs():
    assert all(math.isnan(x) for x in bootstrap_ci(np.array([])))
    assert all(math.isnan(x) for x in bootstrap_ci(np.array([np.nan, np.nan])))
    assert bootstrap_ci(np.array([0.7])) == (0.7, 0.7)
    assert bootstrap_ci(np.array([1.0, np.nan, 1.0])) == (1.0, 1.0)  # NaNs dropped


def test_ci_with_stat_without_axis():
    v = np.arange(50, dtype=float)
    lo, hi = bootstrap_ci(v, n_boot=200, stat=lambda x: float(np.median(x)))
    assert lo <= np.median(v) <= hi
    assert bootstrap_ci(v, n_boot=200, stat=np.median) == (lo, hi)  # same indices, same answer


def test_fn_ci_resamples_rows_jointly():
    rng = np.random.default_rng(0)
    x = rng.normal(size=300)
    y = x + 0.01 * rng.normal(size=300)  # nearly identical: correlation stays ~1 in every resample
    point, lo, hi = bootstrap_fn_ci(lambda a, b: np.corrcoef(a, b)[0, 1], x, y, n_boot=200)
    assert lo <= point <= hi and lo > 0.99
    with pytest.raises(ValueError):
        bootstrap_fn_ci(np.mean, x, y[:10])


def test_paired_diff_is_tighter_than_unpaired():
    rng = np.random.default_rng(0)
    base = rng.normal(size=200)
    a, b = base + 0.1, base + 0.01 * rng.normal(size=200)
    d, lo, hi = paired_diff_ci(a, b, n_boot=500)
    assert d == pytest.approx(0.1, abs=0.01) and lo > 0.0 and lo <= d <= hi
    lo_a, hi_a = bootstrap_ci(a, n_boot=500)
    assert (hi - lo) < (hi_a - lo_a) / 10
