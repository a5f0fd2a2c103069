"""Export and import head scores in other tools' formats.

- `wu`: Wu et al.'s retrieval-head JSON, `{"L-H": [score per example, ...]}` (their code averages
  each list). Exported from the kept examples in example order, with their ids in
  `<name>.example_ids.json` beside it (the format has no place for them, and their code reads
  every key of the JSON as a head); imported as per-example scores under those ids, so that a
  round trip compares with its source example by example (cosine exactly 1 [1, 1]). A file without
  the id file gets positional ids (`wu0`, `wu1`, ...).
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


def _export_wu(per, heads, out: Path) -> None:
    """The JSON and, with per-example scores, the example-id file beside it (a stale one is removed)."""
    from needlework.heads.compare import wu_ids_path

    ids_path = wu_ids_path(out)
    if per is None:  # only means known: one "example"
        write_text(out, json.dumps({f"{r.layer}-{r.head}": [float(r.mean)] for r in heads.itertuples()}))
        ids_path.unlink(missing_ok=True)
        return
    per = per[per["kept"].astype(bool)] if "kept" in per else per
    ids = list(dict.fromkeys(per["example_id"].astype(str)))  # example order, as scored
    grid = per.assign(example_id=per["example_id"].astype(str)).pivot_table(index=["layer", "head"], columns="example_id", values="score")
    grid = grid.reindex(columns=ids)  # every head's list in the same example order
    obj = {str(HeadId(int(l), int(h))): [float(x) for x in row] for (l, h), row in zip(grid.index, grid.to_numpy())}
    write_text(out, json.dumps(obj))
    write_text(ids_path, json.dumps({"example_ids": ids, "scores": out.name}) + "\n")


def export_scores(
    result_dir: str | os.PathLike, fmt: str, out: str | os.PathLike, kv_agg: str = "max", criterion: str | None = None
) -> Path:
    """Write the scores of a result directory (`criterion`: one of a folder scored with several,
    default its `score`) as `fmt` to `out`; returns `out` (wu: the example ids go to
    `compare.wu_ids_path(out)` beside it)."""
    from needlework.heads.compare import scores_from_tables, to_view

    _check_format(fmt)
    res = HeadScores.read(result_dir).criterion(criterion)
    per, heads, meta = res.per_example, res.heads, res.meta
    out = Path(out)
    if fmt == "wu":
        _export_wu(per, heads, out)
        return out
    s = scores_from_tables(per, heads, meta)
    grid = to_view(s.means, s, "kv", kv_agg).reshape(s.n_layers, -1)  # layers x kv heads
    write_text(out, "\n".join("\t".join(repr(float(v)) for v in row) for row in grid) + "\n")
    return out


def import_scores(
    path: str | os.PathLike,
    fmt: str,
    out_dir: str | os.PathLike,
    n_kv_heads: int | None = None,
    example_ids: list[str] | str | os.PathLike | None = None,
) -> Path:
    """Read `path` in `fmt` and write a HeadScores result directory (for `wu` with per-example
    scores) that `heads compare` and `heads plot` read.

    Args:
        n_kv_heads: wu only: the model's kv heads (the JSON does not say; default = query heads).
        example_ids: wu only: the examples' ids in list order, or a file of them (default: the
            `.example_ids.json` beside `path` when there is one, else positions `wu0`, `wu1`, ...).
    Raises:
        NeedleworkError: unreadable file, malformed content, ids that do not fit the score lists.
    """
    from needlework.heads.compare import read_wu

    _check_format(fmt)
    path, out = Path(path), Path(out_dir)
    if not path.exists():
        raise NeedleworkError(f"{path}: no such file", "check the path")
    if fmt == "wu":
        res = read_wu(path, example_ids)
        shape = {**res.meta["shape"], "n_kv_heads": n_kv_heads or res.meta["shape"]["n_heads"]}
        res.meta.update(shape=shape)
        res.heads = res.heads.astype({"layer": int, "head": int}).sort_values(["layer", "head"]).reset_index(drop=True)
        res.write(out)
        return out
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
    meta = {"imported_from": str(path), "format": "duo", "shape": shape, "view": "kv"}
    HeadScores(heads=heads.astype({"layer": int, "head": int}), per_example=None, meta=meta).write(out)
    return out
