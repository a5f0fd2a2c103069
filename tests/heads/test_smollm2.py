"""SmolLM2 (the real embedded model): fast hit counts equal the eager reference in both modes on two
short hand-made needle records, batched; generate mode emits transformers' greedy tokens."""

import pytest
import torch

from heads_helpers import needle_records
from heads_reference import reference_hits
from needlework.heads.score import ScoreConfig, greedy_decode, prepare_examples, rouge1_recall, score_examples, stop_rule

pytestmark = pytest.mark.slow


def _norm(tok, t: int) -> str:
    return tok.decode([t]).strip().lower()


@pytest.fixture(scope="module")
def smol():
    from needlework.models.load import load_model

    return load_model("smollm2")


@pytest.fixture(scope="module")
def records():
    return needle_records()


def test_teacher_hits_equal_reference(smol, records):
    model, tok = smol
    cfg = ScoreConfig(mode="teacher", batch_size=2, match="id", chat=False)  # no chat: answer keeps its leading space
    exs, skipped = prepare_examples(records, tok, cfg)
    assert not skipped
    df = score_examples(model, exs, cfg, pad_id=tok.pad_token_id)
    total = 0
    for e in exs:
        ref = reference_hits(model, e.prompt_ids, e.answer_ids, e.span)
        got = {(int(r.layer), int(r.head)): r.hits for r in df[df.example_id == e.id].itertuples()}
        assert got == ref
        total += sum(ref.values())
    assert total > 0  # SmolLM2 has copy heads


def test_generate_tokens_and_hits_equal_reference(smol, records):
    model, tok = smol
    cfg = ScoreConfig(mode="generate", batch_size=2, match="loose", max_new_tokens=8)  # chat template
    exs, _ = prepare_examples(records, tok, cfg)
    is_stop = stop_rule(tok, cfg)
    df = score_examples(model, exs, cfg, pad_id=tok.pad_token_id, decode=tok.decode, is_stop=is_stop)
    prompts = [e.prompt_ids for e in exs]
    mine = greedy_decode(model, prompts, 8, tok.pad_token_id, is_stop)
    P = max(map(len, prompts))
    ids = torch.tensor([[tok.pad_token_id] * (P - len(p)) + p for p in prompts])
    mask = (torch.arange(P)[None] >= torch.tensor([P - len(p) for p in prompts])[:, None]).long()
    out = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=8, pad_token_id=tok.pad_token_id)
    for i, e in enumerate(exs):
        want = []
        for t in out[i, P:].tolist():
            if is_stop(t, len(want)):
                break
            want.append(t)
        assert mine[i] == want
        sub = df[df.example_id == e.id]
        assert sub.answer.iloc[0] == tok.decode(want)
        ref = reference_hits(model, e.prompt_ids, want, e.span, same=lambda a, b: _norm(tok, a) == _norm(tok, b))
        got = {(int(r.layer), int(r.head)): r.hits for r in sub.itertuples()}
        assert got == ref
        assert bool(sub.success.iloc[0]) == (rouge1_recall(e.answer_text, tok.decode(want)) > 0.5)
