"""The study report: one self-contained HTML page with PNG figures beside it, built only by READING
a study folder: its index and the artifacts (`needlework.artifacts`) of the stages it points to.

It shows what the paper's tables and figures show: the score of each training set per task and
model, the number of retrieval heads, recall/precision/cosine/Spearman against the reference
model, layer x head heatmaps, recall vs score with the fitted trend and correlation, knockout bars
(top-k vs random vs none) and the patching table; with early prediction also recall vs training
progress, predicted vs final scores per fraction, stop_early's decisions and the monitoring cost
(`report.early`). Every figure carries a one-line reading written from the numbers.
"""

from __future__ import annotations

import html
import json
import math
import os
from pathlib import Path
from typing import Any

from needlework.artifacts import STAGE_DONE, STUDY_INDEX, Analysis, Artifact, HeadScores, KnockoutResult, PatchResult
from needlework.errors import NeedleworkError
from needlework.io import write_text
from needlework.report.early import early_parts, pct, reading_earliest
from needlework.report.html import CSS, ci, figure, finite, fmt, pyplot, save_png, table

# ----------------------------------------------------------------------------------- reading the study


def load_study(study_dir: Path) -> dict[str, Any]:
    p = study_dir / STUDY_INDEX
    if not p.exists():
        raise NeedleworkError(f"{study_dir} holds no {STUDY_INDEX}", "point at a folder written by `needlework study`")
    return json.loads(p.read_text())


def _done(study_dir: Path, manifest: dict, stage: str) -> list[dict]:
    return [n for n in manifest["nodes"] if n["stage"] == stage and n.get("dir") and (study_dir / n["dir"] / STAGE_DONE).exists()]


def _read(study_dir: Path, node: dict, kind: type[Artifact]):
    """The artifact a finished node left, or None when its folder holds none (yet)."""
    d = study_dir / node["dir"]
    return kind.read(d) if kind.exists(d) else None


def _analyses(study_dir: Path, manifest: dict) -> list[dict]:
    return [a.result for a in (_read(study_dir, n, Analysis) for n in _done(study_dir, manifest, "analysis")) if a]


# ----------------------------------------------------------------------------------- figures


def fig_scores(rows: list[dict], title: str, path: Path) -> str:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(1.4 + 0.8 * len(rows), 3.2))
    x = range(len(rows))
    m = [r["score"] for r in rows]
    err = [
        [max(r["score"] - r["score_lo"], 0) if finite(r["score_lo"]) else 0 for r in rows],
        [max(r["score_hi"] - r["score"], 0) if finite(r["score_hi"]) else 0 for r in rows],
    ]
    colors = ["#d4a017" if r["reference"] else "#999999" if r["kind"] == "none" else "#4a7ebb" for r in rows]
    ax.bar(x, m, yerr=err, color=colors, capsize=3)
    ax.set_xticks(list(x), [r["label"] for r in rows], rotation=30, ha="right")
    ax.set_ylabel(rows[0]["metric"] if rows else "score")
    ax.set_title(title)
    return save_png(fig, path)


def fig_heatmaps(tables: dict[str, Any], title: str, path: Path) -> str:
    import numpy as np

    plt = pyplot()
    n = len(tables)
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.0 * rows), squeeze=False, constrained_layout=True)
    vmax = max([float(np.nanmax(t["mean"].to_numpy(float))) for t in tables.values()] + [1e-9])
    im = None
    for ax, (name, t) in zip(axes.ravel(), tables.items()):
        grid = t.pivot_table(index="layer", columns="head", values="mean").sort_index()
        im = ax.imshow(grid.to_numpy(float), aspect="auto", origin="lower", cmap="viridis", vmin=0, vmax=vmax)
        ax.set_title(name, fontsize=9)
        for axis, labels in ((ax.set_xticks, list(grid.columns)), (ax.set_yticks, list(grid.index))):
            step = max(1, len(labels) // 8)  # at most ~8 tick labels per axis
            axis(range(0, len(labels), step), [str(v) for v in labels[::step]])
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    if im is not None:
        fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8, label="retrieval score")
    fig.suptitle(title)
    return save_png(fig, path)


def fig_scatter(an: dict, title: str, path: Path) -> str:
    import numpy as np

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.6, 3.6))
    used = set(an.get("sets", []))
    for r in an["rows"]:
        if r["kind"] == "none":
            continue
        style = dict(color="#4a7ebb") if r["set"] in used else dict(color="#d4a017", marker="*", s=120)
        ax.scatter([r["recall"]], [r["score"]], zorder=3, **style)
        ax.annotate(r["label"], (r["recall"], r["score"]), fontsize=8, xytext=(4, 3), textcoords="offset points")
    xs_data = [r["recall"] for r in an["rows"] if r["set"] in used and finite(r["recall"])]
    if an.get("fit") and xs_data:
        xs = np.linspace(min(xs_data), max(xs_data), 20)
        ax.plot(xs, an["fit"]["slope"] * xs + an["fit"]["intercept"], "--", color="#888")
    c = an["recall_vs_score"]
    ax.set_xlabel("recall of reference retrieval heads")
    ax.set_ylabel(an["rows"][0]["metric"] if an["rows"] else "score")
    ax.set_title(f"{title}\nSpearman {fmt(c['spearman']['r'])}, Pearson {fmt(c['pearson']['r'])} (n={c['n']})", fontsize=9)
    ax.set_xlim(-0.05, 1.05)
    return save_png(fig, path)


def fig_knockout(summ: dict, task: str, title: str, path: Path) -> str:
    plt = pyplot()
    conds = summ["conditions"]
    names = list(conds)
    prim = conds["baseline"]["tasks"][task]["primary"]
    vals = [conds[n]["tasks"][task]["metrics"][prim] for n in names]
    fig, ax = plt.subplots(figsize=(1.4 + 0.7 * len(names), 3.2))
    err = [
        [max(v["mean"] - v["lo"], 0) if finite(v["lo"]) else 0 for v in vals],
        [max(v["hi"] - v["mean"], 0) if finite(v["hi"]) else 0 for v in vals],
    ]
    colors = ["#777777" if n == "baseline" else "#c0392b" if n == "top" else "#5d8aa8" for n in names]
    ax.bar(range(len(names)), [v["mean"] for v in vals], yerr=err, color=colors, capsize=3)
    ax.set_xticks(range(len(names)), ["none" if n == "baseline" else n for n in names], rotation=30, ha="right")
    ax.set_ylabel(prim)
    ax.set_title(title)
    return save_png(fig, path)


# ----------------------------------------------------------------------------------- readings


def _corr_words(c: dict) -> str:
    s = c["spearman"]
    if c["n"] < 3 or not finite(s["r"]):
        return f"too few training sets to correlate (n={c['n']})"
    sure = finite(s["lo"]) and (s["lo"] > 0 or s["hi"] < 0)
    direction = "correlates positively" if s["r"] > 0 else "correlates negatively" if s["r"] < 0 else "does not correlate"
    ci = f"95% CI [{fmt(s['lo'])}, {fmt(s['hi'])}]" if finite(s["lo"]) else "CI not defined"
    zero = ", excludes 0" if sure else ", includes 0" if finite(s["lo"]) else ""
    return f"{direction} with score: Spearman {fmt(s['r'])} (n={c['n']}, {ci}{zero}); Pearson {fmt(c['pearson']['r'])}"


def reading_scores(rows: list[dict]) -> str:
    fin = [r for r in rows if finite(r["score"])]
    if not fin:
        return "No scores yet."
    best, worst = max(fin, key=lambda r: r["score"]), min(fin, key=lambda r: r["score"])
    ref = next((r for r in rows if r["reference"]), None)
    return (
        f"Best training set: {best['label']} ({best['metric']} {fmt(best['score'])}); worst: {worst['label']} "
        f"({fmt(worst['score'])})" + (f"; the reference {ref['label']} scores {fmt(ref['score'])}." if ref else ".")
    )


def reading_heads(tables: dict[str, Any], k: int) -> str:
    parts = []
    for name, t in list(tables.items())[:1]:
        top = t.sort_values("mean", ascending=False).head(k)
        layers = sorted(top["layer"].astype(int).tolist())
        if layers:
            parts.append(
                f"{name}: the top-{k} heads lie in layers {layers[0]}–{layers[-1]} "
                f"(best {int(top.iloc[0]['layer'])}-{int(top.iloc[0]['head'])} with score {fmt(float(top.iloc[0]['mean']))})"
            )
    return "; ".join(parts) + "." if parts else "No head scores yet."


def reading_knockout(summ: dict, task: str) -> str:
    c = summ["conditions"]
    prim = c["baseline"]["tasks"][task]["primary"]
    base = c["baseline"]["tasks"][task]["metrics"][prim]["mean"]
    top = c["top"]["tasks"][task]["metrics"][prim]["mean"]
    rnd = [v["tasks"][task]["metrics"][prim]["mean"] for n, v in c.items() if n.startswith("random")]
    rmean = sum(rnd) / len(rnd) if rnd else float("nan")
    verdict = (
        "top heads matter more than random heads"
        if finite(rmean) and (base - top) > (base - rmean) + 1e-9
        else "top heads matter no more than random heads here"
    )
    return (
        f"{prim}: none {fmt(base)}, top-{c['top'].get('n_heads', '?')} knocked out {fmt(top)} "
        f"({fmt(top - base)}), random (mean of {len(rnd)}) {fmt(rmean)} ({fmt(rmean - base)}): {verdict}."
    )


# ----------------------------------------------------------------------------------- the page


MAIN_HEADERS = [
    "model",
    "task",
    "training set",
    "kind",
    "score [95% CI]",
    "retrieval heads (>thr)",
    "recall [CI]",
    "precision",
    "cosine [CI]",
    "Spearman",
]


def main_table_rows(analyses: list[dict]) -> tuple[list[list[str]], set[int]]:
    rows, refs = [], set()
    for an in analyses:
        for r in an["rows"]:
            if r["reference"]:
                refs.add(len(rows))
            rows.append(
                [
                    an["model"],
                    an["task"],
                    r["label"]
                    + (" (reference)" if r["reference"] else "")
                    + (f" (stopped at {pct(r['stopped_at'])})" if r.get("stopped_at") is not None else ""),
                    r["kind"],
                    ci(r["score"], r["score_lo"], r["score_hi"]),
                    str(r["n_above_threshold"]),
                    ci(r["recall"], r["recall_lo"], r["recall_hi"]),
                    fmt(r["precision"]),
                    ci(r["cosine"], r["cosine_lo"], r["cosine_hi"]),
                    fmt(r["spearman"]),
                ]
            )
    return rows, refs


def _analysis_parts(study_dir: Path, an: dict, score_nodes: dict, out: Path, k) -> list[str]:
    """The section of one (model, task) analysis: score and scatter figures, leave-one-out table, heatmaps."""

    parts = []
    m, task = an["model"], an["task"]
    tag = f"{m}_{task}".replace("/", "_")
    parts.append(f"<h2>{html.escape(m)} · {html.escape(task)}</h2>")
    src = fig_scores(an["rows"], f"{m} / {task}: score per training set", out / f"scores_{tag}.png")
    parts.append(figure(src, "scores", reading_scores(an["rows"])))
    src = fig_scatter(an, f"{m} / {task}: recall vs score", out / f"scatter_{tag}.png")
    parts.append(
        figure(
            src,
            "recall vs score",
            "Head recall " + _corr_words(an["recall_vs_score"]) + ". Cosine " + _corr_words(an["cosine_vs_score"]) + ".",
        )
    )
    loo = an["loo"]
    parts.append(
        f"<p>Leave-one-out prediction of each set's score from its recall (linear fit on the others), "
        f"mean absolute error {fmt(loo['mae'])}:</p>"
    )
    parts.append(
        table(
            ["training set", "recall", "actual", "predicted", "error"],
            [[r["set"], fmt(r["x"]), fmt(r["actual"]), fmt(r["predicted"]), fmt(r["error"])] for r in loo["rows"]],
            n_left=1,
        )
    )
    tables = {}
    for r in an["rows"]:
        node = score_nodes.get((m, task, r["set"]))
        scores = _read(study_dir, node, HeadScores) if node else None
        if scores is not None:
            tables[r["label"]] = scores.heads
    if tables:
        src = fig_heatmaps(tables, f"{m} / {task}: retrieval score per layer x head", out / f"heatmap_{tag}.png")
        parts.append(figure(src, "heatmaps", reading_heads(tables, k)))
    return parts


def _knockout_parts(study_dir: Path, ko: list[dict], out: Path) -> list[str]:
    """The knockout section: one figure per finished knockout node (nothing when there are none)."""
    parts = []
    if ko:
        parts.append("<h2>Knockout: are the heads necessary?</h2>")
        for n in ko:
            res = _read(study_dir, n, KnockoutResult)
            if res is None:
                continue
            summ = res.summary
            src = fig_knockout(summ, n["task"], f"knockout: {n['label']}", out / f"knockout_{n['label'].replace('/', '_')}.png")
            parts.append(figure(src, "knockout", f"{n['label']}: " + reading_knockout(summ, n["task"])))
    return parts


def _patch_parts(study_dir: Path, pa: list[dict]) -> list[str]:
    """The patching section: one table over the finished patch nodes and its reading (nothing when none)."""
    parts = []
    if pa:
        parts.append("<h2>Patching reference heads into each model: are the heads sufficient?</h2>")
        prow = []
        for n in pa:
            p = _read(study_dir, n, PatchResult)
            for r in p.rows() if p else []:
                prow.append(
                    [
                        n["label"],
                        r["condition"],
                        r["kind"],
                        "" if r.get("n_heads") is None else str(r["n_heads"]),
                        ci(r["score"], r["lo"], r["hi"]),
                        ci(r["delta"], r["delta_lo"], r["delta_hi"]),
                        fmt(r.get("recovered")),
                    ]
                )
        parts.append(
            table(["target model", "condition", "set", "heads", "score [CI]", "delta vs target [CI]", "gap recovered"], prow, n_left=3)
        )
        parts.append("<p class='reading'>" + html.escape(reading_patch(pa, study_dir)) + "</p>")
    return parts


def write_report(study_dir: str | os.PathLike) -> Path:
    """Write `study_dir/report/index.html` (+ PNGs) from the study's outputs; returns the page path.

    Raises:
        NeedleworkError: the folder holds no study.json.
    """
    study_dir = Path(study_dir)
    manifest = load_study(study_dir)
    cfg = manifest["config"]
    out = study_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    thr = cfg["heads"]["threshold"]
    k = cfg["heads"]["top"]
    parts = [
        f"<h1>needlework study: {html.escape(manifest['name'])}</h1>",
        f"<p class='muted'>Head-set rule: {html.escape(cfg['heads']['rule'])} (k={k}, threshold={thr}). "
        "Retrieval heads counted as heads with mean score above the threshold. Intervals are 95% bootstrap "
        "intervals over examples (scores, head comparisons) or over training sets (correlations).</p>",
    ]

    analyses = _analyses(study_dir, manifest)
    rows, refs = main_table_rows(analyses)
    parts.append("<h2>Scores and head overlap with the reference model</h2>")
    parts.append(table(MAIN_HEADERS, rows, refs) if rows else "<p>No analysis yet (run the study to the end).</p>")

    score_nodes = {(n["model"], n["task"], n["set"]): n for n in _done(study_dir, manifest, "score")}
    for an in analyses:
        parts += _analysis_parts(study_dir, an, score_nodes, out, k)

    early = [part for an in analyses for part in early_parts(an, out)]
    if early:
        parts += ["<h2 id='early'>Early prediction: does head recall early in training predict the final score?</h2>", *early]

    parts += _knockout_parts(study_dir, _done(study_dir, manifest, "knockout"), out)

    parts += _patch_parts(study_dir, _done(study_dir, manifest, "patch"))

    page = (
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>needlework report: "
        f"{html.escape(manifest['name'])}</title><style>{CSS}</style></head><body>{''.join(parts)}</body></html>\n"
    )
    write_text(out / "index.html", page)
    return out / "index.html"


def reading_patch(nodes: list[dict], study_dir: Path) -> str:
    rec = {}
    for n in nodes:
        p = _read(study_dir, n, PatchResult)
        for r in p.rows() if p else []:
            if finite(r.get("recovered")):
                rec.setdefault(r["kind"], []).append(r["recovered"])
    if not rec:
        return "Source and target score alike here, so no gap to recover."
    return (
        "Mean share of the source-target gap recovered by patching: "
        + ", ".join(f"{k} {fmt(sum(v) / len(v))}" for k, v in rec.items())
        + " (1 = all of it)."
    )


def summary_lines(study_dir: str | os.PathLike) -> list[str]:
    """A short plain-text results table (one line per model/task/training set) and each task's
    correlation, for the end of `needlework study` and `make demo`."""
    study_dir = Path(study_dir)
    manifest = load_study(study_dir)
    analyses = _analyses(study_dir, manifest)
    rows, _ = main_table_rows(analyses)
    if not rows:
        return ["(no results yet)"]
    cols = [0, 1, 2, 4, 5, 6, 8]
    head = [MAIN_HEADERS[i] for i in cols]
    body = [[r[i] for i in cols] for r in rows]
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    lines = ["  ".join(x.ljust(w) for x, w in zip(line, widths)) for line in [head, *body]]
    for an in analyses:
        lines.append(f"{an['model']}/{an['task']}: head recall {_corr_words(an['recall_vs_score'])}")
        if an.get("early"):
            lines.append(f"{an['model']}/{an['task']}: early prediction: {reading_earliest(an['early'])}")
    return lines
