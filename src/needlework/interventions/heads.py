"""Head sets for interventions: check a score table against the model, draw layer-matched random
controls, and build the patching sets of SPEC §2. Scores are read by `heads.compare.load_scores`
and heads selected by `models.sites.select_heads` (the rule `heads compare` uses too).

A head set is a `models.sites.HeadSet` of query heads. Random controls are drawn from the SAME layers
as the set they control for, with the same count per layer and excluding the set, so that a
difference between "top" and "random" cannot come from which layers were hit.
"""

from __future__ import annotations

import random
from collections.abc import Iterable

from needlework.errors import NeedleworkError
from needlework.heads.compare import Scores
from needlework.models.sites import HeadId, HeadSet, ModelShape, heads_by_layer, parse_head_list

PATCH_SETS = ("intersection", "complement", "random", "all")


def check_scores(scores: Scores, shape: ModelShape) -> None:
    """Raise NeedleworkError unless `scores` are query-head scores of a model of `shape` (the shape
    recorded in the heads stage's meta.json when present, else the table's layer/head range)."""
    if scores.view == "kv":
        raise NeedleworkError(
            "the score table holds key/value-head scores only (view: kv)",
            "interventions act on query heads: score the model with `needlework heads score`",
        )
    if (scores.n_layers, scores.n_heads) != (shape.n_layers, shape.n_heads):
        raise NeedleworkError(
            f"the score table covers {scores.n_layers} layers x {scores.n_heads} heads, but the model has "
            f"{shape.n_layers} layers x {shape.n_heads} query heads",
            "score heads on this model (`needlework heads score`) or pass the score file of the same base model",
        )


def random_layer_matched(heads: Iterable[HeadId], shape: ModelShape, seed: int, exclude: Iterable[HeadId] | None = None) -> HeadSet:
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
            raise NeedleworkError(
                f"cannot draw {len(heads)} random heads outside the set: the model has too few heads", "use a smaller head set"
            )
        h = rng.choice(free[near[0]])
        free[near[0]].remove(h)
        picked.add(HeadId(near[0], h))
    return HeadSet(picked)


NAMED_SETS = ("intersection", "complement", "random", "all")
MATCHABLE = ("intersection", "complement")  # the sets `random_like="each"` draws a control for
RANDOM_LIKE = ("each", *MATCHABLE)


def random_controls(
    kinds: Iterable[str], heads_source: frozenset[HeadId], heads_target: frozenset[HeadId], shape: ModelShape, seeds: Iterable[int]
) -> dict[str, HeadSet]:
    """Size- and layer-matched random sets per named set (`random_<kind>_<seed>`), none of them
    holding either model's retrieval heads where the layers allow: a set of 16 heads is compared
    with random sets of 16 in the same layers, not with the controls of another set's size.
    Empty sets get no control (patching nothing needs none)."""
    named = {"intersection": heads_source & heads_target, "complement": heads_source - heads_target}
    out: dict[str, HeadSet] = {}
    for k in kinds:
        ref = named[k]
        for s in seeds if ref else ():
            out[f"random_{k}_{s}"] = random_layer_matched(ref, shape, s, exclude=heads_source | heads_target | ref)
    return out


def patch_sets(
    kind: str,
    heads_source: frozenset[HeadId],
    heads_target: frozenset[HeadId],
    shape: ModelShape,
    seeds: Iterable[int] = (0,),
    random_like: str = "complement",
) -> dict[str, HeadSet]:
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
        random_like: `each` (a control per named set: every intersection / complement patched
            gets its own size- and layer-matched random sets, `random_<kind>_<seed>`; with
            `random` alone, both), or `complement` / `intersection`: one control matching that
            set, `random_<seed>` (an empty complement falls back to the intersection).
    Returns:
        {name: head set}.
    """
    shape.check(heads_source | heads_target)
    if random_like not in RANDOM_LIKE:
        raise NeedleworkError(f"unknown random_like {random_like!r}", f"use one of {', '.join(RANDOM_LIKE)}")
    kinds = [k.strip() for k in kind.split(",")]
    if len(kinds) > 1 and all(k in NAMED_SETS for k in kinds):  # several kinds: one pass, one set each
        out: dict[str, HeadSet] = {}
        for k in kinds:
            if k == "random" and random_like == "each":
                matched = [m for m in kinds if m in MATCHABLE] or list(MATCHABLE)
                out.update(random_controls(matched, heads_source, heads_target, shape, seeds))
            else:
                out.update(patch_sets(k, heads_source, heads_target, shape, seeds, random_like))
        return out
    if kind == "intersection":
        return {"intersection": HeadSet(heads_source & heads_target)}
    if kind == "complement":
        return {"complement": HeadSet(heads_source - heads_target)}
    if kind == "all":
        return {"all": HeadSet(shape.all_heads())}
    if kind == "random" and random_like == "each":
        return random_controls(list(MATCHABLE), heads_source, heads_target, shape, seeds)
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
    """`L-H,...` in sorted order: the list syntax `parse_head_list` reads back."""
    return ",".join(str(h) for h in sorted(heads))


def describe(heads: Iterable[HeadId]) -> dict:
    """JSON-able description of a head set: size, the sorted `L-H` list and the count per layer."""
    hs = sorted(heads)
    return {"n_heads": len(hs), "heads": [str(h) for h in hs], "per_layer": {str(l): len(v) for l, v in heads_by_layer(hs).items()}}
