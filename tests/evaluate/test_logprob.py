import pytest
import torch

from needlework.data.render import render
from needlework.evaluate.logprob import answer_logprobs_ids, gold_logprobs


def _slow_logprob(model, seq, n_answer):
    """Oracle: full-sequence logits of one unpadded sequence, log-softmax everywhere."""
    with torch.no_grad():
        logits = model(torch.tensor([seq])).logits[0].float()  # q, vocab
    logp = torch.log_softmax(logits, -1)
    L = len(seq)
    return sum(float(logp[t - 1, seq[t]]) for t in range(L - n_answer, L))


def test_batched_answer_logprob_equals_full_logits(tiny_model, make_prompts):
    seqs = make_prompts((12, 30, 7, 21))
    n_ans = [3, 1, 5, 4]
    got = answer_logprobs_ids(tiny_model, seqs, n_ans, pad_id=0, batch_size=3, progress=False)
    for s, m, lp in zip(seqs, n_ans, got):
        assert lp.n_tokens == m
        assert lp.logprob == pytest.approx(_slow_logprob(tiny_model, s, m), abs=1e-3)
        assert lp.per_token == pytest.approx(lp.logprob / m)


def test_gold_logprobs_scores_rendered_answer(tiny_llama, smollm2_tokenizer, mixed_records):
    recs = mixed_records
    got = gold_logprobs(tiny_llama, smollm2_tokenizer, recs, chat=True, batch_size=4, progress=False)
    for r, lp in zip(recs, got):
        rd = render(r, smollm2_tokenizer, chat=True, with_answer=True)
        n_ans = len(rd.answer_ids) - 1  # EOS excluded by default
        assert lp.n_tokens == n_ans
        assert lp.logprob == pytest.approx(_slow_logprob(tiny_llama, rd.input_ids[:-1], n_ans), abs=1e-3)
    with_eos = gold_logprobs(tiny_llama, smollm2_tokenizer, recs[:1], chat=True, include_eos=True, progress=False)
    assert with_eos[0].n_tokens == got[0].n_tokens + 1 and with_eos[0].logprob < got[0].logprob


def test_bad_answer_length_is_rejected(tiny_llama):
    with pytest.raises(ValueError, match="cannot score"):
        answer_logprobs_ids(tiny_llama, [[5, 6, 7]], [3], progress=False)
