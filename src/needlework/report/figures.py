"""The report's figures (PNG, matplotlib Agg): scores per training set, layer x head heatmaps,
recall vs score, knockout bars, accuracy by needle depth and training loss. Each takes plain rows
and a path and returns the file name relative to the page."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from needlework.report.html import finite, fmt, pyplot, save_png

__all__ = ["fig_depth", "fig_heatmaps", "fig_knockout", "fig_loss", "fig_scatter", "fig_scores"]


def _err(rows: list[dict], m: str, lo: str, hi: str) -> list[list[float]]:
    return [
        [max(r[m] - r[lo], 0) if finite(r[lo]) else 0 for r in rows],
        [max(r[hi] - r[m], 0) if finite(r[hi]) else 0 for r in rows],
    ]


def fig_scores(rows: list[dict], title: str, path: Path) -> str:
    """Bars of the primary metric with 95% intervals; grey = no fine-tuning, gold = the reference."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(1.6 + 0.8 * len(rows), 3.4))
    x = range(len(rows))
    colors = ["#d4a017" if r["reference"] else "#999999" if r["kind"] == "none" else "#4a7ebb" for r in rows]
    ax.bar(x, [r["score"] for r in rows], yerr=_err(rows, "score", "score_lo", "score_hi"), color=colors, capsize=3)
    base = next((r for r in rows if r["kind"] == "none" and finite(r["score"])), None)
    if base is not None:
        ax.axhline(base["score"], ls=":", color="#777", label="no fine-tuning")
        ax.legend(fontsize=8, loc="upper right")
    ax.set_xticks(list(x), [r["label"] for r in rows], rotation=30, ha="right")
    n = max((r.get("n_eval") or 0 for r in rows), default=0)
    ax.set_ylabel(f"{rows[0]['metric'] if rows else 'score'} (n={n} per set)")
    ax.set_title(title, fontsize=10)
    return save_png(fig, path)


def fig_heatmaps(tables: dict[str, Any], title: str, path: Path, label: str = "retrieval score") -> str:
    """One layer x head panel of mean scores per set, on one colour scale (`label`: the colour bar's)."""
    import numpy as np

    plt = pyplot()
    n = len(tables)
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.0 * rows), squeeze=False, constrained_layout=True)
    vmax = max([float(np.nanmax(t["mean"].to_numpy(float))) for t in tables.values()] + [1e-9])
    vmin = min([float(np.nanmin(t["mean"].to_numpy(float))) for t in tables.values()] + [0.0])  # below 0: the output score's logits
    im = None
    for ax, (name, t) in zip(axes.ravel(), tables.items()):
        grid = t.pivot_table(index="layer", columns="head", values="mean").sort_index()
        im = ax.imshow(grid.to_numpy(float), aspect="auto", origin="lower", cmap="viridis", vmin=vmin, vmax=vmax)
        ax.set_title(name, fontsize=9)
        for axis, labels in ((ax.set_xticks, list(grid.columns)), (ax.set_yticks, list(grid.index))):
            step = max(1, len(labels) // 8)  # at most ~8 tick labels per axis
            axis(range(0, len(labels), step), [str(v) for v in labels[::step]])
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    if im is not None:
        fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8, label=label)
    fig.suptitle(title)
    return save_png(fig, path)


def _zoom(values: list[float], pad: float = 0.08) -> tuple[float, float]:
    """Axis limits around the data (with a margin), not the full 0-1 range where the points would crowd."""
    lo, hi = min(values), max(values)
    span = max(hi - lo, 0.05)
    return lo - pad * span - 0.01, hi + pad * span + 0.01


def fig_scatter(an: dict, title: str, path: Path, criterion: str = "retrieval") -> str:
    """Recall vs score per set with error bars both ways, the fitted line, and a legend (`criterion`:
    whose heads the recall is of)."""
    import numpy as np

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.4, 4.0))
    used = set(an.get("sets", []))
    pts = [r for r in an["rows"] if r["kind"] != "none" and finite(r["recall"]) and finite(r["score"])]
    for group, style in (("used", dict(color="#4a7ebb", marker="o")), ("reference", dict(color="#d4a017", marker="*", ms=12))):
        g = [r for r in pts if (r["set"] in used) == (group == "used")]
        if g:
            ax.errorbar(
                [r["recall"] for r in g],
                [r["score"] for r in g],
                xerr=_err(g, "recall", "recall_lo", "recall_hi"),
                yerr=_err(g, "score", "score_lo", "score_hi"),
                ls="none",
                capsize=2,
                label="training set" if group == "used" else "reference (not in the fit)",
                **style,
            )
    at: dict[tuple[float, float], list[str]] = {}  # sets on one point share one label
    for r in pts:
        at.setdefault((round(r["recall"], 4), round(r["score"], 4)), []).append(r["label"])
    for (x, y), labels in at.items():
        ax.annotate(", ".join(labels), (x, y), fontsize=9, xytext=(5, 4), textcoords="offset points")
    xs_data = [r["recall"] for r in pts if r["set"] in used]
    if an.get("fit") and xs_data:
        xs = np.linspace(min(xs_data), max(xs_data), 20)
        ax.plot(xs, an["fit"]["slope"] * xs + an["fit"]["intercept"], "--", color="#888", label="least-squares fit")
    if pts:
        ax.set_xlim(*_zoom([r["recall"] for r in pts] + [r["recall_lo"] for r in pts if finite(r["recall_lo"])]))
    c = an["recall_vs_score"]
    ax.set_xlabel(f"recall of the reference's {criterion} heads", fontsize=10)
    ax.set_ylabel(an["rows"][0]["metric"] if an["rows"] else "score", fontsize=10)
    ax.legend(fontsize=8, loc="best")
    sp = c["spearman"]
    stat = f"Spearman {fmt(sp['r'])} (p={fmt(sp.get('p'), 3)})" if finite(sp["r"]) else "no correlation defined"
    ax.set_title(f"{title}\n{stat}, n={c['n']} sets", fontsize=9)
    return save_png(fig, path)


def fig_knockout(ko: dict, title: str, path: Path) -> str:
    """Bars: none, top-k and each random set, with intervals; k and n in the labels."""
    plt = pyplot()
    bars = [("none", ko["baseline"]), (f"top-{ko['k']}", ko["top"])] + [
        (f"random {i} (k={ko['k']})", r) for i, r in enumerate(ko["random"])
    ]
    fig, ax = plt.subplots(figsize=(1.6 + 0.8 * len(bars), 3.4))
    vals = [b for _, b in bars]
    err = _err(vals, "mean", "lo", "hi")
    colors = ["#777777", "#c0392b"] + ["#5d8aa8"] * len(ko["random"])
    ax.bar(range(len(bars)), [v["mean"] for v in vals], yerr=err, color=colors, capsize=3)
    ax.set_xticks(range(len(bars)), [b for b, _ in bars], rotation=30, ha="right")
    ax.set_ylabel(f"{ko['metric']} (n={ko['n']})")
    ax.set_title(title, fontsize=10)
    return save_png(fig, path)


def fig_depth(curves: dict[str, list[dict]], title: str, path: Path) -> str:
    """Accuracy by needle depth, one line per training set ("lost in the middle" curves)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.6, 3.6))
    for label, bins in curves.items():
        pts = [b for b in bins if b["n"] > 0]
        ax.plot([b["mid"] for b in pts], [b["acc"] for b in pts], marker="o", label=label)
    ax.set_xlabel("depth of the gold document (0 = first, 1 = last)")
    ax.set_ylabel("accuracy")
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.05, 1.05)
    ax.legend(fontsize=7, loc="best", ncol=2)
    ax.set_title(title, fontsize=10)
    return save_png(fig, path)


def fig_loss(curves: dict[str, list[tuple[int, float]]], title: str, path: Path) -> str:
    """Training loss against step, one line per training set."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.6, 3.4))
    for label, pts in curves.items():
        ax.plot([s for s, _ in pts], [v for _, v in pts], label=label, lw=1.2)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (answer tokens)")
    ax.legend(fontsize=7, loc="best", ncol=2)
    ax.set_title(title, fontsize=10)
    return save_png(fig, path)
