"""Fast head scores equal the slow eager reference, in both modes, with batching and padding."""

import pytest
import torch

from heads_helpers import ARCHS, build, make_example
from heads_reference import reference_hits
from needlework.errors import NeedleworkError
from needlework.heads.score import ScoreConfig, greedy_decode, head_table, rouge1_recall, score_examples


def _model(arch):
    torch.manual_seed(0)
    m = build(arch)
    if arch == "gemma2":  # logit softcapping exists only in eager attention
        m.set_attn_implementation("eager")
    return m


def _echo(model):
    """Tie the LM head to the embeddings: a random model then tends to emit tokens of its input,
    so generated answers do get copied from the needle span."""
    with torch.no_grad():
        model.get_output_embeddings().weight.copy_(model.get_input_embeddings().weight)
    return model


def _fast_hits(df):
    return {(int(r.layer), int(r.head)): r.hits for r in df.itertuples()}


@pytest.mark.parametrize("arch", ARCHS)
def test_teacher_hits_equal_reference(arch, examples):
    model = _model(arch)
    total = 0
    for score in ("retrieval", "insight", "mass"):
        df = score_examples(model, examples, ScoreConfig(mode="teacher", score=score, batch_size=3))
        for e in examples:
            ref = reference_hits(model, e.prompt_ids, e.answer_ids, e.span, score)
            got = _fast_hits(df[df.example_id == e.id])
            if score == "mass":
                for k in ref:
                    assert got[k] == pytest.approx(ref[k], rel=1e-4, abs=1e-5)
            else:
                assert got == ref, (arch, score, e.id)
            total += sum(ref.values()) if score == "retrieval" else 0
    assert total > 0  # the hand-made spans make copies happen; an all-zero comparison proves little
    sub = df[df.example_id == examples[0].id]
    assert (sub.span_tokens == len(examples[0].span)).all() and (sub.n_steps == len(examples[0].answer_ids)).all()


@pytest.mark.parametrize("arch", ARCHS)
def test_generate_tokens_and_hits_equal_reference(arch):
    model = _echo(_model(arch))
    # needle spans at the prompt's end: the echoing model emits their tokens
    examples = [
        make_example(0, 30, span_at=16, span_len=14),
        make_example(1, 21, span_at=9, span_len=12),
        make_example(2, 26, answer=(5, 6, 5), span_at=20, span_len=6),
    ]
    cfg = ScoreConfig(mode="generate", score="retrieval", batch_size=3, max_new_tokens=6)
    is_stop = lambda t, n: t == 2  # noqa: E731  (EOS of the tiny configs)
    df = score_examples(model, examples, cfg, is_stop=is_stop)
    # tokens: the same as transformers' greedy generate on the same left-padded batch
    prompts = [e.prompt_ids for e in examples]
    P = max(map(len, prompts))
    ids = torch.tensor([[0] * (P - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (P - len(p)) + [1] * len(p) for p in prompts])
    ref_out = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=6, eos_token_id=2, pad_token_id=0)
    mine = greedy_decode(model, prompts, 6, 0, is_stop)
    total = 0
    for i, e in enumerate(examples):
        gen = ref_out[i, P:].tolist()
        gen = gen[: gen.index(2)] if 2 in gen else gen
        assert mine[i] == gen
        sub = df[df.example_id == e.id]
        assert (sub.answer == " ".join(map(str, gen))).all() and (sub.n_steps == len(gen)).all()
        ref = reference_hits(model, e.prompt_ids, gen, e.span, "retrieval")
        assert _fast_hits(sub) == ref, (arch, e.id)
        total += sum(ref.values())
    assert total > 0 or arch == "gemma2"  # Gemma's scaled embeddings and final softcap do not echo


@pytest.mark.parametrize("score", ["insight", "mass"])
def test_generate_insight_and_mass_equal_reference(score, examples):
    model = _echo(_model("mistral"))  # sliding window 8: cache holds only the last keys
    df = score_examples(model, examples, ScoreConfig(mode="generate", score=score, batch_size=2, max_new_tokens=5))
    for e in examples:
        gen = [int(t) for t in df[df.example_id == e.id].answer.iloc[0].split()]
        ref = reference_hits(model, e.prompt_ids, gen, e.span, score)
        got = _fast_hits(df[df.example_id == e.id])
        for k in ref:
            assert got[k] == pytest.approx(ref[k], rel=1e-4, abs=1e-5)


def test_batch_size_does_not_change_scores(examples):
    model = _model("llama")
    a = score_examples(model, examples, ScoreConfig(batch_size=1))
    b = score_examples(model, examples, ScoreConfig(batch_size=3))
    assert a["hits"].tolist() == b["hits"].tolist()


def test_head_table_and_options():
    import pandas as pd

    per = pd.DataFrame(
        {
            "example_id": ["a", "a", "b", "b"],
            "layer": [0, 0, 0, 0],
            "head": [0, 1, 0, 1],
            "score": [0.2, 0.0, 0.4, 1.0],
            "kept": [True, True, True, False],
        }
    )
    t = head_table(per)
    assert t["mean"].tolist() == pytest.approx([0.3, 0.0]) and t["n"].tolist() == [2, 1]
    assert rouge1_recall("Lake Vostok", "It is lake vostok.") == 1.0
    assert rouge1_recall("Lake Vostok", "Vostok") == 0.5
    with pytest.raises(NeedleworkError):
        ScoreConfig(mode="sample").check()


def test_uninstrumentable_model_raises():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2))
    model.config = _model("llama").config
    with pytest.raises(NeedleworkError, match="cannot be instrumented|attention"):
        score_examples(model, [make_example(0, 20)], ScoreConfig())


def test_unlocatable_needles_and_absent_answers_are_skipped(monkeypatch):
    from types import SimpleNamespace

    import needlework.data.render as render_mod
    from needlework.data.render import Rendered
    from needlework.heads.score import prepare_examples

    fake = {
        "lost": Rendered("", [5, 6, 7, 8, 2], 3, [None]),  # no needle token found
        "absent": Rendered("", [5, 6, 7, 9, 2], 3, [(1, 2)]),  # answer 9 is not the span's token 6
        "ok": Rendered("", [5, 6, 7, 6, 2], 3, [(1, 2)]),
    }
    monkeypatch.setattr(render_mod, "render", lambda rec, tok, chat=False: fake[rec.id])
    tok = SimpleNamespace(eos_token_id=2, chat_template=None, decode=lambda ids: " ".join(map(str, ids)))
    recs = [SimpleNamespace(id=k, answers=["x"]) for k in fake]
    exs, skipped = prepare_examples(recs, tok, ScoreConfig())
    assert [e.id for e in exs] == ["ok"] and exs[0].answer_ids == [6] and exs[0].span == [1]  # final EOS dropped
    assert skipped == {"lost": "needle span not found after rendering", "absent": "answer tokens absent from the needle span"}
    exs, skipped = prepare_examples(recs, tok, ScoreConfig(score="insight"))  # no token test: only 'lost' skipped
    assert list(skipped) == ["lost"]


def test_stop_rule_stops_at_every_eos_of_the_generation_config():
    from types import SimpleNamespace

    from needlework.heads.score import stop_rule

    tok = SimpleNamespace(eos_token_id=2, decode=lambda ids: "\n" if ids == [9] else "word")
    model = SimpleNamespace(generation_config=SimpleNamespace(eos_token_id=[2, 7]))  # e.g. <|eot_id|> besides EOS
    is_stop = stop_rule(tok, ScoreConfig(mode="generate"), model)
    assert is_stop(2, 0) and is_stop(7, 3)  # both EOS ids end the answer
    assert not is_stop(9, 0) and is_stop(9, 1)  # a newline ends it only after some text
    assert not is_stop(5, 2)
    assert not stop_rule(tok, ScoreConfig(mode="generate"))(7, 3)  # without the model: the tokenizer's EOS only
