"""Head-set statistics on hand-built sets, cosine/Spearman against scipy, bootstrap intervals."""

import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr

from needlework.errors import NeedleworkError
from needlework.heads.compare import CompareConfig, Scores, compare, scores_from_tables, to_view
from needlework.models.sites import rank_mask


def _scores(means, per=None, shape=(2, 4, 2), ids=None, view="query"):
    L, H, K = shape
    return Scores(np.asarray(means, float), per, ids or [], L, H, K, view)


def _table(df):
    return dict(zip(df.stat, df.value))


def test_head_sets_on_hand_built_sets():
    # A = {0, 1, 2}, B = {1, 2, 3, 4}  (threshold 0.1): recall 2/4, precision 2/3, Jaccard 2/5
    a = [0.5, 0.4, 0.3, 0.0, 0.05, 0, 0, 0]
    b = [0.0, 0.2, 0.9, 0.3, 0.6, 0, 0, 0]
    t = _table(compare(_scores(a), _scores(b), CompareConfig(n_boot=0)))
    assert (t["recall"], t["precision"], t["jaccard"]) == pytest.approx((0.5, 2 / 3, 0.4))
    assert (t["n_a"], t["n_b"], t["n_common"]) == (3, 4, 2)
    # top 2: A = {0, 1}, B = {2, 4}: no overlap
    t = _table(compare(_scores(a), _scores(b), CompareConfig(top=2, n_boot=0)))
    assert t["jaccard"] == 0 and t["n_a"] == 2
    assert rank_mask(np.array([0.2, 0.1, 0.3]), None, 0.1).tolist() == [True, False, True]  # strictly above


def test_cosine_and_spearman_match_scipy():
    rng = np.random.default_rng(0)
    a, b = rng.random(8), rng.random(8)
    a[3] = a[5]  # a tie: Spearman uses average ranks
    t = _table(compare(_scores(a), _scores(b), CompareConfig(n_boot=0)))
    assert t["cosine"] == pytest.approx(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
    assert t["spearman"] == pytest.approx(spearmanr(a, b).statistic)


def test_kv_view_aggregates_groups():
    s = _scores([0.1, 0.5, 0.2, 0.0, 1, 1, 0, 0.4])  # 2 layers x 4 heads, 2 kv heads (group of 2)
    assert to_view(s.means, s, "kv", "max").tolist() == [0.5, 0.2, 1.0, 0.4]
    assert to_view(s.means, s, "kv", "mean").tolist() == pytest.approx([0.3, 0.1, 1.0, 0.2])


def test_bootstrap_intervals_contain_point_estimate():
    rng = np.random.default_rng(1)
    base = rng.random(8) * 0.4
    pa = np.clip(base + rng.normal(0, 0.05, (40, 8)), 0, None)
    pb = np.clip(base + rng.normal(0, 0.05, (40, 8)), 0, None)
    ids = [f"e{i}" for i in range(40)]
    df = compare(_scores(pa.mean(0), pa, ids=ids), _scores(pb.mean(0), pb, ids=ids), CompareConfig(n_boot=300))
    for r in df.itertuples():
        if r.stat in ("cosine", "spearman", "n_a", "n_b"):
            assert r.lo <= r.value <= r.hi, r
    assert df.set_index("stat").loc["cosine", "hi"] > df.set_index("stat").loc["cosine", "lo"]


def test_shape_mismatch_is_an_error():
    with pytest.raises(NeedleworkError, match="different shapes"):
        compare(_scores(np.zeros(8)), _scores(np.zeros(12), shape=(3, 4, 2)))
    with pytest.raises(NeedleworkError, match="different shapes"):
        compare(_scores(np.zeros(8)), _scores(np.zeros(8), shape=(2, 4, 1)))


def test_scores_from_tables_keeps_only_kept_examples():
    per = pd.DataFrame(
        {
            "example_id": ["x", "x", "y", "y"],
            "layer": 0,
            "head": [0, 1, 0, 1],
            "score": [1.0, 0.0, 0.0, 0.0],
            "kept": [True, True, False, False],
        }
    )
    heads = pd.DataFrame({"layer": [0, 0], "head": [0, 1], "mean": [1.0, 0.0]})
    s = scores_from_tables(per, heads, {"shape": {"n_layers": 1, "n_heads": 2, "n_kv_heads": 1}})
    assert s.example_ids == ["x"] and s.per_example.tolist() == [[1.0, 0.0]] and s.n_kv_heads == 1
