"""The study's analysis on hand-built cases whose answers are known: head comparison against the
reference, correlations across training sets, the leave-one-out prediction, early prediction from
recall at fractions of training, and the stop_early rule."""

import math

import numpy as np
import pandas as pd
import pytest

from needlework.artifacts import HeadScores
from needlework.errors import NeedleworkError
from needlework.study.analysis import analyze, compare_heads, correlate, early_prediction, leave_one_out, stop_decisions


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


def test_analyze_leaves_out_sets_stopped_early():
    rows = [
        {"set": s, "kind": "synthetic", "score": sc, "recall": rc, "cosine": rc, "stopped_at": st}
        for s, sc, rc, st in [("a", 0.8, 0.8, None), ("b", 0.5, 0.5, None), ("c", 0.1, 0.1, 0.25), ("d", 0.3, 0.3, None)]
    ]
    assert analyze(rows, "ref", n_boot=50)["sets"] == ["a", "b", "d"]


def test_early_prediction_finds_the_earliest_agreeing_fraction():
    final = {"a": 0.9, "b": 0.6, "c": 0.4, "d": 0.1}
    recall_at = {
        0.1: {"a": 0.2, "b": 0.3, "c": 0.1, "d": 0.2},  # not yet ordered like the final scores
        0.5: {"a": 0.9, "b": 0.6, "c": 0.4, "d": 0.1},  # on the line score = recall: every left-out set predicted exactly
        1.0: {"a": 1.0, "b": 0.8, "c": 0.6, "d": None},  # d has no probe here (stopped): 3 sets
    }
    e = early_prediction(list(final), final, recall_at, agreement=0.8)
    per = {p["fraction"]: p for p in e["per_fraction"]}
    assert per[0.1]["spearman"] < 0.8 and per[0.5]["spearman"] == pytest.approx(1.0) and e["earliest"] == 0.5
    assert [r["predicted"] for r in per[0.5]["rows"]] == pytest.approx([0.9, 0.6, 0.4, 0.1]) and per[0.5]["mae"] == pytest.approx(0)
    assert per[1.0]["n"] == 3 and [r["set"] for r in per[1.0]["rows"]] == ["a", "b", "c"]
    assert [r["actual"] for r in per[0.1]["rows"]] == [0.9, 0.6, 0.4, 0.1]  # always the FINAL score
    two = early_prediction(["a", "b"], final, {0.5: {"a": 0.9, "b": 0.6}})
    assert math.isnan(two["per_fraction"][0]["spearman"]) and two["earliest"] is None  # a ranking needs 3 sets


def test_stop_decisions_stop_only_sets_clearly_below_the_best():
    rows = [
        {"set": "a", "recall": 0.8, "lo": 0.6, "hi": 1.0},  # the best
        {"set": "b", "recall": 0.5, "lo": 0.3, "hi": 0.7},  # overlaps the best's interval: goes on
        {"set": "c", "recall": 0.2, "lo": 0.0, "hi": 0.5},  # wholly below 0.6: stops
        {"set": "d", "recall": 0.1, "lo": None, "hi": None},  # no interval: never stopped
        {"set": "e", "recall": None, "lo": None, "hi": None},  # stopped at an earlier gate
    ]
    r = stop_decisions(rows, {"e": 0.25}, 0.5)
    assert r["best"] == "a" and r["bar"] == 0.6 and r["stopped"] == {"e": 0.25, "c": 0.5}
    assert [x["decision"] for x in r["rows"]] == ["continue", "continue", "stop", "continue", "stopped before"]
    assert [x["stopped_at"] for x in r["rows"]] == [None, None, 0.5, None, 0.25]
    assert stop_decisions(rows, {"e": 0.25}, 0.5, margin=0.2)["stopped"] == {"e": 0.25}  # 0.5 is not 0.2 below 0.6
    tie = stop_decisions([{"set": "x", "recall": 0.5, "lo": 0.5, "hi": 0.5}, {"set": "y", "recall": 0.5, "lo": 0.5, "hi": 0.5}], {}, 0.5)
    assert tie["best"] == "x" and tie["stopped"] == {}  # equal sets never stop each other


def test_p_values_are_exact_for_a_few_sets():
    """A handful of sets: the p-value counts the pairings (scipy's t approximation says 0 for a
    perfect rank correlation of 4 sets); many sets: scipy's own test."""
    from scipy.stats import spearmanr

    from needlework.study.analysis import EXACT_P_MAX_N, exact_p

    c = correlate([0.1, 0.2, 0.3, 0.4], [1.0, 3.0, 7.0, 9.0], n_boot=50)
    assert c["spearman"]["p"] == pytest.approx(2 / 24)  # the identity and the reversal of 24 orders
    assert correlate([0.1, 0.2, 0.3], [3.0, 2.0, 1.0], n_boot=50)["spearman"]["p"] == pytest.approx(2 / 6)
    # 1, 2, 3, 4 against 1, 3, 2, 4: rho = 0.8; rho >= 0.8 for the identity and the 3 adjacent
    # swaps, rho <= -0.8 for their reversals: 8 of the 24 orders
    assert exact_p(np.array([1.0, 2, 3, 4]), np.array([1.0, 3, 2, 4])) == pytest.approx(8 / 24)
    x = np.arange(EXACT_P_MAX_N + 2, dtype=float)
    y = x + np.sin(7 * x)  # ten sets, not exactly monotone
    assert correlate(x, y, n_boot=50)["spearman"]["p"] == pytest.approx(spearmanr(x, y).pvalue)
