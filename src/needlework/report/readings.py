"""The one-line readings under the report's figures, written from the numbers AND their intervals:
a difference is claimed only when the 95% intervals say so, and "no conclusion at this size" is
written when they do not, so that a reader of a small study is not handed a trend that is noise.
"""

from __future__ import annotations

from typing import Any

from needlework.report.html import finite, fmt

__all__ = [
    "NO_CONCLUSION",
    "compare_interval",
    "reading_agreement",
    "reading_correlation",
    "reading_criteria",
    "reading_depth",
    "reading_heads",
    "reading_knockout",
    "reading_patch",
    "reading_scores",
]

NO_CONCLUSION = "no conclusion at this size"


def compare_interval(a: dict, b: dict) -> str:
    """`above` / `below` when a's interval lies wholly above / below b's, `overlap` otherwise
    (also when either has no interval: nothing separates them then)."""
    if not all(finite(x) for x in (a.get("lo"), a.get("hi"), b.get("lo"), b.get("hi"))):
        return "overlap"
    if a["lo"] > b["hi"]:
        return "above"
    if a["hi"] < b["lo"]:
        return "below"
    return "overlap"


def _iv(r: dict) -> dict:
    return {"mean": r["score"], "lo": r["score_lo"], "hi": r["score_hi"]}


def _count(n: int) -> str:
    words = ["no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]
    return words[n] if n < len(words) else str(n)


def _against(rows: list[dict], other: dict, name: str) -> list[str]:
    """Sentences on every set against `other`: which lie wholly above/below it, which overlap."""
    groups: dict[str, list[str]] = {"above": [], "below": [], "overlap": []}
    for r in rows:
        if r is not other and finite(r["score"]):
            groups[compare_interval(_iv(r), _iv(other))].append(r["label"])
    out = []
    for side in ("below", "above"):
        s = groups[side]
        if s:
            verb = "set scores" if len(s) == 1 else "sets score"
            out.append(f"{_count(len(s)).capitalize()} {verb} {side} {name} with non-overlapping intervals ({', '.join(s)})")
    if groups["overlap"]:
        out.append(f"{', '.join(groups['overlap'])} ≈ {name} (intervals overlap)")
    return out


def reading_scores(rows: list[dict]) -> str:
    """Best set; every set against no fine-tuning and against the reference, by interval."""
    fin = [r for r in rows if finite(r["score"])]
    if not fin:
        return "No scores yet."
    best = max(fin, key=lambda r: r["score"])
    n = max((r.get("n_eval") or 0 for r in fin), default=0)
    parts = [f"Best: {best['label']} {fmt(best['score'])} [{fmt(best['score_lo'])}, {fmt(best['score_hi'])}] (n={n} examples per set)"]
    base = next((r for r in fin if r["kind"] == "none"), None)
    ref = next((r for r in fin if r["reference"]), None)
    tuned = [r for r in fin if r["kind"] != "none"]
    if base is not None:
        parts += _against(tuned, base, f"no fine-tuning ({fmt(base['score'])})")
    if ref is not None:
        parts += _against([r for r in tuned if r is not ref], ref, f"the reference {ref['label']}")
    if all(compare_interval(_iv(r), _iv(o)) == "overlap" for r in fin for o in fin):
        parts.append(f"every interval overlaps every other: {NO_CONCLUSION} about which set trains best")
    return ". ".join(parts) + "."


def reading_correlation(c: dict, values: list[float], what: str = "Head recall") -> str:
    """Correlation of a head statistic with score across sets, with p-value and interval; says
    so when the statistic is constant across sets or when nothing excludes no correlation."""
    vals = [v for v in values if finite(v)]
    if len(vals) >= 2 and max(vals) - min(vals) < 1e-9:
        return f"{what} is the same for every training set ({fmt(vals[0])}), so it cannot explain their scores: nothing to correlate."
    s, p = c["spearman"], c["pearson"]
    if c["n"] < 3 or not finite(s["r"]):
        return f"{what}: too few training sets with distinct values to correlate (n={c['n']})."
    ci = f"95% CI [{fmt(s['lo'])}, {fmt(s['hi'])}]" if finite(s["lo"]) else "no interval"
    nums = f"Spearman {fmt(s['r'])} (p={fmt(s.get('p'), 3)}, {ci}), Pearson {fmt(p['r'])} (p={fmt(p.get('p'), 3)}), n={c['n']} sets"
    sure = finite(s["lo"]) and (s["lo"] > 0 or s["hi"] < 0) and finite(s.get("p")) and s["p"] < 0.05
    if sure:
        return f"{what} correlates {'positively' if s['r'] > 0 else 'negatively'} with score: {nums}."
    return f"{what} vs score: {NO_CONCLUSION} (the interval includes 0 or p ≥ 0.05): {nums}."


def reading_heads(tables: dict[str, Any], k: int, reference: str | None = None) -> str:
    """Every panel: where its top-k heads lie, its best head, and its overlap with the reference's."""
    tops = {name: t.sort_values("mean", ascending=False).head(k) for name, t in tables.items()}
    ref = {(int(a), int(b)) for a, b in zip(tops[reference]["layer"], tops[reference]["head"])} if reference in tops else None
    parts = []
    for name, top in tops.items():
        if top.empty:
            continue
        layers = sorted(top["layer"].astype(int).tolist())
        best = top.iloc[0]
        where = f"best {int(best['layer'])}-{int(best['head'])} ({fmt(float(best['mean']))})"
        s = f"{name}: top-{k} in layers {layers[0]}–{layers[-1]}, {where}"
        if ref is not None and name != reference:
            shared = len(ref & {(int(a), int(b)) for a, b in zip(top["layer"], top["head"])})
            s += f", {shared} of {len(ref)} shared with the reference"
        parts.append(s)
    return "; ".join(parts) + "." if parts else "No head scores yet."


def reading_knockout(ko: dict) -> str:
    """The knockout verdict from intervals: top-k against each random set (paired differences when
    per-example scores are there, else non-overlap), and whether the random sets hurt too."""
    top, rnd = ko["top"], ko["random"]
    head = (
        f"{ko['metric']}: none {fmt(ko['baseline']['mean'])}, top-{ko['k']} knocked out {fmt(top['mean'])} "
        f"(Δ {fmt(top['delta']['mean'])} [{fmt(top['delta']['lo'])}, {fmt(top['delta']['hi'])}])"
    )
    hurt = [r for r in rnd if r["delta"]["hurts"]]
    worse = [r for r in rnd if r["vs_top"] == "top lower"]
    parts = [head, f"{len(hurt)} of {len(rnd)} random sets also hurt (Δ below 0 by its interval)"]
    top_hurts = top["delta"]["hurts"]
    if rnd and len(worse) == len(rnd) and top_hurts:
        parts.append(f"top heads matter more than random heads: top-{ko['k']} scores below every random set ({ko['how']})")
    elif worse and top_hurts:
        parts.append(
            f"top-{ko['k']} scores below {len(worse)} of {len(rnd)} random sets ({ko['how']}): {NO_CONCLUSION} that top heads matter more"
        )
    else:
        parts.append(f"{NO_CONCLUSION}: top-{ko['k']} does not score below the random sets ({ko['how']})")
    return "; ".join(parts) + "."


def _heads(n: Any) -> str:
    return f"{n} head" if n == 1 else f"{n} heads"


def reading_patch(kinds: list[dict]) -> str:
    """Per head-set kind: its gap recovered against its own size-matched random controls."""
    if not kinds:
        return "No patching results."
    if all(not finite(k["recovered"]) for k in kinds):
        return "Source and target score alike here, so there is no gap to recover: " + NO_CONCLUSION + "."
    parts = []
    for k in kinds:
        s = f"{k['kind']} ({_heads(k['n_heads'])}) recovers {fmt(k['recovered'])} [{fmt(k['lo'])}, {fmt(k['hi'])}] of the gap"
        ctl = k.get("control")
        if ctl is None:
            s += " (no size-matched random control)"
        else:
            s += f"; its random controls ({_heads(ctl['n_heads'])}, {ctl['n_seeds']} seeds) {fmt(ctl['recovered'])}"
            if finite(ctl.get("lo")):
                s += f" [{fmt(ctl['lo'])}, {fmt(ctl['hi'])}]"
            side = compare_interval({"lo": k["lo"], "hi": k["hi"]}, {"lo": ctl.get("lo"), "hi": ctl.get("hi")})
            s += ": more than chance" if side == "above" else ": less than chance" if side == "below" else f": {NO_CONCLUSION}"
        parts.append(s)
    return "; ".join(parts) + " (1 = the whole source-target gap)."


def reading_depth(bins: list[dict]) -> str:
    """Pooled over sets: is accuracy lower in the middle than at both ends, by interval?"""
    use = [b for b in bins if b["n"] > 0]
    if len(use) < 3:
        return f"Too few depth bins with examples ({len(use)}): {NO_CONCLUSION}."
    first, last = use[0], use[-1]
    mid = min(use[1:-1], key=lambda b: b["acc"])
    nums = ", ".join(f"{b['bin']} {fmt(b['acc'])} [{fmt(b['lo'])}, {fmt(b['hi'])}] (n={b['n']})" for b in use)
    nums += " (each example once, its score averaged over the sets)"
    lost = compare_interval(mid, first) == "below" and compare_interval(mid, last) == "below"
    if lost:
        return f"Lost in the middle: accuracy at depth {mid['bin']} lies below both ends: {nums}."
    return f"Accuracy by needle depth: {nums}; the intervals overlap: {NO_CONCLUSION} about a depth effect."


def _rho(s: dict) -> str:
    return f"{fmt(s['r'])} [{fmt(s['lo'])}, {fmt(s['hi'])}]" if finite(s.get("lo")) else f"{fmt(s['r'])} (no interval)"


def reading_criteria(c: dict) -> str:
    """Which criterion's head recall predicts the score best across training sets, by interval: a
    best is named only when its Spearman interval lies above every other criterion's, and it is
    said to predict the score only when its own interval excludes 0 with p < 0.05."""
    preds = {p["criterion"]: p for p in c["predictors"]}
    best = c["best"]
    if best is None or preds[best]["n"] < 3:
        return f"Too few training sets with distinct recall to rank the criteria (n={c['n']} sets): {NO_CONCLUSION}."
    b = preds[best]["spearman"]
    n = preds[best]["n"]
    sure = finite(b.get("lo")) and b["lo"] > 0 and finite(b.get("p")) and b["p"] < 0.05
    head = f"Recall of the {best} heads has the highest Spearman correlation with the score, {_rho(b)} (p={fmt(b.get('p'), 3)}, n={n} sets)"
    others = [p for p in c["predictors"] if p["criterion"] != best]
    if not finite(b.get("lo")):
        tail = f", without an interval: {NO_CONCLUSION} about which criterion predicts best"
    elif c["clear"] and sure:
        tail = f"; its interval lies above every other criterion's, so {best} recall predicts the score best at this size"
    elif c["clear"]:
        tail = f"; it lies above the others, but its own interval includes 0 or p ≥ 0.05: {NO_CONCLUSION} that it predicts the score"
    else:
        near = "; ".join(f"{o} {_rho(preds[o]['spearman'])}" for o in c["overlapping"]) or "no interval to compare"
        tail = f", but its interval overlaps those of {near}: {NO_CONCLUSION} about which criterion predicts best"
    rest = [p for p in others if p["criterion"] not in c["overlapping"]]
    if rest:
        tail += " (below it: " + "; ".join(f"{p['criterion']} {_rho(p['spearman'])}" for p in rest) + ")"
    return head + tail + "."


def reading_agreement(agreement: dict, rule: str) -> str:
    """How far the criteria pick the same heads in the reference model: the most and least
    agreeing pairs by Jaccard overlap of their head sets."""
    names, jac, shared = agreement["criteria"], agreement["jaccard"], agreement["shared"]
    pairs = [(jac[i][j], shared[i][j], names[i], names[j]) for i in range(len(names)) for j in range(i + 1, len(names))]
    pairs = [p for p in pairs if finite(p[0])]
    if not pairs:
        return "No head set to compare between the criteria."
    hi, lo = max(pairs, key=lambda p: p[0]), min(pairs, key=lambda p: p[0])
    if hi[0] == 0:
        return f"No two criteria share a head of the reference model's head sets ({rule})."

    def pair(p) -> str:
        return f"{p[2]} and {p[3]} (Jaccard {fmt(p[0])}, {_heads(p[1])} shared)"

    if len(pairs) == 1:
        return f"The reference model's head sets ({rule}) overlap between {pair(hi)}."
    return f"The reference model's head sets ({rule}) agree most between {pair(hi)} and least between {pair(lo)}."
