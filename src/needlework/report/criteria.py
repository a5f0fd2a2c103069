"""The report's head-criteria section, from an Analysis artifact's `criteria` entry (a study that
scored several criteria, `score.criteria`): which criterion's head recall predicts the score best
(a ranked table with intervals, the best marked), each set's recall under every criterion, and the
agreement of the reference model's head sets between criteria (a Jaccard matrix), with readings
written from the intervals (`report.readings`)."""

from __future__ import annotations

from needlework.report.html import ci, fmt, table_block, tag
from needlework.report.readings import reading_agreement, reading_criteria

__all__ = ["criteria_section", "rule_text"]


def rule_text(rule: dict) -> str:
    """The head rule in words: `top-10 heads` or `heads above 0.1`."""
    return f"top-{rule['top']} heads" if rule["rule"] == "top_k" else f"heads above {fmt(rule['threshold'])}"


def _predictor_table(c: dict) -> dict:
    rows, best = [], set()
    for i, p in enumerate(c["predictors"]):
        s, r = p["spearman"], p["pearson"]
        marks = [m for m, on in (("best", p["best"]), ("main", p["criterion"] == c["main"])) if on]
        name = p["criterion"] + (f" ({', '.join(marks)})" if marks else "")
        rows.append([name, str(p["n"]), ci(s["r"], s["lo"], s["hi"]), fmt(s.get("p"), 3), ci(r["r"], r["lo"], r["hi"]), fmt(r.get("p"), 3)])
        if p["best"]:
            best.add(i)
    cap = "Correlation across training sets of each criterion's head recall (the share of the reference model's heads under that "
    cap += "criterion that the set's model also has) with the score; ranked by Spearman ρ; CI: bootstrap over training sets; "
    cap += "p: two-sided test of no correlation. Best: the highest ρ (a reading names it only when its interval clears the others')."
    headers = ["criterion", "n sets", "Spearman ρ [95% CI]", "p", "Pearson r [95% CI]", "p"]
    return table_block(headers, rows, n_left=1, ref_rows=best, caption=cap, id=f"criteria-best-{c['tag']}")


def _recall_table(c: dict, an: dict) -> dict:
    rows, refs = [], set()
    for r in an["rows"]:
        held = c["recall"].get(r["set"], {})
        if r["reference"]:
            refs.add(len(rows))
        label = r["label"] + (" (reference)" if r["reference"] else "")
        rows.append([label] + [ci(held[k]["mean"], held[k]["lo"], held[k]["hi"]) if k in held else "–" for k in c["criteria"]])
    cap = "Recall of the reference model's heads per training set and criterion, 95% bootstrap intervals over examples."
    return table_block(["training set", *c["criteria"]], rows, n_left=1, ref_rows=refs, caption=cap)


def _agreement_table(c: dict) -> dict:
    a = c["agreement"]
    names = a["criteria"]
    rows = []
    for i, x in enumerate(names):
        cells = [f"{a['n_heads'][i]} heads" if i == j else f"{fmt(a['jaccard'][i][j])} ({a['shared'][i][j]})" for j in range(len(names))]
        rows.append([x, *cells])
    cap = f"Jaccard overlap |A ∩ B| / |A ∪ B| of the reference model's head sets ({rule_text(c['rule'])} per criterion), "
    cap += "heads shared in brackets; the diagonal gives each set's size."
    return table_block(["", *names], rows, n_left=1, caption=cap, id=f"criteria-agreement-{c['tag']}")


def criteria_section(an: dict) -> dict | None:
    """The head-criteria section of one (model, task) analysis (None when it scored one criterion)."""
    c = an.get("criteria")
    if not c:
        return None
    m, task = an["model"], an["task"]
    c = {**c, "tag": tag(m, task)}
    intro = (
        f"Heads scored by {len(c['criteria'])} criteria ({', '.join(c['criteria'])}) on the same evaluation examples. "
        f"The main criterion is {c['main']}: its head sets are the ones the tables above compare and that knockout and "
        "patching use. For each criterion, every training set's model is compared with the reference model under it, "
        "by the same rule and statistics."
    )
    blocks = [
        {"kind": "text", "text": intro},
        _predictor_table(c),
        {"kind": "reading", "text": reading_criteria(c)},
        _recall_table(c, an),
        _agreement_table(c),
        {"kind": "reading", "text": reading_agreement(c["agreement"], rule_text(c["rule"]))},
    ]
    return {"id": f"criteria-{c['tag']}", "title": f"{m} · {task}: head criteria", "blocks": blocks}
