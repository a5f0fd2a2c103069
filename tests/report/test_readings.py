"""The readings under the figures: differences claimed only where the 95% intervals separate,
"no conclusion at this size" where they do not (report.readings), and the views they read
(report.views), on hand-made numbers shaped like the issue's real-data study."""

from __future__ import annotations

import pandas as pd

from needlework.report.readings import (
    NO_CONCLUSION,
    reading_agreement,
    reading_correlation,
    reading_criteria,
    reading_heads,
    reading_knockout,
    reading_patch,
    reading_scores,
)
from needlework.report.views import knockout_view, patch_view


def _row(label, score, lo, hi, kind="synthetic", reference=False):
    return {
        "label": label,
        "set": label,
        "kind": kind,
        "reference": reference,
        "score": score,
        "score_lo": lo,
        "score_hi": hi,
        "n_eval": 200,
    }


def test_scores_are_read_against_no_fine_tuning_and_the_reference():
    rows = [
        _row("no fine-tuning", 0.30, 0.24, 0.36, kind="none"),
        _row("real", 0.45, 0.38, 0.52, kind="real", reference=True),
        _row("limited", 0.43, 0.37, 0.50, kind="limited"),
        _row("hh", 0.15, 0.10, 0.20),
        _row("ll", 0.12, 0.08, 0.17),
        _row("sym", 0.05, 0.02, 0.09),
    ]
    r = reading_scores(rows)
    assert r.startswith("Best: real 0.45 [0.38, 0.52] (n=200 examples per set).")
    assert "Three sets score below no fine-tuning (0.30) with non-overlapping intervals (hh, ll, sym)" in r
    assert "Two sets score above no fine-tuning (0.30) with non-overlapping intervals (real, limited)" in r
    assert "limited ≈ the reference real (intervals overlap)" in r
    assert "no conclusion" not in r
    # when every interval overlaps, say so instead of naming a winner's lead
    tight = [_row("a", 0.50, 0.1, 0.9, reference=True), _row("b", 0.4, 0.0, 0.8)]
    assert "every interval overlaps every other: no conclusion at this size" in reading_scores(tight)


def _corr(r, lo, hi, p, n=5):
    return {"n": n, "spearman": {"r": r, "lo": lo, "hi": hi, "p": p}, "pearson": {"r": r, "lo": lo, "hi": hi, "p": p}}


def test_correlation_readings_say_when_there_is_nothing_to_conclude():
    # recall constant across the sets (the demo): no correlation can be computed, and it says why
    assert reading_correlation(_corr(float("nan"), float("nan"), float("nan"), float("nan")), [0.9] * 5).startswith(
        "Head recall is the same for every training set (0.90), so it cannot explain their scores"
    )
    weak = reading_correlation(_corr(-0.45, -1.0, 0.97, 0.45), [0.1, 0.5, 0.7, 0.8, 0.9], "Cosine")
    assert weak.startswith("Cosine vs score: no conclusion at this size") and "p=0.450" in weak and "n=5 sets" in weak
    strong = reading_correlation(_corr(0.9, 0.6, 1.0, 0.037), [0.1, 0.5, 0.7, 0.8, 0.9])
    assert strong.startswith("Head recall correlates positively with score: Spearman 0.90 (p=0.037, 95% CI [0.60, 1.00])")


def test_heatmap_reading_covers_every_panel():
    def table(best):
        return pd.DataFrame([{"layer": l, "head": h, "mean": 1.0 if (l, h) == best else 0.1 * l} for l in range(3) for h in range(2)])

    r = reading_heads({"real": table((2, 1)), "hh": table((0, 0))}, k=2, reference="real")
    assert (
        "real: top-2 in layers 2–2, best 2-1 (1.00)" in r
        and "hh: top-2 in layers 0–2, best 0-0 (1.00), 1 of 2 shared with the reference" in r
    )


def _knockout(top_scores, random_scores):
    """A knockout summary and per-example rows: no knockout right on every example."""
    n = len(top_scores)
    conds = {"baseline": [1.0] * n, "top": top_scores, **{f"random_{i}": v for i, v in enumerate(random_scores)}}
    per = pd.DataFrame([{"condition": c, "id": f"e{i}", "task": "t", "score": v} for c, vs in conds.items() for i, v in enumerate(vs)])

    def cond(vs):
        m = sum(vs) / n
        return {"n_heads": 4, "tasks": {"t": {"n": n, "primary": "acc", "metrics": {"acc": {"mean": m, "lo": m - 0.1, "hi": m + 0.1}}}}}

    return {"n": n, "conditions": {c: cond(v) for c, v in conds.items()}}, per


def test_knockout_verdict_uses_paired_intervals_of_top_against_each_random_set():
    n = 40
    top = [0.0] * n
    hurt = [float(i % 2) for i in range(n)]  # a random set that also hurts, clearly
    summ, per = _knockout(top, [hurt, hurt, [1.0] * n])
    ko = knockout_view(summ, per, "t", n_boot=300)
    r = reading_knockout(ko)
    assert "2 of 3 random sets also hurt" in r and "top heads matter more than random heads" in r and "paired differences" in r
    assert ko["k"] == 4 and ko["n"] == n
    # top no worse than a random set that hurts as much: no conclusion
    summ, per = _knockout(hurt, [hurt, [1.0] * n])
    r = reading_knockout(knockout_view(summ, per, "t", n_boot=300))
    assert "top-4 scores below 1 of 2 random sets" in r and "no conclusion at this size" in r


def _patch_summary(conditions: dict[str, tuple[int | None, list[float]]], random_like="complement"):
    table, rows = [], []
    for c, (k, vs) in conditions.items():
        table.append({"task": "t", "condition": c, "n_heads": k, "recovered": None})
        rows += [{"condition": c, "id": f"e{i}", "task": "t", "score": v} for i, v in enumerate(vs)]
    return {"table": table, "config": {"random_like": random_like}}, pd.DataFrame(rows)


def test_patch_view_pairs_each_set_with_its_own_controls_and_flags_an_old_size_mismatch():
    n = 20
    src, tgt = (None, [1.0] * n), (None, [0.0] * n)
    inter = (16, [float(i % 5 != 0) for i in range(n)])  # recovers 0.8
    # an older result: one random set matched to the 4-head complement, controlling for 16 heads
    summ, per = _patch_summary(
        {"source": src, "target": tgt, "intersection": inter, "complement": (4, [0.0] * n), "random_0": (4, [0.0] * n)}
    )
    kinds = {k["kind"]: k for k in patch_view(summ, per, n_boot=300)}
    assert kinds["intersection"]["recovered"] == 0.8 and kinds["intersection"]["lo"] < 0.8 < kinds["intersection"]["hi"]
    assert "control" not in kinds["intersection"] and kinds["complement"]["control"]["size_matched"]
    assert "intersection (16 heads) recovers 0.80 [" in reading_patch(list(kinds.values()))
    assert "(no size-matched random control)" in reading_patch(list(kinds.values()))
    # the new layout: a control per set, several seeds, pooled
    conds = {
        "source": src,
        "target": tgt,
        "intersection": inter,
        **{f"random_intersection_{s}": (16, [float(i == s) for i in range(n)]) for s in range(3)},
    }
    summ, per = _patch_summary(conds, "each")
    (k,) = patch_view(summ, per, n_boot=300)
    assert k["control"] == {
        "n_heads": 16,
        "n_seeds": 3,
        "recovered": 0.05,
        "lo": k["control"]["lo"],
        "hi": k["control"]["hi"],
        "size_matched": True,
    }
    assert "its random controls (16 heads, 3 seeds) 0.05 [" in reading_patch([k]) and ": more than chance" in reading_patch([k])
    # no gap between source and target: nothing to recover, no conclusion
    summ, per = _patch_summary({"source": tgt, "target": tgt, "intersection": inter})
    assert "no gap to recover: no conclusion at this size" in reading_patch(patch_view(summ, per))


def _pred(criterion, r, lo, hi, p=0.01, n=7, best=False):
    return {"criterion": criterion, "n": n, "spearman": {"r": r, "lo": lo, "hi": hi, "p": p}, "best": best}


def _crit(preds, clear, overlapping=(), n=7):
    best = next((p["criterion"] for p in preds if p["best"]), None)
    return {"predictors": preds, "best": best, "clear": clear, "overlapping": list(overlapping), "n": n}


def test_the_best_criterion_is_named_only_when_the_intervals_say_so():
    clear = _crit([_pred("query", 0.9, 0.7, 1.0, best=True), _pred("retrieval", 0.2, -0.4, 0.6)], clear=True)
    r = reading_criteria(clear)
    assert r.startswith("Recall of the query heads has the highest Spearman correlation with the score, 0.90 [0.70, 1.00] (p=0.010")
    assert "its interval lies above every other criterion's, so query recall predicts the score best at this size" in r
    assert "(below it: retrieval 0.20 [-0.40, 0.60])" in r and "no conclusion" not in r
    overlap = _crit([_pred("query", 0.9, 0.5, 1.0, best=True), _pred("output", 0.7, 0.1, 0.95)], clear=False, overlapping=["output"])
    r = reading_criteria(overlap)
    assert "but its interval overlaps those of output 0.70 [0.10, 0.95]: no conclusion at this size about which criterion" in r
    weak = _crit([_pred("mass", 0.5, 0.1, 0.8, p=0.2, best=True), _pred("query", -0.6, -0.9, 0.0)], clear=True)
    assert "its own interval includes 0 or p ≥ 0.05: no conclusion at this size that it predicts the score" in reading_criteria(weak)
    few = _crit([_pred("query", 1.0, float("nan"), float("nan"), n=2, best=True)], clear=False, n=2)
    assert reading_criteria(few) == "Too few training sets with distinct recall to rank the criteria (n=2 sets): " + NO_CONCLUSION + "."


def test_the_agreement_reading_names_the_closest_and_farthest_criteria():
    a = {"criteria": ["retrieval", "query", "output"], "jaccard": [[1, 0.5, 0], [0.5, 1, 0.2], [0, 0.2, 1]]}
    a["shared"] = [[3, 2, 0], [2, 3, 1], [0, 1, 3]]
    r = reading_agreement(a, "top-3 heads")
    assert r == (
        "The reference model's head sets (top-3 heads) agree most between retrieval and query (Jaccard 0.50, 2 heads shared) "
        "and least between retrieval and output (Jaccard 0.00, 0 heads shared)."
    )
    two = {"criteria": ["retrieval", "output"], "jaccard": [[1, 0.25], [0.25, 1]], "shared": [[2, 1], [1, 3]]}
    assert reading_agreement(two, "heads above 0.1") == (
        "The reference model's head sets (heads above 0.1) overlap between retrieval and output (Jaccard 0.25, 1 head shared)."
    )
    apart = {"criteria": ["a", "b"], "jaccard": [[1, 0.0], [0.0, 1]], "shared": [[3, 0], [0, 3]]}
    assert reading_agreement(apart, "top-3 heads") == "No two criteria share a head of the reference model's head sets (top-3 heads)."
