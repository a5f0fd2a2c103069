"""Across the training sets of one task: does the overlap of retrieval heads with the reference
model predict the downstream score? (SPEC §2 "Prediction".)

`compare_heads` compares two models' head scores on the same examples (cosine, Spearman, head-set
recall/precision/Jaccard, with bootstrap intervals over examples, by `needlework.heads.compare`); `correlate` gives Spearman and
Pearson correlations of recall (and cosine) with score across training sets, with n and bootstrap
intervals over sets; `leave_one_out` predicts each set's score from its recall by a linear fit on
the others. n is small (a handful of training sets), so the intervals are wide: they are reported,
not hidden.

Early prediction: `early_prediction` predicts each set's final score from its recall at a fraction
of training (leave-one-out, as above) and finds the earliest fraction whose predictions rank the
sets as their final scores do; `stop_decisions` is the stop_early rule (a set stops when its
recall interval lies wholly below the best set's).

Head criteria (`score.criteria`): `criteria_analysis` correlates each criterion's head recall with
the score across the same sets (`rank_predictors`: criteria ranked by Spearman rho, a best named
only when its interval clears every other's) and measures how far the criteria pick the same heads
in the reference model (`reference_head_sets`, `agreement`: Jaccard of the head sets).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

METRICS = ("recall", "precision", "jaccard", "cosine", "spearman")


# ----------------------------------------------------------------------------------- head comparison


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(spearmanr(a, b).statistic)


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def compare_heads(
    a,
    ref,
    rule: str = "top_k",
    k: int = 10,
    threshold: float = 0.1,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> dict[str, Any]:
    """Compare a model's head scores with the reference model's on the same evaluation examples,
    through `needlework.heads.compare` (the statistics and bootstrap `needlework heads compare` uses).

    Args:
        a, ref: the two models' `HeadScores` (their meta's shapes must agree); with per-example
            scores in both, intervals resample examples (paired when both kept the same examples).
        rule, k, threshold: the head-set rule (SPEC §2).
    Returns:
        {metric: {mean, lo, hi}} for recall, precision, jaccard, cosine, spearman, plus `n_heads`
        (the set size of the model) and `n_heads_ref`, `n_above_threshold` and `n_examples`.
    """
    from needlework.errors import NeedleworkError
    from needlework.heads.compare import CompareConfig, compare, load_scores
    from needlework.models.sites import rank_mask

    if a.shape != ref.shape:
        raise NeedleworkError(
            f"head scores of two model shapes compared: {a.shape} vs the reference's {ref.shape}",
            "compare models of one architecture (adapters of the same base)",
        )
    a, b = load_scores(a), load_scores(ref)
    cfg = CompareConfig(top=k if rule == "top_k" else None, threshold=threshold, n_boot=n_boot, alpha=alpha, seed=seed)
    df = compare(a, b, cfg).set_index("stat")
    out: dict[str, Any] = {m: {"mean": float(df.at[m, "value"]), "lo": float(df.at[m, "lo"]), "hi": float(df.at[m, "hi"])} for m in METRICS}
    out["n_heads"] = int(df.at["n_a", "value"])
    out["n_heads_ref"] = int(df.at["n_b", "value"])
    out["n_above_threshold"] = int(rank_mask(a.means, None, threshold).sum())  # the rule of every head set
    out["n_examples"] = len(set(a.example_ids) & set(b.example_ids)) if a.per_example is not None and b.per_example is not None else 0
    return out


# ----------------------------------------------------------------------------------- across training sets


def _ci_over_sets(x: np.ndarray, y: np.ndarray, fn, n_boot: int, alpha: float, seed: int) -> tuple[float, float]:
    """Percentile interval of fn(x, y) over resampled training sets (degenerate resamples dropped)."""
    n = len(x)
    if n < 3:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(n_boot):
        idx = rng.integers(0, n, n)
        v = fn(x[idx], y[idx])
        if math.isfinite(v):
            vals.append(v)
    if len(vals) < max(10, n_boot // 20):
        return float("nan"), float("nan")
    lo, hi = np.quantile(vals, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


EXACT_P_MAX_N = 8  # up to 8! = 40,320 pairings: the exact permutation p-value is cheap


def exact_p(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided permutation p-value of Pearson's r of a and b (Spearman's: pass ranks) over all n!
    pairings: the share of pairings whose |r| reaches the observed one. Exact where scipy's t
    approximation is not: for 4 sets ranked alike it says p = 0, the exact p is 2/24. Ties of |r|
    are counted within 16 n float64 roundings (two orders of the same n-term sums)."""
    import itertools

    n = len(a)
    a0, b0 = a - a.mean(), b - b.mean()
    denom = math.sqrt(float((a0**2).sum() * (b0**2).sum()))
    perms = np.array(list(itertools.permutations(range(n))))
    r = (b0[perms] @ a0) / denom
    observed = float(a0 @ b0) / denom
    return float(np.mean(np.abs(r) >= abs(observed) - 16 * n * np.finfo(float).eps))


def _p_value(x: np.ndarray, y: np.ndarray, name: str) -> float:
    """p of no correlation: exact over every pairing for n <= EXACT_P_MAX_N, else scipy's test."""
    from scipy.stats import pearsonr, rankdata, spearmanr

    if len(x) <= EXACT_P_MAX_N:
        return exact_p(rankdata(x), rankdata(y)) if name == "spearman" else exact_p(x, y)
    return float((spearmanr if name == "spearman" else pearsonr)(x, y).pvalue)


def correlate(x, y, n_boot: int = 1000, alpha: float = 0.05, seed: int = 0) -> dict[str, Any]:
    """Spearman and Pearson correlation of x with y with n, p-values (exact permutation p for up to
    EXACT_P_MAX_N sets, the usual case: a study has a handful of training sets) and bootstrap intervals."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    out: dict[str, Any] = {"n": int(len(x))}
    for name, fn in (("spearman", _spearman), ("pearson", _pearson)):
        r = fn(x, y) if len(x) >= 2 else float("nan")
        p = _p_value(x, y, name) if len(x) >= 3 and math.isfinite(r) else float("nan")
        lo, hi = _ci_over_sets(x, y, fn, n_boot, alpha, seed)
        out[name] = {"r": r, "p": p, "lo": lo, "hi": hi}
    return out


def leave_one_out(names: list[str], x, y) -> dict[str, Any]:
    """Predict each set's score from its recall by a least-squares line fitted on the other sets."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    rows = []
    for i, name in enumerate(names):
        rest = [j for j in range(len(x)) if j != i and math.isfinite(x[j]) and math.isfinite(y[j])]
        if len(rest) < 2 or np.ptp(x[rest]) == 0 or not math.isfinite(x[i]):
            pred = float(np.mean(y[rest])) if rest else float("nan")
        else:
            slope, icpt = np.polyfit(x[rest], y[rest], 1)
            pred = float(slope * x[i] + icpt)
        rows.append({"set": name, "x": float(x[i]), "actual": float(y[i]), "predicted": pred, "error": pred - float(y[i])})
    errs = [abs(r["error"]) for r in rows if math.isfinite(r["error"])]
    return {"rows": rows, "mae": float(np.mean(errs)) if errs else float("nan")}


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def early_prediction(
    names: list[str], final: dict[str, float], recall_at: dict[float, dict[str, float | None]], agreement: float = 0.8
) -> dict[str, Any]:
    """Per fraction of training, predict each set's FINAL score from its recall AT that fraction by
    a line fitted on the other sets (`leave_one_out`), and rank-correlate predictions with finals.

    Args:
        names: the sets predicted (those of the correlations: no reference, no base model, no set
            stopped early, whose final score is not a final score).
        final: set -> final score. recall_at: fraction -> set -> recall there (None: no probe).
        agreement: the Spearman correlation of predicted with final scores that counts as the same ranking.
    Returns:
        {`per_fraction`: [{fraction, n, spearman, mae, rows: leave_one_out rows}], `earliest`: the
        first fraction with spearman >= agreement (None when there is none), `agreement`}.
        Spearman needs 3 sets; with fewer it is NaN and no fraction qualifies.
    """
    per = []
    for f in sorted(recall_at):
        use = [n for n in names if _finite(recall_at[f].get(n)) and _finite(final.get(n))]
        loo = leave_one_out(use, [recall_at[f][n] for n in use], [final[n] for n in use])
        pred = np.array([r["predicted"] for r in loo["rows"]], float)
        actual = np.array([r["actual"] for r in loo["rows"]], float)
        rho = _spearman(pred, actual) if len(use) >= 3 and np.isfinite(pred).all() else float("nan")
        per.append({"fraction": f, "n": len(use), "spearman": rho, "mae": loo["mae"], "rows": loo["rows"]})
    earliest = next((p["fraction"] for p in per if _finite(p["spearman"]) and p["spearman"] >= agreement - 1e-9), None)
    return {"per_fraction": per, "earliest": earliest, "agreement": agreement}


def stop_decisions(rows: list[dict[str, Any]], stopped: dict[str, float], fraction: float, margin: float = 0.0) -> dict[str, Any]:
    """The stop_early rule at one fraction of training: among the sets still training, the best is
    the one with the highest recall (the first of equals); every other set whose recall interval's
    upper bound lies more than `margin` below the best set's lower bound stops here. Overlapping
    intervals, or a set or best without an interval (no per-example scores, n_boot 0), never stop.

    Args:
        rows: {set, recall, lo, hi} per gated set (None where its probe has no statistics).
        stopped: sets stopped by earlier gates -> the fraction they stopped at (they stay stopped).
    Returns:
        {`rows`: each with `decision` (continue | stop | stopped before) and `stopped_at`, `best`,
        `bar` (the best's lower bound minus the margin, None without one), `stopped` (all stopped so far)}.
    """
    running = [r for r in rows if r["set"] not in stopped and _finite(r["recall"])]
    best = max(running, key=lambda r: r["recall"], default=None)
    bar = best["lo"] - margin if best is not None and _finite(best["lo"]) else None
    now = dict(stopped)
    out = []
    for r in rows:
        if r["set"] in stopped:
            decision = "stopped before"
        elif bar is not None and r is not best and _finite(r["hi"]) and r["hi"] < bar:
            decision, now[r["set"]] = "stop", fraction
        else:
            decision = "continue"
        out.append({**r, "decision": decision, "stopped_at": now.get(r["set"])})
    return {"rows": out, "best": best["set"] if best is not None else None, "bar": bar, "stopped": now}


def analyze(
    rows: list[dict[str, Any]], reference: str, include_reference: bool = False, n_boot: int = 1000, alpha: float = 0.05, seed: int = 0
) -> dict[str, Any]:
    """Correlations and leave-one-out prediction across a task's training sets.

    Args:
        rows: one per training set with `set`, `kind`, `score`, `recall`, `cosine` (and `stopped_at`).
        reference: the reference set (left out unless `include_reference`; kind `none` is always left
            out, and so is a set that stop_early stopped: its score is not a final score).
    Returns:
        {`n`, `sets`, `recall_vs_score`, `cosine_vs_score` (correlate()), `loo` (leave_one_out on recall),
        `fit` (slope, intercept of score ~ recall over all used sets)}.
    """
    used = [r for r in rows if r["kind"] != "none" and r.get("stopped_at") is None and (include_reference or r["set"] != reference)]
    names = [r["set"] for r in used]
    score = np.array([r["score"] for r in used], float)
    out: dict[str, Any] = {"n": len(used), "sets": names}
    for m in ("recall", "cosine"):
        out[f"{m}_vs_score"] = correlate([r[m] for r in used], score, n_boot, alpha, seed)
    recall = np.array([r["recall"] for r in used], float)
    out["loo"] = leave_one_out(names, recall, score)
    ok = np.isfinite(recall) & np.isfinite(score)
    if ok.sum() >= 2 and np.ptp(recall[ok]) > 0:
        slope, icpt = np.polyfit(recall[ok], score[ok], 1)
        out["fit"] = {"slope": float(slope), "intercept": float(icpt)}
    else:
        out["fit"] = None
    return out


# ----------------------------------------------------------------------------------- head criteria


def reference_head_sets(ref, criteria: list[str], rule: str, k: int, threshold: float) -> dict[str, list[str]]:
    """The reference model's head set under each criterion by the study's head rule, through the one
    selection every stage uses (`heads.compare.Scores.select`, i.e. `models.sites.select_heads`).

    Args:
        ref: the reference model's HeadScores holding every criterion of `criteria`.
    Returns:
        criterion -> its heads as sorted "L-H" names.
    """
    from needlework.heads.compare import load_scores
    from needlework.study.config import HeadsSpec

    sel = HeadsSpec(rule=rule, top=k, threshold=threshold).selection()
    return {c: [str(h) for h in sorted(load_scores(ref, c).select(**sel))] for c in criteria}


def agreement(sets: dict[str, list[str]]) -> dict[str, Any]:
    """How far head sets agree, pairwise: `jaccard` |A ∩ B| / |A ∪ B| (NaN when both are empty) and
    `shared` |A ∩ B|, as matrices in the order of `criteria`, with each set's size `n_heads`."""
    names = list(sets)
    hs = {c: set(v) for c, v in sets.items()}
    jac = [[len(hs[a] & hs[b]) / len(hs[a] | hs[b]) if hs[a] | hs[b] else float("nan") for b in names] for a in names]
    shared = [[len(hs[a] & hs[b]) for b in names] for a in names]
    return {"criteria": names, "n_heads": [len(hs[c]) for c in names], "shared": shared, "jaccard": jac}


def rank_predictors(recall: dict[str, list[float]], score: list[float], n_boot: int = 1000, alpha: float = 0.05, seed: int = 0) -> dict:
    """Which criterion's head recall predicts the score best across training sets.

    Args:
        recall: criterion -> each set's recall under it (NaN: none), in the order of `score`.
    Returns:
        {`predictors`: per criterion {criterion, n, spearman, pearson (correlate()), best}, ranked by
        Spearman rho (undefined last); `best`: the highest rho (None when none is defined); `clear`:
        whether the best's interval lies wholly above the interval of every other criterion with a
        rho (`overlapping` names those whose interval reaches it: then no single best can be named)}.
    """
    rows = [{"criterion": c, **correlate(x, score, n_boot, alpha, seed)} for c, x in recall.items()]
    ranked = sorted(rows, key=lambda r: -r["spearman"]["r"] if _finite(r["spearman"]["r"]) else math.inf)
    best = ranked[0] if ranked and _finite(ranked[0]["spearman"]["r"]) else None
    overlapping = []
    for r in ranked:
        r["best"] = r is best
        if best is not None and r is not best and _finite(r["spearman"]["r"]):
            apart = _finite(best["spearman"]["lo"]) and _finite(r["spearman"]["hi"]) and r["spearman"]["hi"] < best["spearman"]["lo"]
            if not apart:
                overlapping.append(r["criterion"])
    clear = best is not None and _finite(best["spearman"]["lo"]) and not overlapping
    return {"predictors": ranked, "best": best["criterion"] if best else None, "clear": clear, "overlapping": overlapping}


def criteria_analysis(
    criteria: list[str],
    recall: dict[str, dict[str, dict]],
    score: dict[str, float],
    used: list[str],
    ref_sets: dict[str, list[str]],
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> dict[str, Any]:
    """Head criteria across a task's training sets.

    Args:
        criteria: the criteria scored (the primary first).
        recall: set -> criterion -> {mean, lo, hi}: the set's recall of the reference's heads under
            that criterion (its comparison with the reference).
        score: set -> downstream score. used: the sets the correlations use (`analyze`'s `sets`).
        ref_sets: criterion -> the reference model's head set (`reference_head_sets`).
    Returns:
        {`criteria`, `recall` (as given), `n` (sets used), `rank_predictors`' keys, `head_sets`
        (ref_sets), `agreement` (`agreement(ref_sets)`)}.
    """
    nan = float("nan")
    x = {c: [recall.get(n, {}).get(c, {}).get("mean", nan) for n in used] for c in criteria}
    x = {c: [nan if v is None else v for v in vals] for c, vals in x.items()}
    pred = rank_predictors(x, [score[n] for n in used], n_boot, alpha, seed)
    return {"criteria": list(criteria), "recall": recall, "n": len(used), **pred, "head_sets": ref_sets, "agreement": agreement(ref_sets)}
