"""The query and output scores (issue 14): the fast path equals the slow references of
criteria_reference.py on tiny Llama, Mistral (sliding window, MQA), Qwen2 and Gemma2 (softcapping,
sandwich norms) models in both modes, batched and padded; hand-built cases have known answers.

Tolerances, from the arithmetic (numerics.py's approach):
- The models run in float64 and the fast path on the reference's own attention kernel (eager), so
  the two compute the same quantities in a different order. Every RMSNorm of transformers
  computes in float32 whatever the dtype, but the batched and the one-example forwards feed them
  inputs that agree to float64 precision, which round to float32 alike (a last-bit flip needs an
  input within ~1e-16 of a float32 rounding boundary; the fixtures are seeded, so this is fixed).
- output: a sum of products computed in two orders differs by at most n * u64 * (the same sum in
  absolute values), n the longest chain of roundings: keys (softmax row @ values), head_dim (W_O
  slice), twice the hidden size (RMS, unembedding dot) and a few scalings. In generate mode the
  reference attributes the forwards greedy decoding runs (a prefill, then one cached token a
  step), not one forward of the whole sequence: eager's softmax is float32 whatever the dtype
  (`softmax(..., dtype=torch.float32)` in every eager_attention_forward), and a sliding-window
  layer's cache (transformers' DynamicSlidingWindowLayer) hands a step only the window's keys, so
  the step's float32 max and sum run over a row of the window's length, the whole sequence's over
  a row of t + 1 holding the same terms at other offsets: other SIMD lane groupings, last bits
  that differ on AVX-512 CPUs (not on AVX2 ones, by luck). Probabilities then differ by ~u32, and
  with them the residual stream, every later layer and norm: float32 differences of two valid
  computations, no error of the attribution, which attributes the cached steps the model ran.
- query: the probe casts the row logits to float32 (u32 * |logit| each) and takes two float32
  logsumexps over k keys, so a log-mass is off by at most 2 * u32 * (3M + k + 2), M a bound on
  |logit| (`logit_bound`); eager's softmax is float32 too and carries the same error, plus an
  absolute error of one float32 minimum normal per term where probabilities underflow. A ratio of
  two masses doubles the relative part.
"""

import pytest
import torch

from criteria_reference import U32, U64, by_head, output_tol, query_rtol, query_tol, reference_output, reference_query
from heads_helpers import ARCHS, build, make_example
from needlework.errors import NeedleworkError
from needlework.heads.score import Example, ScoreConfig, head_table, score_examples
from needlework.models.sites import model_shape, select_heads

GOLD, DOCS = list(range(6, 12)), list(range(1, 17))  # doc A 1..5, gold doc B 6..11, doc C 12..16


def _model(arch: str, dtype=torch.float64):
    """A tiny model in float64 on the eager kernel, its norms moved off their initial 1 (or 0, Gemma's
    1 + w) so that every RMSNorm scale matters."""
    torch.manual_seed(0)
    m = build(arch).to(dtype)
    m.set_attn_implementation("eager")
    with torch.no_grad():
        for name, p in m.named_parameters():
            if "norm" in name:
                p.add_(0.3 * torch.randn_like(p))
    return m


def _examples():
    """Three prompts of different lengths: documents at 1..16 (gold 6..11), then the question up to
    the last prompt token (the `Answer:` cue)."""
    out = [make_example(0, 30), make_example(1, 21, span_at=2), make_example(2, 26, answer=(5, 6, 5), span_at=10)]
    for e in out:
        e.span, e.doc_tokens, e.query_rows = GOLD, DOCS, list(range(17, len(e.prompt_ids) - 1))
    return out


def _batch(arch: str, mode: str) -> int:
    """Padded batches where transformers computes them in float64: its eager softmax runs in float32,
    where a fully masked row (a left-padded position; a right-padded one past a sliding window)
    becomes NaN, and the NaN reaches real rows as 0 * NaN in probabilities @ values. Those cases
    run one example at a time here, and `test_batched_equals_one_at_a_time` checks padded batches
    on SDPA. Generate mode runs one at a time in any case: the output score's reference decodes one
    example, and left padding would lengthen the decoding rows of eager's float32 softmax."""
    return 1 if arch in ("gemma2", "mistral") or mode == "generate" else 3


def _emitted(df, e: Example, mode: str) -> list[int]:
    return e.answer_ids if mode == "teacher" else [int(t) for t in df[df.example_id == e.id].answer.iloc[0].split()]


@pytest.mark.parametrize("mode", ["teacher", "generate"])
@pytest.mark.parametrize("norm", ["documents", "none"])
@pytest.mark.parametrize("arch", ARCHS)
def test_query_equals_reference(arch, norm, mode):
    model, exs = _model(arch), _examples()
    cfg = ScoreConfig(mode=mode, score="query", query_norm=norm, batch_size=_batch(arch, mode), max_new_tokens=2)
    df = score_examples(model, exs, cfg)
    checked = 0
    for e in exs:
        ref, hits, doc_mass = reference_query(model, e.prompt_ids, e.query_rows, GOLD, DOCS, norm)
        got, got_hits, rtol = by_head(df, e.id, "score"), by_head(df, e.id, "hits"), query_rtol(model, e)
        for key in ref:
            denom = doc_mass[key] if norm == "documents" else len(e.query_rows)
            assert abs(got[key] - ref[key]) <= query_tol(rtol, e, ref[key], denom), (arch, e.id, key, got[key], ref[key])
            assert abs(got_hits[key] - hits[key]) <= query_tol(rtol, e, hits[key], 1.0), (arch, e.id, key)
            checked += doc_mass[key] > 1e-3
        sub = df[df.example_id == e.id]
        assert (sub.n_steps == len(e.query_rows)).all() and (sub.span_tokens == len(GOLD)).all()
    assert checked > 0  # some heads do look at the documents: the comparison is not all zeros
    if norm == "documents":
        assert df.score.between(0, 1).all()


@pytest.mark.parametrize("mode", ["teacher", "generate"])
@pytest.mark.parametrize("arch", ARCHS)
def test_output_equals_reference(arch, mode):
    model, exs = _model(arch), _examples()
    cfg = ScoreConfig(mode=mode, score="output", batch_size=_batch(arch, mode), max_new_tokens=3, stop_on_newline=False)
    df = score_examples(model, exs, cfg)
    for e in exs:
        emitted, p0 = _emitted(df, e, mode), len(e.prompt_ids)
        rows, decode_from = list(range(p0 - 1, p0 - 1 + len(emitted))), p0 if mode == "generate" else None
        ref, size = reference_output(model, e.prompt_ids + emitted, rows, emitted, "mean", decode_from)
        got = by_head(df, e.id, "hits")
        for key in ref:
            assert abs(got[key] - ref[key]) <= output_tol(model, p0 + len(emitted), size[key]), (arch, e.id, key, got[key], ref[key])
        sub = df[df.example_id == e.id]
        assert (sub.n_steps == len(emitted)).all()
        assert sub.score.to_numpy() == pytest.approx(sub.hits.to_numpy() / max(len(emitted), 1), rel=4 * U64, abs=0)
        assert max(abs(v) for v in ref.values()) > 1e-3  # heads do write to these logits


@pytest.mark.parametrize("mode", ["teacher", "generate"])
@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2"])
def test_batched_equals_one_at_a_time(arch, mode):
    """Padding (right in teacher mode, left in generate mode, where the prefill probes the question's
    rows and each step its one row) gives what one example at a time gives: float64 on SDPA, the
    same sums in another order."""
    model, exs = _model(arch), _examples()
    model.set_attn_implementation("sdpa")
    for score in ("query", "output"):
        one, many = (
            score_examples(model, exs, ScoreConfig(mode=mode, score=score, batch_size=b, max_new_tokens=3, stop_on_newline=False))
            for b in (1, 3)
        )
        assert one.answer.tolist() == many.answer.tolist()  # the same greedy tokens
        for e in exs:
            a, b = by_head(one, e.id, "score"), by_head(many, e.id, "score")
            if score == "query":
                _ref, _hits, doc_mass = reference_query(model, e.prompt_ids, e.query_rows, GOLD, DOCS, "documents")
                rtol = query_rtol(model, e)
                assert all(abs(a[k] - b[k]) <= query_tol(rtol, e, a[k], doc_mass[k]) for k in a), (arch, e.id)
            else:
                emitted, p0 = _emitted(one, e, mode), len(e.prompt_ids)
                _ref, size = reference_output(model, e.prompt_ids + emitted, list(range(p0 - 1, p0 - 1 + len(emitted))), emitted, "mean")
                assert all(abs(a[k] - b[k]) <= output_tol(model, p0 + len(emitted), size[k]) / len(emitted) for k in a), (arch, e.id)


@pytest.mark.parametrize("arch", ["llama", "gemma2"])
def test_output_baseline_none_is_the_raw_logit(arch):
    model, exs = _model(arch), _examples()[:1]
    df = score_examples(model, exs, ScoreConfig(score="output", output_baseline="none"))
    e = exs[0]
    p0 = len(e.prompt_ids)
    ref, size = reference_output(model, e.prompt_ids + e.answer_ids, list(range(p0 - 1, p0 - 1 + len(e.answer_ids))), e.answer_ids, "none")
    got = by_head(df, e.id, "hits")
    assert all(abs(got[k] - ref[k]) <= output_tol(model, p0 + len(e.answer_ids), size[k]) for k in ref)


# ---------------------------------------------------------------------------- known answers


def _zero_mlps(model) -> None:
    with torch.no_grad():
        for layer in model.get_decoder().layers:
            layer.mlp.down_proj.weight.zero_()


@pytest.mark.parametrize("arch", ["llama", "mistral", "gemma2"])
def test_heads_plus_embedding_add_up_to_the_logit(arch):
    """With the MLPs silenced, the residual at the end is the embedding plus every head's output
    (through the sandwich norms, Gemma2), so the heads' attributions plus the embedding's equal the
    model's own logit minus its mean logit: the linearised norms are exact at the model's residual.
    Runs on the model's default kernel (SDPA for Llama/Mistral)."""
    model = _model(arch)
    model.set_attn_implementation("eager" if arch == "gemma2" else "sdpa")
    model.config.final_logit_softcapping = None  # the attribution is in pre-cap logits
    _zero_mlps(model)
    e = _examples()[0]
    df = score_examples(model, [e], ScoreConfig(score="output"))
    trunk, norm = model.get_decoder(), model.get_decoder().norm
    ids = torch.tensor([e.prompt_ids + e.answer_ids])
    keep = {}

    def first_layer_input(_m, args, kwargs):
        keep["emb"] = args[0] if args else kwargs["hidden_states"]

    h0 = trunk.layers[0].register_forward_pre_hook(first_layer_input, with_kwargs=True)
    h1 = norm.register_forward_pre_hook(lambda _m, args: keep.__setitem__("final", args[0]))
    try:
        with torch.no_grad():
            logits = model(ids).logits[0].double()
    finally:
        h0.remove()
        h1.remove()
    gamma = norm.weight.detach().double() + (1.0 if "Gemma" in type(norm).__name__ else 0.0)
    w_u = model.get_output_embeddings().weight.detach().double()
    u = w_u - w_u.mean(0)
    p0, total, scale = len(e.prompt_ids), 0.0, 0.0
    for k, a in enumerate(e.answer_ids):
        t = p0 - 1 + k
        x = keep["final"][0, t].double()
        s = gamma / torch.sqrt(x.pow(2).mean() + getattr(norm, "variance_epsilon", getattr(norm, "eps", None)))
        emb = float((u[a] * s * keep["emb"][0, t].double()).sum())
        total += float(logits[t, a] - logits[t].mean()) - emb
        scale += float((u[a].abs() * s.abs() * x.abs()).sum()) + float(logits[t].abs().max())
    heads = float(df.hits.sum())
    # float64 sums of <= hidden * n_heads * L terms, plus the model's own float32 RMSNorms: u32 each
    assert heads == pytest.approx(total, abs=(model.config.hidden_size * 64 * U64 + 4 * U32) * scale)


def _forced_model(gap_weight: float = 3.0):
    """A one-layer Llama whose every head gives the question rows' keys a logit of about 100 on the
    gold tokens and exactly 0 elsewhere: token ids mark roles (5: gold, 6: question, others filler),
    the embeddings put the roles on axes 0 and 1, and q (k) reads axis 1 (0) into dimension 1 of
    every head. RoPE rotates that dimension's pair (1, 5) by position * base^(-1/4), nothing with a
    base of 1e30, so the logit does not depend on the distance."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                      vocab_size=16, max_position_embeddings=128, rope_theta=1e30)  # fmt: skip
    torch.manual_seed(0)
    m = LlamaForCausalLM(cfg).double().eval()
    with torch.no_grad():
        emb = m.get_input_embeddings().weight
        emb.zero_()
        emb[:, 2:] = 0.1 * torch.randn(16, 30, dtype=torch.float64)  # filler content, off the role axes
        emb[5, 0] = emb[6, 1] = 8.0  # role axes, dominating each token's RMS
        attn = m.model.layers[0].self_attn
        for proj, axis in ((attn.q_proj, 1), (attn.k_proj, 0)):
            proj.weight.zero_()
            proj.weight[1 :: attn.head_dim, axis] = gap_weight  # dimension 1 of every head
    return m


def test_query_score_known_answers():
    """Attention forced onto the gold document gives 1; uniform attention gives the gold share of
    the document tokens (`documents`) or the mean of |gold| / visible keys per row (`none`)."""
    n = 30
    gold, docs, rows = list(range(8, 14)), list(range(1, 20)), list(range(22, 28))
    prompt = [8 + (i % 8) if i not in gold else 5 for i in range(n)]  # filler ids 8..15
    for r in rows:
        prompt[r] = 6
    e = Example("forced", prompt, [7], gold, query_rows=rows, doc_tokens=docs)
    model = _forced_model()
    df = score_examples(model, [e], ScoreConfig(score="query"))
    # off-gold mass <= n * e^-60 (the logit gap is ~100); float32 log-masses: a few u32 * |logit|
    assert df.score.to_numpy() == pytest.approx(1.0, abs=n * 2.0**-86 + 8 * 128 * U32)
    with torch.no_grad():
        model.model.layers[0].self_attn.q_proj.weight.zero_()  # logits 0: uniform over the causal prefix
    df = score_examples(model, [e], ScoreConfig(score="query"))
    assert df.score.to_numpy() == pytest.approx(len(gold) / len(docs), rel=16 * U32)
    df = score_examples(model, [e], ScoreConfig(score="query", query_norm="none"))
    want = sum(len(gold) / (r + 1) for r in rows) / len(rows)
    assert df.score.to_numpy() == pytest.approx(want, rel=16 * U32)


# ---------------------------------------------------------------------------- options and tables


def test_options_are_checked():
    for bad in (
        ScoreConfig(score="query", spans="answer"),
        ScoreConfig(score="output", spans="all"),
        ScoreConfig(score="query", query_norm="tokens"),
        ScoreConfig(score="output", output_baseline="median"),
        ScoreConfig(score="ranking"),
        ScoreConfig(batch_size=0),  # checked again since the batch-size check moved out of dead code
    ):
        with pytest.raises(NeedleworkError):
            bad.check()


def test_new_scores_keep_the_table_format():
    """The per-example and per-head tables have the other scores' columns, so compare, plots,
    knockout and patching read a query- or output-score result as any other."""
    model, exs = _model("llama", torch.float32), _examples()
    base = score_examples(model, exs, ScoreConfig(score="retrieval", batch_size=3))
    for score in ("query", "output"):
        df = score_examples(model, exs, ScoreConfig(score=score, batch_size=3))
        assert list(df.columns) == list(base.columns) and len(df) == len(base)
        t = head_table(df, model_shape(model))
        assert list(t.columns) == ["layer", "head", "mean", "std", "n"] and (t.n == len(exs)).all()
        grid = t.pivot(index="layer", columns="head", values="mean").to_numpy()
        assert len(select_heads(grid, top=3)) == 3


def test_render_gives_document_and_question_spans(smollm2_tokenizer):
    from needlework.data.records import Document, Needle, Record
    from needlework.data.render import render

    tok = smollm2_tokenizer
    docs = [Document("a", "Alpha", "The sky over Brelmont is grey."), Document("b", "", "Quist lives in Brelmont.")]
    rec = Record("r", "mdqa", "high", "high", docs, "Where does Quist live?", ["Brelmont"], [Needle(1, 15, 23)], gold_docs=[1])
    for chat in (False, True):
        r = render(rec, tok, chat=chat)
        texts = [tok.decode(r.input_ids[a:b]).strip() for a, b in r.doc_spans]
        assert texts == ["Document [1] (Title: Alpha) The sky over Brelmont is grey.", "Document [2] Quist lives in Brelmont."]
        assert tok.decode(r.input_ids[slice(*r.question_span)]).strip() == "Where does Quist live?"
        assert r.doc_positions({1}) == list(range(*r.doc_spans[1])) and r.question_positions()[0] == r.question_span[0]
        assert r.doc_spans[1][0] <= r.needle_spans[0][0] < r.needle_spans[0][1] <= r.doc_spans[1][1]


def test_query_examples_from_records(smollm2_tokenizer):
    from needlework.data.records import Document, Needle, Record
    from needlework.heads.score import prepare_examples

    tok = smollm2_tokenizer
    docs = [Document(f"d{i}", "", t) for i, t in enumerate(["Filler one.", "Quist lives in Brelmont.", "Filler two."])]

    def mk(rid: str, gold: list[int]) -> Record:
        return Record(rid, "mdqa", "high", "high", docs, "Where does Quist live?", ["Brelmont"], [Needle(1, 15, 23)], gold_docs=gold)

    cov = {}
    exs, skipped = prepare_examples([mk("ok", [1]), mk("all", [0, 1, 2])], tok, ScoreConfig(score="query", chat=False), coverage=cov)
    assert [e.id for e in exs] == ["ok"] and skipped == {"all": "every document is gold (nothing to compare with)"}
    e = exs[0]
    assert set(e.span) < set(e.doc_tokens) and max(e.doc_tokens) < min(e.query_rows) and max(e.query_rows) < len(e.prompt_ids)
    assert tok.decode([e.prompt_ids[i] for i in e.query_rows]).strip() == "Where does Quist live?"
    assert cov == {"ok": (1, 1), "all": (3, 3)} and e.n_citing_docs == 1
    exs, skipped = prepare_examples([mk("all", [0, 1, 2])], tok, ScoreConfig(score="query", query_norm="none", chat=False))
    assert len(exs) == 1 and not skipped  # a mass needs no non-gold document
    exs, skipped = prepare_examples([mk("ok", [1])], tok, ScoreConfig(score="output", chat=False))
    assert len(exs) == 1 and exs[0].span  # S only reported


def test_output_score_refuses_a_layernorm_model():
    """A final LayerNorm (mean-centring, a bias) is not the RMSNorm the attribution linearises: a
    clear error before any forward."""
    model = _model("llama", torch.float32)
    model.get_decoder().norm = torch.nn.LayerNorm(model.config.hidden_size, eps=1e-5)
    with pytest.raises(NeedleworkError, match="RMSNorm"):
        score_examples(model, _examples()[:1], ScoreConfig(score="output"))
