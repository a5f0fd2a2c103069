"""Export and import head scores in other tools' formats.

- `wu`: Wu et al.'s retrieval-head JSON, `{"L-H": [score per example, ...]}` (their code averages
  each list). Exported from the kept examples in example order; imported as per-example scores.
- `duo`: a layer x kv-head TSV as DuoAttention writes it: one row per layer, one tab-separated
  float per key/value head, no header. Exported by aggregating each kv group's query-head means
  (max by default, see compare.py); imported as a kv-only table (meta `view: kv`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from needlework.artifacts import HeadScores
from needlework.errors import NeedleworkError
from needlework.io import write_text
from needlework.models.sites import HeadId

FORMATS = ("wu", "duo")


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise NeedleworkError(f"unknown format {fmt!r}", f"use one of {', '.join(FORMATS)}")


def export_scores(result_dir: str | os.PathLike, fmt: str, out: str | os.PathLike, kv_agg: str = "max") -> Path:
    """Write the scores of a result directory as `fmt` to `out`; returns `out`."""
    from needlework.heads.compare import scores_from_tables, to_view

    _check_format(fmt)
    res = HeadScores.read(result_dir)
    per, heads, meta = res.per_example, res.heads, res.meta
    out = Path(out)
    if fmt == "wu":
        if per is None:  # only means known: one "example"
            obj = {f"{r.layer}-{r.head}": [float(r.mean)] for r in heads.itertuples()}
        else:
            per = per[per["kept"].astype(bool)] if "kept" in per else per
            obj = {
                str(HeadId(int(l), int(h))): g["score"].astype(float).tolist() for (l, h), g in per.groupby(["layer", "head"], sort=True)
            }
        write_text(out, json.dumps(obj))
        return out
    s = scores_from_tables(per, heads, meta)
    grid = to_view(s.means, s, "kv", kv_agg).reshape(s.n_layers, -1)  # layers x kv heads
    write_text(out, "\n".join("\t".join(repr(float(v)) for v in row) for row in grid) + "\n")
    return out


def import_scores(path: str | os.PathLike, fmt: str, out_dir: str | os.PathLike, n_kv_heads: int | None = None) -> Path:
    """Read `path` in `fmt` and write a HeadScores result directory (for `wu` with per-example
    scores) that `heads compare` and `heads plot` read.

    Args:
        n_kv_heads: wu only: the model's kv heads (the JSON does not say; default = query heads).
    Raises:
        NeedleworkError: unreadable file or malformed content.
    """
    _check_format(fmt)
    path, out = Path(path), Path(out_dir)
    if not path.exists():
        raise NeedleworkError(f"{path}: no such file", "check the path")
    if fmt == "wu":
        try:
            obj = json.loads(path.read_text())
            items = {HeadId.parse(k): [float(x) for x in (v if isinstance(v, list) else [v])] for k, v in obj.items()}
        except (json.JSONDecodeError, AttributeError, TypeError, ValueError) as e:
            raise NeedleworkError(f"{path} is not Wu et al.'s head JSON ({e})", 'expect {"L-H": [scores, ...]}') from None
        L = max(h.layer for h in items) + 1
        H = max(h.head for h in items) + 1
        n = max(len(v) for v in items.values())
        rows = [
            {"example_id": f"wu{i}", "layer": h.layer, "head": h.head, "score": v[i], "kept": True}
            for h, v in items.items()
            for i in range(len(v))
        ]
        per = pd.DataFrame(rows)
        means = per.groupby(["layer", "head"])["score"].agg(["mean", "std", "size"]).reset_index()
        heads = means.rename(columns={"size": "n"})
        heads["std"] = per.groupby(["layer", "head"])["score"].std(ddof=0).to_numpy()
        shape = {"n_layers": L, "n_heads": H, "n_kv_heads": n_kv_heads or H}
        meta = {"imported_from": str(path), "format": "wu", "shape": shape, "view": "query", "n_examples": n}
    else:
        try:
            grid = np.loadtxt(path, delimiter="\t", ndmin=2)
        except ValueError as e:
            raise NeedleworkError(
                f"{path} is not a tab-separated layer x kv-head table ({e})", "expect one row per layer, tab-separated floats"
            ) from None
        L, K = grid.shape
        heads = pd.DataFrame(
            {"layer": np.repeat(np.arange(L), K), "head": np.tile(np.arange(K), L), "mean": grid.ravel(), "std": np.nan, "n": 0}
        )
        shape = {"n_layers": L, "n_heads": K, "n_kv_heads": K}
        per = None
        meta = {"imported_from": str(path), "format": "duo", "shape": shape, "view": "kv"}
    HeadScores(heads=heads.astype({"layer": int, "head": int}), per_example=per, meta=meta).write(out)
    return out
