"""The report's shared small parts: the page's CSS, number formatting, and PNG saving (matplotlib's
Agg backend). The page itself is the jinja2 template `templates/report.html.j2`."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from needlework.io import atomic_path

__all__ = ["CSS", "ci", "fig_block", "finite", "fmt", "pyplot", "save_png", "table_block", "tag"]

CSS = """body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#222}h1{font-size:1.6em}h2{margin-top:1.8em;border-bottom:1px solid #ddd}table{border-collapse:collapse;
margin:.8em 0;font-size:.9em}th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#f4f4f4}
td.l,th.l{text-align:left}tr.ref{background:#fff8dc}p.reading{background:#eef5ff;border-left:4px solid #4a7ebb;padding:.4em .8em}
img{max-width:100%;border:1px solid #eee}.muted{color:#777;font-size:.85em}figure{margin:1em 0}
figcaption,p.caption{color:#555;font-size:.85em;margin:.3em 0}nav ul{columns:2;font-size:.9em}details{margin:.4em 0}
summary{cursor:pointer}pre{background:#f8f8f8;padding:.6em;font-size:.8em;overflow:auto;max-height:30em}
td.l{max-width:28em;overflow-wrap:anywhere}"""


def fmt(x: Any, nd: int = 2) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    return f"{x:.{nd}f}" if isinstance(x, (int, float)) and not isinstance(x, bool) else str(x)


def ci(m: Any, lo: Any, hi: Any) -> str:
    if lo is None or (isinstance(lo, float) and not math.isfinite(lo)):
        return fmt(m)
    return f"{fmt(m)} [{fmt(lo)}, {fmt(hi)}]"


def finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def pyplot():
    """matplotlib's pyplot on the Agg backend (PNG files, no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(fig, path: Path) -> str:
    """Write a figure as a PNG atomically and close it; returns the file name (relative to the page)."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    pyplot().close(fig)
    return path.name


def tag(*parts: str) -> str:
    """A file-name-safe tag of names (model, task, label)."""
    return "_".join(parts).replace("/", "_").replace(" ", "_")


def fig_block(src: str, alt: str, caption: str, reading: str) -> dict:
    """A figure block of the page template: the PNG, its caption (with n) and its reading."""
    return {"kind": "figure", "src": src, "alt": alt, "caption": caption, "reading": reading}


def table_block(headers: list[str], rows: list[list[str]], n_left: int = 3, ref_rows=(), caption: str = "", id: str = "") -> dict:
    """A table block of the page template; the first `n_left` columns (names) are left-aligned."""
    return {"kind": "table", "headers": headers, "rows": rows, "n_left": n_left, "ref_rows": set(ref_rows), "caption": caption, "id": id}
