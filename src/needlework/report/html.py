"""The report's page parts: number formatting, tables, figures with their reading, and PNG saving
(matplotlib's Agg backend), shared by the report's sections (`report.report`, `report.early`)."""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any

from needlework.io import atomic_path

__all__ = ["CSS", "ci", "figure", "finite", "fmt", "pyplot", "save_png", "table"]

CSS = """body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#222}h1{font-size:1.6em}h2{margin-top:1.8em;border-bottom:1px solid #ddd}table{border-collapse:collapse;
margin:.8em 0;font-size:.9em}th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#f4f4f4}
td.l,th.l{text-align:left}tr.ref{background:#fff8dc}p.reading{background:#eef5ff;border-left:4px solid #4a7ebb;padding:.4em .8em}
img{max-width:100%;border:1px solid #eee}.muted{color:#777;font-size:.85em}"""


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


def table(headers: list[str], rows: list[list[str]], ref_rows: set[int] | None = None, n_left: int = 3) -> str:
    """An HTML table; the first `n_left` columns (names) are left-aligned, numbers right-aligned."""
    th = "".join(f"<th class='l'>{html.escape(h)}</th>" if i < n_left else f"<th>{html.escape(h)}</th>" for i, h in enumerate(headers))
    body = []
    for j, r in enumerate(rows):
        cls = " class='ref'" if ref_rows and j in ref_rows else ""
        body.append(
            f"<tr{cls}>"
            + "".join(f"<td class='l'>{html.escape(c)}</td>" if i < n_left else f"<td>{html.escape(c)}</td>" for i, c in enumerate(r))
            + "</tr>"
        )
    return f"<table><tr>{th}</tr>{''.join(body)}</table>"


def figure(src: str, alt: str, reading: str) -> str:
    return f"<figure><img src='{html.escape(src)}' alt='{html.escape(alt)}'><p class='reading'>{html.escape(reading)}</p></figure>"
