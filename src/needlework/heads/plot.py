"""Layer x head heatmap of per-head mean scores (PNG, matplotlib's Agg backend, no display)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from needlework.io import atomic_path


def heatmap(result_dir: str | os.PathLike, out: str | os.PathLike | None = None, title: str | None = None) -> Path:
    """Draw the per-head means of a HeadScores result directory as a layer (rows) x head (columns) heatmap.

    Args:
        result_dir: a directory written by `heads score` or `heads import`.
        out: PNG path; default `<result_dir>/heads.png`.
    Returns:
        The PNG path.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from needlework.artifacts import HeadScores
    from needlework.heads.compare import scores_from_tables

    res = HeadScores.read(result_dir)
    meta = res.meta
    s = scores_from_tables(None, res.heads, meta)
    grid = s.means.reshape(s.n_layers, s.n_heads)
    out = Path(out) if out else Path(result_dir) / "heads.png"
    fig, ax = plt.subplots(figsize=(max(4.0, 0.28 * s.n_heads + 2), max(3.0, 0.22 * s.n_layers + 1.5)))
    im = ax.imshow(grid, aspect="auto", origin="lower", cmap="viridis", vmin=0, vmax=max(float(np.nanmax(grid)), 1e-9))
    ax.set_xlabel("kv head" if s.view == "kv" else "query head")
    ax.set_ylabel("layer")
    score = meta.get("score", {})
    ax.set_title(title or f"{meta.get('model_name', '')} {score.get('score', '')} score ({score.get('mode', '')})".strip())
    fig.colorbar(im, ax=ax, label="mean score")
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return out
