"""Compare two head-score tables (SPEC §2): cosine, Spearman, and recall/precision/Jaccard of head
sets, with percentile bootstrap intervals over examples.

`compare(A, B)` treats B as the reference (e.g. the model trained on real data):
recall = |H_A ∩ H_B| / |H_B|, precision = |H_A ∩ H_B| / |H_A|, Jaccard = |∩| / |∪|. Head sets are
the heads with mean score above `threshold` (default 0.1, Wu et al.) or, with `top`, the `top`
highest (ties broken by layer, then head), through `models.sites.rank_mask`: the rule knockout
and patching select with (`sites.select_heads`). Bootstrap: resample example ids with replacement,
recompute every head's mean, recompute the statistics; when A and B were scored on the same
example ids the same resample serves both (paired), else each side is resampled on its own.

Views: `query` compares query heads; `kv` first aggregates the query heads sharing a key/value
head (`kv_agg` = max, default: a kv head matters when any of its query heads retrieves, which is
what KV-cache methods such as DuoAttention act on; or mean).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import rankdata

from needlework.artifacts import HeadScores
from needlework.errors import NeedleworkError
from needlework.heads.config import CompareConfig  # noqa: F401  (re-exported)
from needlework.models.sites import HeadId, HeadSet, rank_mask, select_heads

STATS = ("cosine", "spearman", "recall", "precision", "jaccard", "n_a", "n_b", "n_common")


@dataclass
class Scores:
    """One side of a comparison: per-example score matrix (n_examples, n_layers * n_heads) (None
    when only means are known), the per-head means, the shape, and the example ids."""

    means: np.ndarray  # (F,) flattened layer-major
    per_example: np.ndarray | None
    example_ids: list[str]
    n_layers: int
    n_heads: int
    n_kv_heads: int
    view: str = "query"  # "kv" when the table holds key/value heads only (DuoAttention import)
    known: np.ndarray | None = None  # (F,) bool: heads the table scored (None: all)

    def grid(self) -> np.ndarray:
        """(n_layers, n_heads) means, NaN for heads without a score: what `select_heads` ranks."""
        m = self.means.astype(float)
        if self.known is not None:
            m = np.where(self.known, m, np.nan)
        return m.reshape(self.n_layers, -1)

    def select(self, top: int | None = None, threshold: float | None = None, heads=None) -> HeadSet:
        """`models.sites.select_heads` on these scores (query heads only)."""
        return select_heads(self.grid() if heads is None else None, top=top, threshold=threshold, heads=heads)


def scores_from_tables(per: pd.DataFrame | None, heads: pd.DataFrame, meta: dict) -> Scores:
    """Scores from a heads table (layer, head, mean), optional per-example table and meta.json."""
    shape = meta.get("shape") or {}
    L = int(shape.get("n_layers", heads["layer"].max() + 1))
    H = int(shape.get("n_heads", heads["head"].max() + 1))
    kv = int(shape.get("n_kv_heads", H))
    lay, hd = heads["layer"].to_numpy(), heads["head"].to_numpy()
    if len(heads) and (lay.min() < 0 or hd.min() < 0 or lay.max() >= L or hd.max() >= H):
        raise NeedleworkError(
            f"the score table's heads fall outside {L} layers x {H} heads", "use a table written by `needlework heads score` for this model"
        )
    means = np.full(L * H, np.nan)
    means[lay * H + hd] = heads["mean"].to_numpy()
    known = np.zeros(L * H, dtype=bool)
    known[lay * H + hd] = True
    mat, ids = None, []
    if per is not None and len(per):
        if "kept" in per:
            per = per[per["kept"].astype(bool)]
        pv = per.assign(f=per["layer"] * H + per["head"]).pivot_table(index="example_id", columns="f", values="score")
        pv = pv.reindex(columns=range(L * H))
        mat, ids = pv.to_numpy(float), [str(i) for i in pv.index]
    return Scores(np.nan_to_num(means), mat, ids, L, H, kv, meta.get("view", "query"), known)


def _wu_table(path: Path) -> pd.DataFrame:
    """Wu et al.'s retrieval-head JSON, {"L-H": [per-example scores, ...]}, as a heads table."""
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise NeedleworkError(f"cannot read score file {path} ({e})", "pass a heads-score folder or a Wu et al. JSON") from None
    if not isinstance(raw, dict):
        raise NeedleworkError(f"{path} is not a JSON object of 'L-H' keys", "pass a heads-score folder or a Wu et al. JSON")
    rows = []
    for key, vals in raw.items():
        h = HeadId.parse(key)
        v = np.asarray(vals if isinstance(vals, list) else [vals], dtype=float)
        rows.append(
            {
                "layer": h.layer,
                "head": h.head,
                "mean": float(v.mean()) if v.size else 0.0,
                "std": float(v.std()) if v.size else 0.0,
                "n": int(v.size),
            }
        )
    return pd.DataFrame(rows, columns=["layer", "head", "mean", "std", "n"])


def _result_path(src: str | os.PathLike) -> Path:
    """The score source a path names: a HeadScores folder (given directly, through one of its
    files, or as the `heads score --out OUT` folder holding a single one), or a file."""
    p = Path(src)
    if p.is_file() and HeadScores.exists(p.parent):
        return p.parent
    if p.is_dir() and not HeadScores.exists(p):
        found = sorted(d for d in p.iterdir() if d.is_dir() and HeadScores.exists(d))
        if len(found) > 1:
            raise NeedleworkError(
                f"{p} holds {len(found)} head-score results ({', '.join(f.name for f in found[:4])})",
                "pass the result folder itself, e.g. " + str(found[0]),
            )
        if found:
            return found[0]
    if not p.exists():
        raise NeedleworkError(f"score file {p} not found", "pass the output folder of `needlework heads score` or a Wu et al. JSON")
    return p


def _clean_table(df: pd.DataFrame) -> pd.DataFrame:
    """Columns layer, head, mean (a `score` column renamed), query-head rows only, sorted."""
    if "mean" not in df.columns and "score" in df.columns:
        df = df.rename(columns={"score": "mean"})
    missing = [c for c in ("layer", "head", "mean") if c not in df.columns]
    if missing:
        raise NeedleworkError(f"score table lacks column(s) {', '.join(missing)}", "use a table written by `needlework heads score`")
    if "unit" in df.columns and (df["unit"] == "query").any():  # kv-head aggregates are a second view
        df = df[df["unit"] == "query"]
    return df.astype({"layer": int, "head": int}).sort_values(["layer", "head"]).reset_index(drop=True)


def load_scores(src: Scores | HeadScores | pd.DataFrame | str | os.PathLike) -> Scores:
    """The one reader of head scores, for comparison, plots and interventions alike.

    Args:
        src: Scores (returned as is), a HeadScores artifact, a heads table (DataFrame: layer, head, mean; `attrs["shape"]`
            when known), a `heads score`/`heads import` result folder or the folder above a single
            one, a heads.parquet, or a Wu et al. JSON file ({"L-H": [scores]}).
    Raises:
        NeedleworkError: missing file, unknown format, a table without layer/head/mean columns.
    """
    if isinstance(src, Scores):
        return src
    if isinstance(src, HeadScores):
        return scores_from_tables(src.per_example, _clean_table(src.heads), src.meta)
    if isinstance(src, pd.DataFrame):
        return scores_from_tables(None, _clean_table(src), {"shape": src.attrs.get("shape")})
    p = _result_path(src)
    if p.is_dir():
        return load_scores(HeadScores.read(p))
    if p.suffix == ".json":
        return scores_from_tables(None, _wu_table(p), {})
    if p.suffix != ".parquet":
        raise NeedleworkError(
            f"unknown score file format {p.suffix!r} ({p})", "use a heads-score folder, a table (.parquet) or a Wu et al. .json"
        )
    return scores_from_tables(None, _clean_table(pd.read_parquet(p)), {})  # a bare table: shape from its extent


def to_view(x: np.ndarray, s: Scores, view: str, agg: str) -> np.ndarray:
    """(..., L*H) query-head scores to the view's layout; kv: (..., L*n_kv) by `agg` over each group."""
    if view == "query" or s.view == "kv":
        return x
    g = s.n_heads // s.n_kv_heads
    y = x.reshape(*x.shape[:-1], s.n_layers, s.n_kv_heads, g)  # query head j -> kv head j // g
    y = y.max(-1) if agg == "max" else y.mean(-1)
    return y.reshape(*x.shape[:-1], s.n_layers * s.n_kv_heads)


def _rowwise(a: np.ndarray, b: np.ndarray, top, threshold) -> dict[str, np.ndarray]:
    """All statistics for rows of a, b (n, F)."""

    def cos(x, y):
        den = np.linalg.norm(x, axis=-1) * np.linalg.norm(y, axis=-1)
        return np.where(den > 0, (x * y).sum(-1) / np.where(den > 0, den, 1), np.nan)

    def centred(x):
        return x - x.mean(-1, keepdims=True)

    ra, rb = rankdata(a, axis=-1), rankdata(b, axis=-1)  # average ranks for ties, as scipy.spearmanr
    ha, hb = rank_mask(a, top, threshold), rank_mask(b, top, threshold)  # the selection rule of every stage
    inter, union = (ha & hb).sum(-1), (ha | hb).sum(-1)
    na, nb = ha.sum(-1), hb.sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return {
            "cosine": cos(a, b),
            "spearman": cos(centred(ra), centred(rb)),
            "recall": np.where(nb > 0, inter / nb, np.nan),
            "precision": np.where(na > 0, inter / na, np.nan),
            "jaccard": np.where(union > 0, inter / union, np.nan),
            "n_a": na.astype(float),
            "n_b": nb.astype(float),
            "n_common": inter.astype(float),
        }


def _boot_means(s: Scores, idx: np.ndarray) -> np.ndarray:
    """(n_boot, F) per-head means of the resampled examples; idx (n_boot, n) indices into rows."""
    x = np.nan_to_num(s.per_example)
    counts = np.stack([np.bincount(r, minlength=x.shape[0]) for r in idx]).astype(float)  # n_boot, n
    return counts @ x / idx.shape[1]


def compare(a: Scores, b: Scores, cfg: CompareConfig | None = None) -> pd.DataFrame:
    """Statistics of A against reference B, one row each: stat, value, lo, hi (bootstrap interval,
    NaN without per-example scores).

    Raises:
        NeedleworkError: the two tables come from models of different shapes.
    """
    cfg = cfg or CompareConfig()
    cfg.check()
    view = "kv" if "kv" in (a.view, b.view) else cfg.view
    dims = lambda s: (s.n_layers, s.n_kv_heads) if (view == "kv") else (s.n_layers, s.n_heads)  # noqa: E731
    if dims(a) != dims(b) or (view == "query" and a.n_kv_heads != b.n_kv_heads):
        raise NeedleworkError(
            f"the score tables come from models of different shapes ({a.n_layers}x{a.n_heads} heads, {a.n_kv_heads} kv "
            f"vs {b.n_layers}x{b.n_heads} heads, {b.n_kv_heads} kv)",
            "compare scores of the same base model (e.g. fine-tunes of one model), scored with the same view",
        )
    va, vb = to_view(a.means, a, view, cfg.kv_agg), to_view(b.means, b, view, cfg.kv_agg)
    point = {k: float(v[0]) for k, v in _rowwise(va[None], vb[None], cfg.top, cfg.threshold).items()}
    lo = hi = {k: np.nan for k in point}
    if cfg.n_boot > 0 and a.per_example is not None and b.per_example is not None:
        rng = np.random.default_rng(cfg.seed)
        if sorted(a.example_ids) == sorted(b.example_ids):  # paired: the same examples in both
            pos_b = {e: i for i, e in enumerate(b.example_ids)}
            ia = rng.integers(0, len(a.example_ids), size=(cfg.n_boot, len(a.example_ids)))
            ib = np.vectorize(lambda i: pos_b[a.example_ids[i]])(ia) if ia.size else ia
        else:
            ia = rng.integers(0, len(a.example_ids), size=(cfg.n_boot, len(a.example_ids)))
            ib = rng.integers(0, len(b.example_ids), size=(cfg.n_boot, len(b.example_ids)))
        ma = to_view(_boot_means(a, ia), a, view, cfg.kv_agg)
        mb = to_view(_boot_means(b, ib), b, view, cfg.kv_agg)
        boot = _rowwise(ma, mb, cfg.top, cfg.threshold)
        q = lambda x, p: float(np.nanquantile(x, p)) if np.isfinite(x).any() else np.nan  # noqa: E731
        lo = {k: q(v, cfg.alpha / 2) for k, v in boot.items()}
        hi = {k: q(v, 1 - cfg.alpha / 2) for k, v in boot.items()}
    rows = [{"stat": k, "value": point[k], "lo": lo[k], "hi": hi[k]} for k in STATS]
    df = pd.DataFrame(rows)
    df.attrs.update(view=view, top=cfg.top, threshold=cfg.threshold, n_boot=cfg.n_boot)
    return df


def compare_dirs(a: str | os.PathLike, b: str | os.PathLike, cfg: CompareConfig | None = None) -> pd.DataFrame:
    """`compare` on two result directories (written by `heads score` or `heads import`)."""
    return compare(load_scores(a), load_scores(b), cfg)
