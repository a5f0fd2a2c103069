"""Head sets and the one selection rule: top-k, threshold and explicit lists on hand-built tables,
ties broken by layer then head, and the compare and knockout paths picking the same set."""

import numpy as np
import pandas as pd
import pytest

from needlework.errors import NeedleworkError
from needlework.heads.compare import CompareConfig, compare, load_scores
from needlework.interventions.knockout import KnockoutConfig, choose_heads
from needlework.models.sites import HeadId, HeadSet, ModelShape, model_shape, rank_mask, select_heads

SHAPE = ModelShape(n_layers=3, n_heads=4, n_kv_heads=2, head_dim=8)


def _grid():
    # ties at 0.5: (0, 3), (1, 0), (2, 2); one head below every other
    return np.array([[0.1, 0.2, 0.0, 0.5], [0.5, 0.9, 0.3, 0.1], [0.2, 0.05, 0.5, 0.4]])


def _old_rule(df: pd.DataFrame, top=None, threshold=None) -> set[HeadId]:
    """The pandas rule knockout used before the one selection function (the oracle)."""
    d = df.sort_values(["mean", "layer", "head"], ascending=[False, True, True])
    d = d.head(top) if top is not None else d[d["mean"] > threshold]
    return {HeadId(int(l), int(h)) for l, h in zip(d["layer"], d["head"])}


def _df(grid):
    return pd.DataFrame([{"layer": l, "head": h, "mean": float(grid[l, h])} for l in range(grid.shape[0]) for h in range(grid.shape[1])])


def test_top_threshold_and_list_on_a_hand_built_table():
    g = _grid()
    assert select_heads(g, top=1) == {HeadId(1, 1)}
    # the 0.5 ties go in layer order, then head order: (0, 3) and (1, 0) before (2, 2)
    assert select_heads(g, top=3) == {HeadId(1, 1), HeadId(0, 3), HeadId(1, 0)}
    assert select_heads(g, threshold=0.4) == {HeadId(1, 1), HeadId(0, 3), HeadId(1, 0), HeadId(2, 2)}  # strictly above
    assert select_heads(g, heads="2-3,0-0") == {HeadId(2, 3), HeadId(0, 0)}
    assert select_heads(heads=[HeadId(1, 2)]) == {HeadId(1, 2)}
    assert select_heads(g, top=0) == set()
    with pytest.raises(NeedleworkError):
        select_heads(g, top=-1)
    with pytest.raises(NeedleworkError):
        select_heads(g)
    with pytest.raises(NeedleworkError):
        select_heads(None, top=2)


def test_heads_without_a_score_are_never_chosen_by_threshold_and_rank_last():
    g = _grid()
    g[1, 1] = np.nan
    assert HeadId(1, 1) not in select_heads(g, threshold=0.0)
    assert HeadId(1, 1) not in select_heads(g, top=11)
    assert HeadId(1, 1) in select_heads(g, top=12)


@pytest.mark.parametrize("seed", range(5))
def test_matches_the_previous_table_rule_with_ties(seed):
    rng = np.random.default_rng(seed)
    g = rng.integers(0, 4, size=(5, 6)) / 4.0  # many ties
    df = _df(g).sample(frac=1.0, random_state=seed)  # row order must not matter
    scores = load_scores(df)
    for k in (0, 1, 5, 13, 30):
        assert scores.select(top=k) == _old_rule(df, top=k)
    for t in (0.0, 0.25, 0.5):
        assert scores.select(threshold=t) == _old_rule(df, threshold=t)


def test_head_set_views():
    hs = HeadSet({HeadId(2, 1), HeadId(0, 3), HeadId(2, 0)})
    assert hs.by_layer() == {0: [3], 2: [0, 1]}
    m = hs.mask(SHAPE.n_layers, SHAPE.n_heads)
    assert m.sum() == 3 and m[0 * 4 + 3] and m[2 * 4 + 1]
    assert HeadSet.from_mask(m, SHAPE.n_heads) == hs
    assert hs.kv_heads(SHAPE) == {(0, 1), (2, 0)}
    assert rank_mask(np.array([[0.2, 0.1, 0.3]]), None, 0.1).tolist() == [[True, False, True]]


def test_compare_and_knockout_pick_the_same_set_from_the_same_scores():
    df = _df(_grid())
    df.attrs["shape"] = SHAPE.to_dict()
    scores = load_scores(df)
    for top, threshold in ((3, None), (5, None), (None, 0.25)):
        knock = choose_heads(scores, SHAPE, KnockoutConfig(top=top, threshold=threshold))
        # a reference whose own set is exactly `knock` under either rule: compare's set for `scores`
        # equals `knock` iff the two sets coincide (n_a == n_b == n_common)
        ref_df = _df(np.where(knock.mask(3, 4), 10.0 + scores.means, 0.0).reshape(3, 4))
        ref_df.attrs["shape"] = SHAPE.to_dict()
        ref = load_scores(ref_df)
        cfg = CompareConfig(top=top, threshold=threshold if threshold is not None else 0.1, n_boot=0)
        t = dict(zip(*compare(scores, ref, cfg)[["stat", "value"]].to_numpy().T))
        assert t["n_a"] == t["n_b"] == t["n_common"] == len(knock)


def test_site_table_resolves_one_module_per_layer(build_tiny):
    from needlework.models.sites import SITES, site

    model = build_tiny("llama")
    n = model_shape(model).n_layers
    for name in SITES:
        assert len(site(name).modules(model)) == n
    assert site("head_output").modules(model)[0] is model.model.layers[0].self_attn.o_proj
    with pytest.raises(NeedleworkError, match="unknown site"):
        site("mlp_output")
