"""Head sets for interventions: read a score table, select heads (top-k, threshold, explicit list),
draw layer-matched random controls, and build the patching sets of SPEC §2.

A head set is a `frozenset[HeadId]` of query heads. Random controls are drawn from the SAME layers
as the set they control for, with the same count per layer and excluding the set, so that a
difference between "top" and "random" cannot come from which layers were hit.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Iterable

from needlework.errors import NeedleworkError
from needlework.models.sites import HeadId, ModelShape, heads_by_layer

PATCH_SETS = ("intersection", "complement", "random", "all")


def _table_from_wu_json(path: Path):
    """Wu et al.'s retrieval-head JSON: {"L-H": [per-example scores, ...], ...}."""
    import numpy as np
    import pandas as pd

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
        rows.append({"layer": h.layer, "head": h.head, "mean": float(v.mean()) if v.size else 0.0,
                     "std": float(v.std()) if v.size else 0.0, "n": int(v.size)})
    return pd.DataFrame(rows)


def load_scores(src) -> "object":
    """A head-score table with columns layer, head, mean (std, n when known).

    Args:
        src: a DataFrame, a `needlework heads score` output folder (heads.parquet), a parquet file,
            or a Wu et al. JSON file ({"L-H": [scores]}).
    Returns:
        pandas DataFrame sorted by (layer, head).
    Raises:
        NeedleworkError: missing file, unknown format, or a table without layer/head/mean columns.
    """
    import pandas as pd

    if isinstance(src, pd.DataFrame):
        df = src.copy()
    else:
        p = Path(src)
        if p.is_dir() and not (p / "heads.parquet").exists():
            # `heads score --out OUT` writes OUT/<hash>/: accept OUT when it holds a single result
            found = sorted(p.glob("*/heads.parquet"))
            if len(found) > 1:
                raise NeedleworkError(f"{p} holds {len(found)} head-score results ({', '.join(f.parent.name for f in found[:4])})",
                                      "pass the result folder itself, e.g. " + str(found[0].parent))
            p = found[0] if found else p / "heads.parquet"
        elif p.is_dir():
            p = p / "heads.parquet"
        if not p.exists():
            raise NeedleworkError(f"score file {p} not found", "pass the output folder of `needlework heads score` or a Wu et al. JSON")
        if p.suffix == ".json":
            df = _table_from_wu_json(p)
        elif p.suffix == ".parquet":
            df = pd.read_parquet(p)
            meta = _read_meta(p.parent / "meta.json")
            if meta.get("view") == "kv":
                raise NeedleworkError(f"{p} holds key/value-head scores only (view: kv)",
                                      "interventions act on query heads: score the model with `needlework heads score`")
            if isinstance(meta.get("shape"), dict):
                df.attrs["shape"] = meta["shape"]
        else:
            raise NeedleworkError(f"unknown score file format {p.suffix!r} ({p})", "use heads.parquet or a Wu et al. .json")
    if "mean" not in df.columns and "score" in df.columns:
        df = df.rename(columns={"score": "mean"})
    missing = [c for c in ("layer", "head", "mean") if c not in df.columns]
    if missing:
        raise NeedleworkError(f"score table lacks column(s) {', '.join(missing)}", "use a table written by `needlework heads score`")
    if "unit" in df.columns and (df["unit"] == "query").any():  # kv-head aggregates are a second view
        df = df[df["unit"] == "query"]
    df = df.astype({"layer": int, "head": int})
    return df.sort_values(["layer", "head"]).reset_index(drop=True)


def _read_meta(path: Path) -> dict:
    try:
        return json.loads(path.read_text()) if path.exists() else {}
    except (OSError, json.JSONDecodeError):
        return {}


def check_table_shape(df, shape: ModelShape) -> None:
    """Raise NeedleworkError when a score table does not come from a model of `shape` (the shape
    recorded in the heads stage's meta.json when present, else the table's layer/head range)."""
    n_layers, n_heads = int(df["layer"].max()) + 1, int(df["head"].max()) + 1
    known = df.attrs.get("shape") or {}
    n_layers, n_heads = int(known.get("n_layers", n_layers)), int(known.get("n_heads", n_heads))
    if (n_layers, n_heads) != (shape.n_layers, shape.n_heads) or df["layer"].min() < 0 or df["head"].min() < 0:
        raise NeedleworkError(
            f"the score table covers {n_layers} layers x {n_heads} heads, but the model has "
            f"{shape.n_layers} layers x {shape.n_heads} query heads",
            "score heads on this model (`needlework heads score`) or pass the score file of the same base model",
        )


def parse_head_list(text: str) -> frozenset[HeadId]:
    """`"17-3,18-0"` -> {HeadId(17, 3), HeadId(18, 0)}; raises NeedleworkError on bad items."""
    items = [s for s in text.replace(" ", "").split(",") if s]
    if not items:
        raise NeedleworkError("empty head list", "write heads as LAYER-HEAD,..., e.g. 17-3,18-0")
    return frozenset(HeadId.parse(s) for s in items)


def select_heads(df, top: int | None = None, threshold: float | None = None) -> frozenset[HeadId]:
    """The top-`top` heads by mean score (ties: lower layer, then lower head first), or every head
    whose mean exceeds `threshold` (SPEC §2, default threshold of Wu et al. is 0.1). Exactly one
    of the two must be given."""
    if (top is None) == (threshold is None):
        raise NeedleworkError("give exactly one of --top K or --threshold T", "e.g. --top 10")
    d = df.sort_values(["mean", "layer", "head"], ascending=[False, True, True])
    if top is not None:
        if top < 0:
            raise NeedleworkError(f"--top must be >= 0, got {top}", "e.g. --top 10")
        d = d.head(top)
    else:
        d = d[d["mean"] > threshold]
    return frozenset(HeadId(int(l), int(h)) for l, h in zip(d["layer"], d["head"]))


def random_layer_matched(heads: Iterable[HeadId], shape: ModelShape, seed: int,
                         exclude: Iterable[HeadId] | None = None) -> frozenset[HeadId]:
    """Random heads with the same count per layer as `heads`, none of them in `exclude` (default:
    `heads` itself), reproducible by `seed`.

    When a layer has fewer free heads than needed (e.g. 5 of its 9 heads are in the set), the
    shortfall is drawn from the nearest layers that still have free heads (lower layer first on
    ties), so the size always matches and the layer profile stays as close as possible.
    Raises NeedleworkError when the model has too few free heads in total.
    """
    heads = frozenset(heads)
    shape.check(heads)
    taken = set(heads if exclude is None else frozenset(exclude) | heads)
    rng = random.Random(seed)
    free = {l: [h for h in range(shape.n_heads) if HeadId(l, h) not in taken] for l in range(shape.n_layers)}
    picked: set[HeadId] = set()
    shortfall: list[int] = []
    for layer, hs in sorted(heads_by_layer(heads).items()):
        k = min(len(hs), len(free[layer]))
        for h in rng.sample(free[layer], k):
            picked.add(HeadId(layer, h))
            free[layer].remove(h)
        shortfall += [layer] * (len(hs) - k)
    for layer in shortfall:
        near = sorted((l for l in free if free[l]), key=lambda l: (abs(l - layer), l))
        if not near:
            raise NeedleworkError(f"cannot draw {len(heads)} random heads outside the set: the model has too few heads",
                                  "use a smaller head set")
        h = rng.choice(free[near[0]])
        free[near[0]].remove(h)
        picked.add(HeadId(near[0], h))
    return frozenset(picked)


NAMED_SETS = ("intersection", "complement", "random", "all")


def patch_sets(kind: str, heads_source: frozenset[HeadId], heads_target: frozenset[HeadId], shape: ModelShape,
               seeds: Iterable[int] = (0,), random_like: str = "complement") -> dict[str, frozenset[HeadId]]:
    """Named head sets for patching (SPEC §2).

    Args:
        kind: `intersection` (retrieval heads of both models), `complement` (source-only
            retrieval heads, e.g. real-only), `random` (layer-matched to the `random_like` set, one
            per seed, excluding both models' retrieval heads where the layers allow), `all` (every
            head), or an explicit list `L-H,...`.
            Several named kinds may be given comma-separated (`intersection,complement,random`).
        heads_source, heads_target: the retrieval-head sets of the two models.
        shape: the (shared) model shape; every head is checked against it.
        seeds: seeds of the random sets.
        random_like: `complement` or `intersection`: which set the random sets match in size
            and layers (an empty complement falls back to the intersection).
    Returns:
        {name: head set}; random sets are named `random_<seed>`.
    """
    shape.check(heads_source | heads_target)
    kinds = [k.strip() for k in kind.split(",")]
    if len(kinds) > 1 and all(k in NAMED_SETS for k in kinds):  # several kinds: one pass, one set each
        out: dict[str, frozenset[HeadId]] = {}
        for k in kinds:
            out.update(patch_sets(k, heads_source, heads_target, shape, seeds, random_like))
        return out
    if kind == "intersection":
        return {"intersection": heads_source & heads_target}
    if kind == "complement":
        return {"complement": heads_source - heads_target}
    if kind == "all":
        return {"all": frozenset(shape.all_heads())}
    if kind == "random":
        ref = heads_source - heads_target if random_like == "complement" else heads_source & heads_target
        if not ref:
            ref = heads_source & heads_target or heads_source - heads_target
        return {f"random_{s}": random_layer_matched(ref, shape, s, exclude=heads_source | heads_target | ref) for s in seeds}
    if "-" in kind:
        heads = parse_head_list(kind)
        shape.check(heads)
        return {"list": heads}
    raise NeedleworkError(f"unknown head set {kind!r}", f"use one of {', '.join(PATCH_SETS)} or a list like 17-3,18-0")


def heads_to_str(heads: Iterable[HeadId]) -> str:
    return ",".join(str(h) for h in sorted(heads))


def describe(heads: Iterable[HeadId]) -> dict:
    """JSON-able description of a head set: size, the sorted `L-H` list and the count per layer."""
    hs = sorted(heads)
    return {"n_heads": len(hs), "heads": [str(h) for h in hs],
            "per_layer": {str(l): len(v) for l, v in heads_by_layer(hs).items()}}
