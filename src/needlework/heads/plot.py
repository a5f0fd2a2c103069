"""Layer x head heatmap of per-head mean scores (PNG, matplotlib's Agg backend, no display)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from needlework.io import atomic_path


def heatmap(
    result_dir: str | os.PathLike, out: str | os.PathLike | None = None, title: str | None = None, criterion: str | None = None
) -> Path:
    """Draw the per-head means of a HeadScores result directory as a layer (rows) x head (columns) heatmap.

    Args:
        result_dir: a directory written by `heads score` or `heads import`.
        out: PNG path; default `<result_dir>/heads.png` (`heads-<criterion>.png` for another criterion).
        criterion: in a folder scored with several criteria, the one drawn (default: its `score`).
    Returns:
        The PNG path.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from needlework.artifacts import HeadScores
    from needlework.heads.compare import scores_from_tables

    res = HeadScores.read(result_dir)
    res, primary = res.criterion(criterion), res.primary
    meta = res.meta
    s = scores_from_tables(None, res.heads, meta)
    grid = s.means.reshape(s.n_layers, s.n_heads)
    name = "heads.png" if res.primary == primary else f"heads-{res.primary}.png"
    out = Path(out) if out else Path(result_dir) / name
    fig, ax = plt.subplots(figsize=(max(4.0, 0.28 * s.n_heads + 2), max(3.0, 0.22 * s.n_layers + 1.5)))
    lo = min(0.0, float(np.nanmin(grid)))  # the output score's logits go below 0
    im = ax.imshow(grid, aspect="auto", origin="lower", cmap="viridis", vmin=lo, vmax=max(float(np.nanmax(grid)), lo + 1e-9))
    ax.set_xlabel("kv head" if s.view == "kv" else "query head")
    ax.set_ylabel("layer")
    opts = meta.get("options") or meta.get("score") or {}
    ax.set_title(title or f"{meta.get('model_name', '')} {res.primary} score ({opts.get('mode', '')})".strip())
    fig.colorbar(im, ax=ax, label="mean score")
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return out
