"""The report's early-prediction section, from an Analysis artifact's `early` entry: recall of the
reference's heads vs training progress per set (a figure), each set's final score as predicted
from its recall at each fraction against the final score (a table), the earliest fraction whose
predicted ranking of the sets matches the final one, the stop_early gates' decisions, and the
measured monitoring cost against its budget."""

from __future__ import annotations

from pathlib import Path

from needlework.report.html import finite, fmt, pyplot, save_png

__all__ = ["early_parts", "fig_recall_curves", "pct", "reading_cost", "reading_earliest", "reading_gates"]


def pct(fraction: float) -> str:
    return f"{100 * fraction:g}%"


def fig_recall_curves(early: dict, reference: str, title: str, path: Path) -> str:
    """One line per training set (band: its 95% interval); an x where stop_early stopped a set; a
    dashed line at the earliest fraction whose predicted ranking matches the final one."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.6, 3.8))
    sets: dict[str, list[dict]] = {}
    for c in early["curves"]:
        sets.setdefault(c["set"], []).append(c)
    for name, cs in sets.items():
        pts = [c for c in cs if finite(c["recall"])]
        if not pts:
            continue
        x = [100 * c["fraction"] for c in pts]
        y = [c["recall"] for c in pts]
        label = cs[0]["label"] + (" (reference)" if name == reference else "")
        (line,) = ax.plot(x, y, marker="o", ls="--" if name == reference else "-", label=label)
        lo = [c["recall_lo"] if finite(c["recall_lo"]) else c["recall"] for c in pts]
        hi = [c["recall_hi"] if finite(c["recall_hi"]) else c["recall"] for c in pts]
        ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.12)
        if any(c["stopped_at"] is not None for c in cs):
            ax.scatter([x[-1]], [y[-1]], marker="x", s=90, color=line.get_color(), zorder=4)
    if early["earliest"] is not None:
        ax.axvline(100 * early["earliest"], ls=":", color="#555")
    ax.set_xlabel("training progress (% of steps)")
    ax.set_ylabel("recall of reference retrieval heads")
    ax.set_xlim(0, 105)
    ax.set_ylim(-0.05, 1.05)
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title(title, fontsize=9)
    return save_png(fig, path)


def reading_earliest(early: dict) -> str:
    per = early["per_fraction"]
    need = f"Spearman of predicted with final scores >= {fmt(early['agreement'])}"
    if not per or max(p["n"] for p in per) < 3:
        return f"Too few training sets trained to the end to rank (n={max((p['n'] for p in per), default=0)}; {need} needs 3)."
    if early["earliest"] is not None:
        p = next(p for p in per if p["fraction"] == early["earliest"])
        return (
            f"The predicted ranking of the sets matches their final ranking ({need}) first at {pct(p['fraction'])} of "
            f"training: Spearman {fmt(p['spearman'])} (n={p['n']}, mean absolute error {fmt(p['mae'])})."
        )
    best = max((p for p in per if finite(p["spearman"])), key=lambda p: p["spearman"], default=None)
    tail = f"; the best is Spearman {fmt(best['spearman'])} at {pct(best['fraction'])}" if best else ""
    return f"At no probed fraction does the predicted ranking of the sets match their final ranking ({need}){tail}."


def reading_cost(early: dict) -> str:
    m = early["monitor_seconds"]
    if not finite(m["share"]):
        return "Monitoring cost: no training time was measured."
    over = m["share"] > m["budget"]
    return (
        f"Monitoring cost (measured): saving snapshots {fmt(m['snapshots'], 1)} s + probing heads {fmt(m['probes'], 1)} s = "
        f"{m['share']:.1%} of the {fmt(m['train'], 1)} s of training, "
        + (
            f"over the budget of {m['budget']:.0%}: probe fewer examples (early.probe_n) or fewer fractions."
            if over
            else f"within the budget of {m['budget']:.0%}."
        )
    )


def reading_gates(early: dict) -> str:
    """Which sets stop_early stopped, where and why (nothing when it was off)."""
    if not early["stop_early"]:
        return ""
    rule = (
        f"stop_early (from {pct(early['min_fraction'])} of training on, a set stops when the upper bound of its recall "
        f"interval lies more than {fmt(early['margin'])} below the lower bound of the best set's; a stopped set's model "
        "is its snapshot at the stop, and it is left out of the correlations): "
    )
    said = []
    for g in early["gates"]:
        for r in g["rows"]:
            if r["decision"] == "stop":
                said.append(
                    f"{r['set']} stopped at {pct(g['fraction'])} (recall {fmt(r['recall'])}, interval up to {fmt(r['hi'])}; "
                    f"best {g['best']}'s lower bound {fmt(g['bar'] + g['margin'])})"
                )
    return rule + ("; ".join(said) if said else "no set was stopped") + "."


def _prediction_table(early: dict, labels: dict[str, str]) -> dict:
    """Rows: each predicted set's final score and its score predicted from its recall at each
    fraction; then each fraction's Spearman (predicted vs final) and mean absolute error. A
    template block (`report.html.j2`)."""
    per = early["per_fraction"]
    pred = {(p["fraction"], r["set"]): r for p in per for r in p["rows"]}
    names = list(dict.fromkeys(r["set"] for p in per for r in p["rows"]))
    rows = []
    for n in names:
        final = next(pred[f, n]["actual"] for f in (p["fraction"] for p in per) if (f, n) in pred)
        rows.append(
            [labels.get(n, n), fmt(final)] + [fmt(pred[p["fraction"], n]["predicted"]) if (p["fraction"], n) in pred else "–" for p in per]
        )
    rows.append(["Spearman (predicted vs final)", ""] + [fmt(p["spearman"]) for p in per])
    rows.append(["mean absolute error", ""] + [fmt(p["mae"]) for p in per])
    headers = ["training set", "final score"] + [f"predicted from recall at {pct(p['fraction'])}" for p in per]
    return {"kind": "table", "headers": headers, "rows": rows, "n_left": 1, "ref_rows": set(), "caption": "", "id": ""}


def early_parts(an: dict, out: Path) -> list[dict]:
    """The early-prediction blocks of one (model, task) analysis for the page template (nothing
    when it did not run)."""
    early = an.get("early")
    if not early:
        return []
    m, task = an["model"], an["task"]
    tag = f"{m}_{task}".replace("/", "_")
    labels = {r["set"]: r["label"] for r in an["rows"]}
    n_probe = early.get("probe_n")
    parts: list[dict] = [{"kind": "h3", "id": f"early-{tag}", "text": f"{m} · {task}: early prediction"}]
    src = fig_recall_curves(early, an["reference"], f"{m} / {task}: recall vs training progress", out / f"early_{tag}.png")
    cap = f"Recall of the reference's top heads per training set (band: 95% interval over n={n_probe} probe examples)."
    parts.append({"kind": "figure", "src": src, "alt": "recall vs training progress", "caption": cap, "reading": reading_earliest(early)})
    parts.append(
        {
            "kind": "text",
            "text": "Each set's final score predicted from its recall at each fraction of training (a line fitted on the "
            "other sets' recall there and final scores, leaving the set out):",
        }
    )
    parts.append(_prediction_table(early, labels))
    parts += [{"kind": "reading", "text": text} for text in (reading_gates(early), reading_cost(early)) if text]
    return parts
