"""Which needle spans form S: the retrieval score uses answer spans only (a MuSiQue bridge entity
never enlarges |S|), insight and mass choose by `spans`; span coverage of the insight score."""

import pytest
import torch

from heads_reference import reference_hits
from needlework.data.records import Document, Needle, Record, write_jsonl
from needlework.data.render import render
from needlework.errors import NeedleworkError
from needlework.heads.score import ScoreConfig, _tally, prepare_examples, score_examples, score_heads


def musique_record() -> Record:
    docs = [
        Document("p0", "Alma Quist", "Alma Quist was born in Brelmont, a quiet town."),
        Document("p1", "Filler", "The valley was settled by farmers who kept sheep."),
        Document("p2", "Brelmont", "Brelmont is a town in Quistovia, near the coast."),
    ]
    at = lambda d, s: (d, docs[d].text.index(s), docs[d].text.index(s) + len(s))  # noqa: E731
    return Record(
        "m1",
        "musique",
        "real",
        "real",
        docs,
        "In which country was Alma Quist born?",
        ["Quistovia"],
        [Needle(*at(0, "Brelmont"), "evidence"), Needle(*at(2, "Quistovia"), "answer")],
        gold_docs=[0, 2],
        meta={"hop_answers": ["Brelmont"], "n_hops": 2},
    )


def summhay_record() -> Record:
    """Three cited documents; the insight sentence was located in two (doc 2 is unlocated)."""
    sent = "Remote workers save an hour a day."
    texts = [
        f"Intro. {sent} End.",
        f"Surveys agree. {sent} More.",
        "It is phrased so differently that nothing matched.",
        "Unrelated weather report.",
    ]
    docs = [Document(f"doc{i}", "", t) for i, t in enumerate(texts)]
    needles = [Needle(d, texts[d].index(sent), texts[d].index(sent) + len(sent), "evidence") for d in (0, 1)]
    return Record(
        "s1",
        "summhay",
        "real",
        "real",
        docs,
        sent,
        ["doc0 doc1 doc2"],
        needles,
        citations=["doc0", "doc1", "doc2"],
        gold_docs=[0, 1, 2],
        meta={"insight": sent, "unlocated_docs": [2]},
    )


@pytest.fixture(scope="module")
def tiny(smollm2_tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = smollm2_tokenizer
    torch.manual_seed(3)  # large weights: sharp attention (argmaxes are no near-ties); seed 3 copies twice
    cfg = LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=len(tok),
        max_position_embeddings=512,
        initializer_range=0.5,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
    )
    return LlamaForCausalLM(cfg).eval(), tok


def _positions(r, i):
    return list(range(*r.needle_spans[i]))


def test_retrieval_span_set_is_answer_spans_only(tiny):
    model, tok = tiny
    rec = musique_record()
    r = render(rec, tok, chat=False)
    bridge, answer = _positions(r, 0), _positions(r, 1)
    assert bridge and answer and not set(bridge) & set(answer)
    (ex,), skipped = prepare_examples([rec], tok, ScoreConfig(chat=False))
    assert skipped == {} and ex.span == answer  # S = where the answer sits; the bridge entity is not in it
    df = score_examples(model, [ex], ScoreConfig(chat=False, match="id"))
    assert (df.span_tokens == len(answer)).all() and df.hits.sum() > 0  # copies do happen
    # the slow eager reference over the answer span; the bridge tokens add no copy (they are not answer
    # tokens), so over all spans the hits are the same and only the denominator |S| would grow
    ref = reference_hits(model, ex.prompt_ids, ex.answer_ids, answer, "retrieval")
    assert ref == reference_hits(model, ex.prompt_ids, ex.answer_ids, bridge + answer, "retrieval")
    for row in df.itertuples():
        assert row.hits == ref[(row.layer, row.head)]
        assert row.score == pytest.approx(row.hits / len(answer))
    with pytest.raises(NeedleworkError, match="answer spans only"):
        ScoreConfig(spans="evidence").check()


def test_retrieval_denominator_by_hand():
    """Two copies over a 3-token answer span: 2/3; were the 2 bridge tokens in S it would read 2/5."""
    L, H, k = 1, 1, 10
    bridge, answer = [2, 3], [6, 7, 8]
    key_canon = torch.tensor([50, 51, 90, 91, 52, 53, 70, 71, 72, 54])  # tokens; 90/91 the bridge, 70-72 the answer
    emit = torch.tensor([70, 71, 72])
    argmax = torch.tensor([6, 7, 2]).view(L, H, 3)  # copies at steps 0 and 1; step 2 lands on the bridge
    cfg = ScoreConfig(score="retrieval")
    mask = torch.zeros(k, dtype=torch.bool)
    mask[answer] = True
    hits, score = _tally(cfg, argmax, None, mask, key_canon, emit, 3)
    assert hits[0, 0] == 2 and score[0, 0] == pytest.approx(2 / 3)
    mask[bridge] = True
    assert _tally(cfg, argmax, None, mask, key_canon, emit, 3)[1][0, 0] == pytest.approx(2 / 5)


def test_insight_and_mass_choose_spans(tiny):
    model, tok = tiny
    rec = musique_record()
    r = render(rec, tok, chat=False)
    bridge, answer = _positions(r, 0), _positions(r, 1)
    want = {
        ("insight", "auto"): bridge,
        ("insight", "answer"): answer,
        ("insight", "all"): sorted(bridge + answer),
        ("mass", "auto"): sorted(bridge + answer),
        ("mass", "evidence"): bridge,
        ("mass", "answer"): answer,
    }
    for (score, spans), span in want.items():
        cfg = ScoreConfig(score=score, spans=spans, chat=False)
        (ex,), _ = prepare_examples([rec], tok, cfg)
        assert ex.span == span, (score, spans)
        df = score_examples(model, [ex], cfg)
        ref = reference_hits(model, ex.prompt_ids, ex.answer_ids, span, score)
        for row in df.itertuples():
            assert row.hits == pytest.approx(ref[(row.layer, row.head)], rel=1e-4, abs=1e-5)
    # a record without evidence (MDQA-like): insight falls back to its answer spans under auto
    mdqa = Record(
        "q",
        "mdqa",
        "high",
        "high",
        [Document("d0", "T", "The key is Marlowe.")],
        "What is the key?",
        ["Marlowe"],
        [Needle(0, 11, 18)],
        gold_docs=[0],
    )
    (ex,), _ = prepare_examples([mdqa], tok, ScoreConfig(score="insight", chat=False))
    assert ex.span == _positions(render(mdqa, tok, chat=False), 0)
    exs, skipped = prepare_examples([mdqa], tok, ScoreConfig(score="insight", spans="evidence", chat=False))
    assert exs == [] and skipped == {"q": "no needle span of role evidence"}
    # the retrieval score skips a record without an answer span (synthetic SummHay: evidence only)
    assert prepare_examples([summhay_record()], tok, ScoreConfig(chat=False))[1] == {"s1": "no needle span of role answer"}


def test_insight_coverage(tiny, tmp_path):
    model, tok = tiny
    rec = summhay_record()
    cfg = ScoreConfig(score="insight", chat=False)
    (ex,), _ = prepare_examples([rec], tok, cfg)
    assert (ex.n_spans_located, ex.n_citing_docs) == (2, 3)
    res = score_heads(model, tok, [rec, musique_record()], cfg)
    per = res.per_example.drop_duplicates("example_id").set_index("example_id")
    assert per.loc["s1", "n_spans_located"] == 2 and per.loc["s1", "n_citing_docs"] == 3
    assert per.loc["m1", "n_spans_located"] == 1 and per.loc["m1", "n_citing_docs"] == 2  # evidence spans: the bridge doc
    assert res.coverage == {"n_spans_located": 3, "n_citing_docs": 5, "fraction": 0.6, "n_records_partial": 2}


def test_run_score_writes_coverage(tmp_path, tiny, caplog):
    from needlework.heads.run import run_score
    from needlework.models.load import ModelConfig

    model, tok = tiny
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    write_jsonl(tmp_path / "d.jsonl", [summhay_record()])
    out = run_score(
        ModelConfig(name=str(tmp_path / "m"), device="cpu"),
        tmp_path / "d.jsonl",
        ScoreConfig(score="insight", chat=False),
        tmp_path / "res",
    )
    meta = out.meta
    assert meta["span_coverage"] == {"n_spans_located": 2, "n_citing_docs": 3, "fraction": 0.6667, "n_records_partial": 1}
    assert "insight spans located in 2 of 3 citing documents" in caplog.text


def test_a_kept_rendering_cache_renders_each_record_once_over_calls(tiny, monkeypatch):
    """Training's probes score the same records at every fraction: with `rendered` kept across the
    calls each record is rendered once, and the scores are those of rendering afresh."""
    import pandas as pd

    import needlework.data.render as render_mod

    model, tok = tiny
    records, cfg = [summhay_record(), musique_record()], ScoreConfig(score="insight", chat=False)
    fresh = score_heads(model, tok, records, cfg)
    calls, real = [], render_mod.render
    monkeypatch.setattr(render_mod, "render", lambda *a, **k: calls.append(1) or real(*a, **k))  # examples imports it per call
    cache: dict = {}
    first, second = score_heads(model, tok, records, cfg, cache), score_heads(model, tok, records, cfg, cache)
    assert len(calls) == len(records)  # the second call rendered nothing
    for got in (first, second):
        pd.testing.assert_frame_equal(got.per_example, fresh.per_example)
