"""Head selection, layer-matched random controls and patching sets."""

import json

import pandas as pd
import pytest

from needlework.artifacts import HeadScores
from needlework.errors import NeedleworkError
from needlework.heads.compare import load_scores
from needlework.interventions.heads import check_scores, patch_sets, random_layer_matched
from needlework.models.sites import HeadId, ModelShape, heads_by_layer, parse_head_list

SHAPE = ModelShape(n_layers=6, n_heads=8, n_kv_heads=2, head_dim=16)


def _table(shape=SHAPE, hot=()):
    rows = [
        {"layer": l, "head": h, "mean": 0.01 * ((l * 7 + h * 3) % 5), "std": 0.0, "n": 10}
        for l in range(shape.n_layers)
        for h in range(shape.n_heads)
    ]
    df = pd.DataFrame(rows)
    for i, (l, h) in enumerate(hot):
        df.loc[(df["layer"] == l) & (df["head"] == h), "mean"] = 0.9 - 0.01 * i
    return df


def test_select_top_threshold_and_list():
    hot = [(4, 1), (4, 5), (5, 0), (2, 7)]
    df = _table(hot=hot)
    scores = load_scores(df)
    assert scores.select(top=3) == {HeadId(4, 1), HeadId(4, 5), HeadId(5, 0)}
    assert scores.select(threshold=0.5) == {HeadId(*x) for x in hot}
    assert scores.select(top=3, threshold=0.5) == {HeadId(*x) for x in hot}  # a threshold overrides top
    assert scores.select(top=3, heads="4-1, 5-0") == {HeadId(4, 1), HeadId(5, 0)}  # a list overrides both
    assert parse_head_list("4-1, 5-0") == {HeadId(4, 1), HeadId(5, 0)}
    with pytest.raises(NeedleworkError):
        parse_head_list("4:1")
    with pytest.raises(NeedleworkError):
        scores.select()


def test_random_controls_layer_matched_disjoint_reproducible():
    top = frozenset({HeadId(4, 1), HeadId(4, 5), HeadId(5, 0), HeadId(2, 7)})
    draws = [random_layer_matched(top, SHAPE, seed=s) for s in range(5)]
    for r in draws:
        assert len(r) == len(top) and not (r & top)
        assert {l: len(v) for l, v in heads_by_layer(r).items()} == {l: len(v) for l, v in heads_by_layer(top).items()}
    assert random_layer_matched(top, SHAPE, seed=3) == draws[3]  # reproducible by seed
    assert len(set(draws)) > 1  # and seeds differ


def test_random_controls_fill_a_full_layer_from_its_neighbours():
    full = frozenset(HeadId(3, h) for h in range(SHAPE.n_heads)) | {HeadId(1, 0)}
    r = random_layer_matched(full, SHAPE, seed=0)
    assert len(r) == len(full) and not (r & full)
    layers = [h.layer for h in r]
    assert layers.count(1) >= 1 and all(abs(l - 3) <= 1 or l == 1 for l in layers)


def test_load_scores_from_folder_and_wu_json(tmp_path):
    df = _table(hot=[(4, 1)])
    HeadScores(heads=df, meta={"shape": SHAPE.to_dict()}).write(tmp_path / "run")
    got = load_scores(tmp_path / "run")
    assert got.select(top=1) == {HeadId(4, 1)}
    assert load_scores(tmp_path).select(top=1) == {HeadId(4, 1)}  # `heads score --out` parent folder
    wu = {f"{l}-{h}": [0.8, 1.0] if (l, h) == (4, 1) else [0.0, 0.1] for l in range(6) for h in range(8)}
    (tmp_path / "wu.json").write_text(json.dumps(wu))
    got = load_scores(tmp_path / "wu.json")
    assert got.grid()[4, 1] == pytest.approx(0.9)
    check_scores(got, SHAPE)
    with pytest.raises(NeedleworkError, match="not found"):
        load_scores(tmp_path / "missing.json")


def test_score_table_of_another_shape_is_refused():
    other = _table(ModelShape(n_layers=30, n_heads=9, n_kv_heads=3, head_dim=64))
    with pytest.raises(NeedleworkError, match="30 layers x 9 heads"):
        check_scores(load_scores(other), SHAPE)


def test_heads_out_of_range_are_refused():
    with pytest.raises(NeedleworkError, match="do not exist"):
        random_layer_matched({HeadId(6, 0)}, SHAPE, seed=0)
    with pytest.raises(NeedleworkError, match="do not exist"):
        patch_sets("2-9", frozenset(), frozenset(), SHAPE)


def test_patch_sets():
    src = frozenset({HeadId(4, 1), HeadId(4, 5), HeadId(5, 0)})
    tgt = frozenset({HeadId(4, 1), HeadId(2, 2)})
    assert patch_sets("intersection", src, tgt, SHAPE) == {"intersection": {HeadId(4, 1)}}
    assert patch_sets("complement", src, tgt, SHAPE) == {"complement": {HeadId(4, 5), HeadId(5, 0)}}
    assert len(patch_sets("all", src, tgt, SHAPE)["all"]) == 48
    rnd = patch_sets("random", src, tgt, SHAPE, seeds=range(3))
    assert sorted(rnd) == ["random_0", "random_1", "random_2"]
    for r in rnd.values():  # matches the complement's layers, avoids both models' retrieval heads
        assert sorted(h.layer for h in r) == [4, 5] and not (r & (src | tgt))
    assert patch_sets("3-1,0-0", src, tgt, SHAPE) == {"list": {HeadId(3, 1), HeadId(0, 0)}}
    # several named kinds in one call: the union of the single-kind results, for one patching pass
    both = patch_sets("intersection,complement,random", src, tgt, SHAPE, seeds=range(2))
    assert both == {
        **patch_sets("intersection", src, tgt, SHAPE),
        **patch_sets("complement", src, tgt, SHAPE),
        **patch_sets("random", src, tgt, SHAPE, seeds=range(2)),
    }
    with pytest.raises(NeedleworkError):
        patch_sets("bogus", src, tgt, SHAPE)


def test_shape_recorded_by_the_heads_stage_is_checked(tmp_path):
    d = tmp_path / "run"
    HeadScores(heads=_table(), meta={"shape": {"n_layers": 7, "n_heads": 8, "n_kv_heads": 2}, "view": "query"}).write(d)
    with pytest.raises(NeedleworkError, match="7 layers x 8 heads"):
        check_scores(load_scores(d / HeadScores.FILES["heads"].name), SHAPE)  # a file of the folder names the folder
    HeadScores(heads=_table(), meta={"shape": SHAPE.to_dict(), "view": "kv"}).write(d)
    with pytest.raises(NeedleworkError, match="key/value-head"):
        check_scores(load_scores(d), SHAPE)


def test_each_set_gets_its_own_size_and_layer_matched_random_control():
    # a 3-head intersection and a 1-head complement: each control matches ITS set, so a large
    # intersection is never compared with random sets of the complement's size
    src = frozenset({HeadId(4, 1), HeadId(4, 5), HeadId(5, 0), HeadId(2, 3)})
    tgt = frozenset({HeadId(4, 1), HeadId(4, 5), HeadId(5, 0), HeadId(1, 1)})
    sets = patch_sets("intersection,complement,random", src, tgt, SHAPE, seeds=range(3), random_like="each")
    inter, comp = sets["intersection"], sets["complement"]
    assert len(inter) == 3 and comp == {HeadId(2, 3)}
    assert sorted(k for k in sets if k.startswith("random_")) == [
        f"random_{k}_{s}" for k in ("complement", "intersection") for s in range(3)
    ]
    for s in range(3):
        ri, rc = sets[f"random_intersection_{s}"], sets[f"random_complement_{s}"]
        assert len(ri) == 3 and sorted(h.layer for h in ri) == sorted(h.layer for h in inter)
        assert len(rc) == 1 and [h.layer for h in rc] == [2]
        assert not (ri | rc) & (src | tgt)  # never a retrieval head of either model
    assert len({sets[f"random_intersection_{s}"] for s in range(3)}) > 1  # seeds differ
    # only the kinds patched get a control; `random` alone controls both; an empty set gets none
    assert sorted(k for k in patch_sets("intersection,random", src, tgt, SHAPE, range(2), "each") if k.startswith("random")) == [
        "random_intersection_0",
        "random_intersection_1",
    ]
    assert len(patch_sets("random", src, tgt, SHAPE, range(2), "each")) == 4
    assert "random_complement_0" not in patch_sets("random", src, src, SHAPE, range(1), "each")
    with pytest.raises(NeedleworkError, match="random_like"):
        patch_sets("random", src, tgt, SHAPE, random_like="bogus")
