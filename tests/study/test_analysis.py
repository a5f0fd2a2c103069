"""The study's analysis on hand-built cases whose answers are known: head comparison against the
reference, correlations across training sets, and the leave-one-out prediction."""

import math

import numpy as np
import pandas as pd
import pytest

from needlework.artifacts import HeadScores
from needlework.errors import NeedleworkError
from needlework.study.analysis import analyze, compare_heads, correlate, leave_one_out


def _heads(means: list[float], per: pd.DataFrame | None = None, n_heads: int = 2) -> HeadScores:
    table = pd.DataFrame(
        {"layer": [i // n_heads for i in range(len(means))], "head": [i % n_heads for i in range(len(means))], "mean": means}
    )
    shape = {"n_layers": len(means) // n_heads, "n_heads": n_heads, "n_kv_heads": n_heads}
    return HeadScores(heads=table, per_example=per, meta={"shape": shape})


def _per(scores: np.ndarray, n_heads: int = 2) -> pd.DataFrame:
    rows = [
        {"example_id": f"e{e}", "layer": f // n_heads, "head": f % n_heads, "score": float(v), "kept": True}
        for e, row in enumerate(scores)
        for f, v in enumerate(row)
    ]
    return pd.DataFrame(rows)


def test_compare_heads_counts_the_shared_heads():
    ref = _heads([0.9, 0.8, 0.0, 0.0, 0.7, 0.0])  # reference top-3: heads 0, 1, 4
    a = _heads([0.9, 0.0, 0.8, 0.0, 0.7, 0.0])  # model top-3: heads 0, 2, 4 -> 2 of 3 shared
    r = compare_heads(a, ref, rule="top_k", k=3)
    assert r["recall"]["mean"] == pytest.approx(2 / 3) and r["precision"]["mean"] == pytest.approx(2 / 3)
    assert r["jaccard"]["mean"] == pytest.approx(2 / 4)
    assert r["cosine"]["mean"] == pytest.approx((0.81 + 0.49) / (np.sqrt(0.81 + 0.64 + 0.49) * np.sqrt(0.81 + 0.64 + 0.49)))
    assert r["n_heads"] == r["n_heads_ref"] == 3 and r["n_examples"] == 0 and math.isnan(r["recall"]["lo"])
    t = compare_heads(a, ref, rule="threshold", threshold=0.75)  # above 0.75: {0, 2} vs {0, 1}
    assert t["recall"]["mean"] == pytest.approx(0.5) and t["n_above_threshold"] == 2


def test_compare_heads_refuses_two_shapes():
    with pytest.raises(NeedleworkError, match="two model shapes"):
        compare_heads(_heads([0.1] * 6), _heads([0.1] * 6, n_heads=3))


def test_compare_heads_bootstrap_over_shared_examples():
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, size=(12, 6))
    r = compare_heads(_heads(list(x.mean(0)), _per(x)), _heads(list(x.mean(0)), _per(x)), k=2, n_boot=200)
    assert r["n_examples"] == 12
    for m in ("recall", "precision", "cosine"):  # the same scores on both sides: identical in every resample
        assert r[m]["mean"] == pytest.approx(1.0) and r[m]["lo"] == pytest.approx(1.0) and r[m]["hi"] == pytest.approx(1.0)


def test_correlate_and_leave_one_out_on_a_line():
    x = [0.1, 0.3, 0.5, 0.7, 0.9]
    y = [2 * v + 1 for v in x]
    c = correlate(x, y, n_boot=200)
    assert c["n"] == 5 and c["spearman"]["r"] == pytest.approx(1.0) and c["pearson"]["r"] == pytest.approx(1.0)
    assert c["spearman"]["p"] < 0.05
    loo = leave_one_out(list("abcde"), x, y)
    assert loo["mae"] == pytest.approx(0.0, abs=1e-9)  # every point lies on the line fitted to the rest
    assert [r["predicted"] for r in loo["rows"]] == pytest.approx(y)
    r = correlate([1.0, 1.0, 1.0], [0.1, 0.2, 0.3])["spearman"]["r"]
    assert r != r  # NaN


def test_analyze_leaves_out_the_reference_and_base_model():
    rows = [
        {"set": s, "kind": k, "score": sc, "recall": rc, "cosine": rc}
        for s, k, sc, rc in [
            ("real", "real", 0.9, 1.0),
            ("hh", "synthetic", 0.8, 0.8),
            ("ll", "synthetic", 0.4, 0.4),
            ("sym", "synthetic", 0.2, 0.2),
            ("base", "none", 0.1, 0.5),
        ]
    ]
    a = analyze(rows, "real", n_boot=100)
    assert a["sets"] == ["hh", "ll", "sym"] and a["n"] == 3
    assert a["fit"]["slope"] == pytest.approx(1.0) and a["fit"]["intercept"] == pytest.approx(0.0, abs=1e-9)
    assert analyze(rows, "real", include_reference=True, n_boot=100)["n"] == 4
