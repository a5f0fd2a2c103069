"""The answer-only output path against the oracle: full logits with labels -100 outside answers."""

import pytest
import torch

from conftest import copy_record, copy_records
from needlework.models.load import load_model
from needlework.train.data import collate, encode, pack
from needlework.train.loss import AnswerOnlyLM, full_logits_loss


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("lora", [False, True])
def test_answer_only_matches_full_logits(tiny_llama, tiny_tok, lora):
    model, _ = load_model(tiny_llama)
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(
            model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], init_lora_weights=False)
        )
    model.train()
    exs = [encode(r, tiny_tok, 512) for r in copy_records(3, seed=1)]
    exs[1] = encode(copy_records(1, seed=9, n_filler=3)[0], tiny_tok, 512)  # rows of different lengths: padding
    b = collate([[e] for e in exs], tiny_tok.pad_token_id)
    assert b.input_ids.shape[0] == 3 and len({len(e.input_ids) for e in exs}) == 2

    ref = full_logits_loss(model, b)  # mean over answer tokens
    ref.backward()
    g_ref = _grads(model)
    model.zero_grad(set_to_none=True)

    nll, _ = AnswerOnlyLM(model)(b.input_ids, None, b.rows, b.pos, b.targets)
    ours = nll.sum() / b.n_answer
    ours.backward()
    g_ours = _grads(model)

    assert torch.allclose(ours, ref, rtol=1e-5, atol=1e-6)
    assert g_ref.keys() == g_ours.keys() and len(g_ref) > 0
    for n in g_ref:
        assert torch.allclose(g_ours[n], g_ref[n], rtol=1e-4, atol=1e-6), n


def test_packed_loss_equals_unpacked(tiny_llama, tiny_tok):
    model, _ = load_model(tiny_llama)
    lm = AnswerOnlyLM(model)
    exs = [encode(r, tiny_tok, 512) for r in copy_records(4, seed=2)] + [encode(copy_record(9, "4321", n_filler=2), tiny_tok, 512)]

    def nll_of(b):
        return lm(b.input_ids, b.position_ids, b.rows, b.pos, b.targets)[0]

    with torch.no_grad():
        single = {e.id: nll_of(collate([[e]], tiny_tok.pad_token_id)) for e in exs}  # one example per forward
        groups = pack(exs, pack_length=300)
        assert max(len(g) for g in groups) >= 2
        b = collate(groups, tiny_tok.pad_token_id, packed=True)
        packed = nll_of(b)
        # without the restarting position_ids the packed examples would see each other
        leaky = lm(b.input_ids, None, b.rows, b.pos, b.targets)[0]
    expected = torch.cat([single[e.id] for g in groups for e in g])  # packed order
    assert torch.allclose(packed, expected, atol=1e-5)
    assert torch.allclose(packed.mean(), expected.mean(), atol=1e-6)
    assert not torch.allclose(leaky, expected, atol=1e-3)
