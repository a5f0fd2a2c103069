"""Every criterion in one teacher forward (issue 14): `score_groups` with `criteria` gives, per
criterion, what that criterion scored alone gives (the retrieval, insight and mass counts exactly;
query and output within the tolerances of test_criteria.py, against the slow references), from ONE
forward of the decoder per batch; records that one criterion cannot score are still scored by the
others; the criteria tables round-trip through HeadScores and feed knockout's head choice."""

import copy

import numpy as np
import pytest

from criteria_reference import by_head, output_tol, query_rtol, query_tol, reference_output, reference_query
from heads_helpers import ARCHS
from needlework.artifacts import HeadScores
from needlework.errors import NeedleworkError
from needlework.heads.compare import load_scores
from needlework.heads.score import ScoreConfig, head_table, score_examples, score_groups
from needlework.models.sites import model_shape
from test_criteria import DOCS, GOLD, _batch, _examples, _model

ALL = ["retrieval", "insight", "mass", "query", "output"]


def _groups(exs):
    """Per example: the span criteria's Example (S = its needle span) and the query score's (S =
    the gold document, keys compared with every document), same tokens."""
    out = []
    for e in exs:
        span_ex = copy.copy(e)
        span_ex.span = list(range(2, 14)) if e.id == "ex1" else list(range(5, 17)) if e.id == "ex0" else list(range(10, 22))
        out.append({c: (e if c == "query" else span_ex) for c in ALL})
    return out


def _count_forwards(model) -> list[int]:
    calls = []
    model.get_decoder().register_forward_hook(lambda *_: calls.append(1))
    return calls


@pytest.mark.parametrize("arch", ARCHS)
def test_all_criteria_in_one_forward_equal_each_alone(arch):
    model, exs = _model(arch), _examples()
    groups = _groups(exs)
    b = _batch(arch, "teacher")
    cfg = ScoreConfig(score="retrieval", criteria=ALL[1:], batch_size=b)
    calls = _count_forwards(model)
    together = score_groups(model, groups, cfg)
    assert len(calls) == -(-len(exs) // b)  # one forward per batch for all five criteria
    assert set(together) == set(ALL)
    for c in ("retrieval", "insight", "mass"):
        alone = score_examples(model, [g[c] for g in groups], ScoreConfig(score=c, batch_size=b))
        assert together[c].hits.tolist() == pytest.approx(alone.hits.tolist(), abs=0 if c != "mass" else None), c
        if c == "mass":  # float32 masses from row logits computed beside other rows: query's tolerance
            for e in exs:
                a, t = by_head(alone, e.id, "hits"), by_head(together[c], e.id, "hits")
                assert all(abs(a[k] - t[k]) <= query_tol(query_rtol(model, e), e, a[k], 1.0) for k in a), (arch, e.id)
    assert together["retrieval"].hits.sum() > 0  # heads do copy from the span here: not all zeros
    for e in exs:
        ref, _hits, doc_mass = reference_query(model, e.prompt_ids, e.query_rows, GOLD, DOCS, "documents")
        got = by_head(together["query"], e.id, "score")
        assert all(abs(got[k] - ref[k]) <= query_tol(query_rtol(model, e), e, ref[k], doc_mass[k]) for k in ref), (arch, e.id)
        p0 = len(e.prompt_ids)
        ref, size = reference_output(
            model, e.prompt_ids + e.answer_ids, list(range(p0 - 1, p0 - 1 + len(e.answer_ids))), e.answer_ids, "mean"
        )
        got = by_head(together["output"], e.id, "hits")
        assert all(abs(got[k] - ref[k]) <= output_tol(model, p0 + len(e.answer_ids), size[k]) for k in ref), (arch, e.id)
        sub = together["query"][together["query"].example_id == e.id]
        assert (sub.n_steps == len(e.query_rows)).all() and (sub.span_tokens == len(GOLD)).all()


def test_a_record_one_criterion_skips_is_scored_by_the_others():
    model, exs = _model("llama"), _examples()
    groups = _groups(exs)
    del groups[1]["query"]  # e.g. no gold document
    res = score_groups(model, groups, ScoreConfig(score="query", criteria=["retrieval"], batch_size=3))
    assert set(res["query"].example_id) == {"ex0", "ex2"}
    assert set(res["retrieval"].example_id) == {"ex0", "ex1", "ex2"}


def test_generate_mode_scores_each_criterion_as_alone():
    model, exs = _model("llama"), _examples()
    groups = _groups(exs)
    cfg = ScoreConfig(mode="generate", score="output", criteria=["retrieval"], max_new_tokens=3, stop_on_newline=False)
    res = score_groups(model, groups, cfg)
    for c in ("output", "retrieval"):
        alone = score_examples(
            model, [g[c] for g in groups], ScoreConfig(mode="generate", score=c, max_new_tokens=3, stop_on_newline=False)
        )
        assert res[c].answer.tolist() == alone.answer.tolist()
        assert np.allclose(res[c].hits, alone.hits, rtol=0, atol=0)  # the same decoding, the same arithmetic


def test_criteria_are_checked():
    for bad, why in (({"criteria": ["copy"]}, "unknown criterion"), ({"criteria": ["query", "query"]}, "twice")):
        with pytest.raises(NeedleworkError, match=why):
            ScoreConfig.from_dict(bad).check()
    assert ScoreConfig(score="query", criteria=["retrieval", "query"]).all_criteria() == ["query", "retrieval"]
    assert ScoreConfig(score="mass", spans="answer", criteria=["query", "insight"]).for_criterion("insight").spans == "answer"
    assert ScoreConfig(score="mass", spans="answer", criteria=["query"]).for_criterion("query").spans == "auto"


def test_criteria_tables_round_trip_and_choose_knockout_heads(tmp_path):
    """A HeadScores holding retrieval and query: `criterion("query")` is the query table, and
    `load_scores(..., criterion)` (knockout's and patching's reader) ranks by it."""
    model, exs = _model("llama"), _examples()
    res = score_groups(model, _groups(exs), ScoreConfig(score="retrieval", criteria=["query"], batch_size=3))
    shape = model_shape(model)
    tables = {c: head_table(res[c], shape) for c in res}
    crit_heads = tables["query"].assign(criterion="query")
    crit_per = res["query"].assign(criterion="query")
    meta = {"shape": shape.to_dict(), "options": {"score": "retrieval", "criteria": ["query"]}, "criteria": {"query": {"n_kept": 3}}}
    HeadScores(
        heads=tables["retrieval"], per_example=res["retrieval"], criteria_heads=crit_heads, criteria_per_example=crit_per, meta=meta
    ).write(tmp_path / "hs")
    hs = HeadScores.read(tmp_path / "hs")
    assert hs.criteria() == ["retrieval", "query"] and hs.criterion(None) is hs
    q = hs.criterion("query")
    assert q.heads["mean"].tolist() == pytest.approx(tables["query"]["mean"].tolist(), abs=0)
    assert q.meta["options"]["score"] == "query" and q.meta["n_kept"] == 3
    top_q = load_scores(tmp_path / "hs", "query").select(top=3)
    best = tables["query"].sort_values("mean", ascending=False).head(3)
    assert {(h.layer, h.head) for h in top_q} == set(zip(best["layer"], best["head"]))
    assert top_q != load_scores(tmp_path / "hs").select(top=3)  # the two criteria rank differently here
    with pytest.raises(NeedleworkError, match="no 'output' head scores"):
        hs.criterion("output")
    with pytest.raises(NeedleworkError, match="hold one criterion"):
        load_scores(tables["query"], "query")
