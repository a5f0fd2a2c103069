"""Compare two head-score tables (SPEC §2): cosine, Spearman, and recall/precision/Jaccard of head
sets, with percentile bootstrap intervals over examples.

`compare(A, B)` treats B as the reference (e.g. the model trained on real data):
recall = |H_A ∩ H_B| / |H_B|, precision = |H_A ∩ H_B| / |H_A|, Jaccard = |∩| / |∪|. Head sets are
the heads with mean score above `threshold` (default 0.1, Wu et al.) or, with `top`, the `top`
highest (ties broken by layer, then head), through `models.sites.rank_mask`: the rule knockout
and patching select with (`sites.select_heads`). Bootstrap: resample example ids with replacement,
recompute every head's mean, recompute the statistics; when A and B were scored on the same
example ids the same resample serves both (paired), else each side is resampled on its own. Where
no interval can be computed (a side with mean scores only, no bootstrap, a statistic undefined in
every resample) the row's `why` says so and `lo`/`hi` are NaN; `attrs["interval"]` says how the
intervals were drawn.

Views: `query` compares query heads; `kv` first aggregates the query heads sharing a key/value
head (`kv_agg` = max, default: a kv head matters when any of its query heads retrieves, which is
what KV-cache methods such as DuoAttention act on; or mean).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
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
    note: str = ""  # why per_example is None, when it is (a comparison prints it instead of an interval)
    kv_known: bool = True  # False: the table did not say (a Wu et al. JSON); a comparison takes the other side's

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
    note = "" if mat is not None else _means_only(per, meta)
    return Scores(np.nan_to_num(means), mat, ids, L, H, kv, meta.get("view", "query"), known, note, "n_kv_heads" in shape)


def _means_only(per: pd.DataFrame | None, meta: dict) -> str:
    """Why a table has no per-example scores, in words."""
    if per is not None:
        return "no kept example"
    if meta.get("per_example_note"):
        return str(meta["per_example_note"])
    if meta.get("format") == "duo":
        return "a DuoAttention table: one mean per kv head"
    return "a table of means without per-example scores"


def wu_ids_path(path: str | os.PathLike) -> Path:
    """The example-id file written beside a Wu et al. JSON (`heads.json` -> `heads.example_ids.json`):
    their format has score lists but no ids, and comparisons pair examples by id."""
    p = Path(path)
    return p.with_suffix(".example_ids.json") if p.suffix == ".json" else p.with_name(p.name + ".example_ids.json")


def _wu_example_ids(path: Path, n: int, example_ids: list[str] | str | os.PathLike | None) -> tuple[list[str], str]:
    """The ids of the n examples of a Wu et al. JSON, and where they came from."""
    src = wu_ids_path(path) if example_ids is None else example_ids
    if isinstance(src, list):
        ids, origin = [str(i) for i in src], "given"
    elif Path(src).is_file():
        try:
            obj = json.loads(Path(src).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise NeedleworkError(f"cannot read example ids {src} ({e})", 'expect {"example_ids": [...]} or a JSON list') from None
        ids, origin = [str(i) for i in (obj.get("example_ids") if isinstance(obj, dict) else obj) or []], str(src)
    elif example_ids is not None:
        raise NeedleworkError(f"example-id file {src} not found", "pass the .example_ids.json written beside the Wu et al. JSON")
    else:  # no ids anywhere: positions stand in; two files of one run still pair
        return [f"wu{i}" for i in range(n)], "positions"
    if len(ids) != n or len(set(ids)) != n:
        raise NeedleworkError(
            f"{origin} names {len(ids)} example ids ({len(set(ids))} distinct) for {n} scores per head in {path}",
            "use the id file written with this JSON by `needlework heads export --format wu`",
        )
    return ids, origin


def read_wu(path: str | os.PathLike, example_ids: list[str] | str | os.PathLike | None = None) -> HeadScores:
    """Wu et al.'s retrieval-head JSON, {"L-H": [score per example, ...]}, as HeadScores (not written).

    Example ids come from `example_ids`, else the `.example_ids.json` beside the file (`wu_ids_path`),
    else the positions (`wu0`, `wu1`, ...). Lists of unequal length give means only (meta says why).

    Raises:
        NeedleworkError: unreadable file, malformed content, ids that do not fit the lists.
    """
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
        items = {HeadId.parse(k): [float(x) for x in (v if isinstance(v, list) else [v])] for k, v in raw.items()}
    except (OSError, json.JSONDecodeError, AttributeError, TypeError, ValueError) as e:
        raise NeedleworkError(f"{path} is not Wu et al.'s head JSON ({e})", 'expect {"L-H": [scores, ...]}') from None
    if not items:
        raise NeedleworkError(f"{path} holds no heads", 'expect {"L-H": [scores, ...]}')
    sizes = {len(v) for v in items.values()}
    heads = pd.DataFrame(
        [
            {"layer": h.layer, "head": h.head, "mean": float(np.mean(v)) if v else 0.0, "std": float(np.std(v)) if v else 0.0, "n": len(v)}
            for h, v in items.items()
        ],
        columns=["layer", "head", "mean", "std", "n"],
    )
    shape = {"n_layers": max(h.layer for h in items) + 1, "n_heads": max(h.head for h in items) + 1}
    meta: dict = {"imported_from": str(path), "format": "wu", "shape": shape, "view": "query"}
    if len(sizes) != 1:
        meta["per_example_note"] = f"Wu et al. lists of unequal length ({min(sizes)}..{max(sizes)}): examples cannot be matched"
        return HeadScores(heads=heads, per_example=None, meta=meta)
    n = sizes.pop()
    ids, origin = _wu_example_ids(path, n, example_ids)
    per = pd.DataFrame(
        [{"example_id": ids[i], "layer": h.layer, "head": h.head, "score": v[i], "kept": True} for h, v in items.items() for i in range(n)],
        columns=["example_id", "layer", "head", "score", "kept"],
    )
    meta.update(n_examples=n, example_ids_from=origin)
    return HeadScores(heads=heads, per_example=per, meta=meta)


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


def load_scores(src: Scores | HeadScores | pd.DataFrame | str | os.PathLike, criterion: str | None = None) -> Scores:
    """The one reader of head scores, for comparison, plots and interventions alike.

    Args:
        src: Scores (returned as is), a HeadScores artifact, a heads table (DataFrame: layer, head, mean; `attrs["shape"]`
            when known), a `heads score`/`heads import` result folder or the folder above a single
            one, a heads.parquet, or a Wu et al. JSON file ({"L-H": [scores]}).
        criterion: with a HeadScores (or its folder) scored with several criteria, the one to read
            (`HeadScores.criterion`); None: its primary `score`. Other sources hold one criterion.
    Raises:
        NeedleworkError: missing file, unknown format, a table without layer/head/mean columns, a
            criterion the scores do not hold.
    """
    if isinstance(src, HeadScores):
        src = src.criterion(criterion)
        return scores_from_tables(src.per_example, _clean_table(src.heads), src.meta)
    if criterion is not None and not (isinstance(src, (str, os.PathLike)) and _result_path(src).is_dir()):
        raise NeedleworkError(
            f"criterion {criterion!r} asked of scores that hold one criterion ({type(src).__name__})",
            "pass a heads-score folder scored with that criterion, or leave criterion unset",
        )
    if isinstance(src, Scores):
        return src
    if isinstance(src, pd.DataFrame):
        return scores_from_tables(None, _clean_table(src), {"shape": src.attrs.get("shape")})
    p = _result_path(src)
    if p.is_dir():
        return load_scores(HeadScores.read(p), criterion)
    if p.suffix == ".json":
        return load_scores(read_wu(p))
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


# why a statistic has no interval although both sides were resampled
_UNDEFINED = {
    "cosine": "A's or B's scores are all zero in every resample",
    "spearman": "A's or B's scores are constant in every resample",
    "recall": "B's head set is empty in every resample",
    "precision": "A's head set is empty in every resample",
    "jaccard": "both head sets are empty in every resample",
}


def _no_interval(a: Scores, b: Scores, cfg: CompareConfig) -> str:
    """Why no statistic gets an interval, or "" when the examples can be resampled."""
    if cfg.n_boot <= 0:
        return "no interval: no bootstrap (n_boot 0)"
    for side, s in (("A", a), ("B", b)):
        if s.per_example is None:
            return f"no interval: {side} has mean scores only ({s.note or 'no per-example scores'})"
        if not len(s.example_ids):
            return f"no interval: {side} has no kept example to resample"
    return ""


def _resample(a: Scores, b: Scores, cfg: CompareConfig) -> tuple[np.ndarray, np.ndarray, str]:
    """Row indices (n_boot, n) into A's and B's examples, and how they were drawn: one resample of
    the shared example ids serves both sides when A and B hold the same ids (paired), else each
    side is resampled on its own."""
    rng = np.random.default_rng(cfg.seed)
    n_a, n_b = len(a.example_ids), len(b.example_ids)
    ia = rng.integers(0, n_a, size=(cfg.n_boot, n_a))
    if sorted(a.example_ids) == sorted(b.example_ids):
        pos_b = {e: i for i, e in enumerate(b.example_ids)}
        to_b = np.asarray([pos_b[e] for e in a.example_ids], dtype=int)  # A's row i is B's row to_b[i]
        return ia, to_b[ia], f"paired bootstrap over the {n_a} examples both sides scored"
    ib = rng.integers(0, n_b, size=(cfg.n_boot, n_b))
    shared = len(set(a.example_ids) & set(b.example_ids))
    return ia, ib, f"unpaired bootstrap: A's {n_a} and B's {n_b} examples resampled separately ({shared} example ids in common)"


def compare(a: Scores, b: Scores, cfg: CompareConfig | None = None) -> pd.DataFrame:
    """Statistics of A against reference B, one row each: stat, value, lo, hi (bootstrap interval)
    and why (empty when the interval was computed, else the reason `lo`/`hi` are NaN: a side with
    mean scores only, no bootstrap, a statistic undefined in every resample). `attrs["interval"]`
    says how the intervals were drawn (paired or not) or why there are none.

    Raises:
        NeedleworkError: the two tables come from models of different shapes.
    """
    cfg = cfg or CompareConfig()
    cfg.check()
    if a.kv_known != b.kv_known and a.n_heads == b.n_heads:  # e.g. a Wu et al. JSON: the kv heads of the other side
        a, b = (
            (replace(a, n_kv_heads=b.n_kv_heads, kv_known=True), b)
            if b.kv_known
            else (a, replace(b, n_kv_heads=a.n_kv_heads, kv_known=True))
        )
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
    interval = _no_interval(a, b, cfg)
    why = {k: interval for k in point}
    if not interval:
        ia, ib, interval = _resample(a, b, cfg)
        ma = to_view(_boot_means(a, ia), a, view, cfg.kv_agg)
        mb = to_view(_boot_means(b, ib), b, view, cfg.kv_agg)
        boot = _rowwise(ma, mb, cfg.top, cfg.threshold)
        q = lambda x, p: float(np.nanquantile(x, p)) if np.isfinite(x).any() else np.nan  # noqa: E731
        lo = {k: q(v, cfg.alpha / 2) for k, v in boot.items()}
        hi = {k: q(v, 1 - cfg.alpha / 2) for k, v in boot.items()}
        why = {k: "" if np.isfinite(v).any() else _UNDEFINED.get(k, "undefined in every resample") for k, v in boot.items()}
    rows = [{"stat": k, "value": point[k], "lo": lo[k], "hi": hi[k], "why": why[k]} for k in STATS]
    df = pd.DataFrame(rows)
    df.attrs.update(view=view, top=cfg.top, threshold=cfg.threshold, n_boot=cfg.n_boot, alpha=cfg.alpha, interval=interval)
    return df


def compare_dirs(a: str | os.PathLike, b: str | os.PathLike, cfg: CompareConfig | None = None) -> pd.DataFrame:
    """`compare` on two result directories (written by `heads score` or `heads import`)."""
    criterion = cfg.criterion if cfg is not None else None
    return compare(load_scores(a, criterion), load_scores(b, criterion), cfg)
