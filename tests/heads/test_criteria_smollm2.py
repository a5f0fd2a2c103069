"""SmolLM2 (the real embedded model) on two rendered needle records, batched and padded: the query
and output scores equal the slow references of criteria_reference.py (float64, the eager kernel;
tolerances as in test_criteria.py)."""

import pytest

from criteria_reference import by_head, output_tol, query_rtol, query_tol, reference_output, reference_query
from heads_helpers import needle_records
from needlework.heads.score import ScoreConfig, prepare_examples, score_examples

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smol64():
    from needlework.models.load import load_model

    model, tok = load_model("smollm2")
    model = model.double()
    model.set_attn_implementation("eager")  # the reference's kernel (test_criteria.py's docstring)
    return model, tok


@pytest.fixture(scope="module")
def records():
    return needle_records()


def test_query_equals_reference(smol64, records):
    model, tok = smol64
    cfg = ScoreConfig(score="query", batch_size=2)  # chat template (SmolLM2's default rendering)
    exs, skipped = prepare_examples(records, tok, cfg)
    assert not skipped and len({len(e.prompt_ids) for e in exs}) == 2  # different lengths: padded
    df = score_examples(model, exs, cfg, pad_id=tok.pad_token_id)
    looked = 0
    for e in exs:
        ref, hits, doc_mass = reference_query(model, e.prompt_ids, e.query_rows, e.span, e.doc_tokens, "documents")
        got, rtol = by_head(df, e.id, "score"), query_rtol(model, e)
        for key in ref:
            assert abs(got[key] - ref[key]) <= query_tol(rtol, e, ref[key], doc_mass[key]), (e.id, key, got[key], ref[key])
        looked += sum(v > 0.5 for v in ref.values())
    assert looked > 0  # some of SmolLM2's heads put most of their document attention on the gold document


def test_output_equals_reference(smol64, records):
    model, tok = smol64
    cfg = ScoreConfig(score="output", batch_size=2)
    exs, _ = prepare_examples(records, tok, cfg)
    df = score_examples(model, exs, cfg, pad_id=tok.pad_token_id)
    for e in exs:
        p0 = len(e.prompt_ids)
        rows = list(range(p0 - 1, p0 - 1 + len(e.answer_ids)))
        ref, size = reference_output(model, e.prompt_ids + e.answer_ids, rows, e.answer_ids, "mean")
        got = by_head(df, e.id, "hits")
        for key in ref:
            assert abs(got[key] - ref[key]) <= output_tol(model, p0 + len(rows), size[key]), (e.id, key, got[key], ref[key])
        assert max(ref.values()) > 1.0  # some heads write the answer's logits up by more than a nat
