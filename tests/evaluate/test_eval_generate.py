import pytest
import torch

from needlework.errors import NeedleworkError
from needlework.evaluate.config import EvalConfig
from needlework.evaluate.generate import generate_answers
from needlework.models.decode import eos_token_ids, greedy_generate, newline_and_blank_ids, postprocess

LENGTHS = (5, 23, 11, 40, 17)


def _reference(model, prompt, max_new):
    """One prompt at a time through transformers' own greedy `generate`."""
    out = model.generate(
        torch.tensor([prompt]),
        attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
        max_new_tokens=max_new,
        do_sample=False,
        pad_token_id=0,
    )
    return out[0, len(prompt) :].tolist()


def test_batched_left_padded_equals_one_at_a_time_generate(tiny_model, make_prompts):
    prompts = make_prompts(LENGTHS)
    eos = eos_token_ids(tiny_model, None)
    refs = []
    for p in prompts:
        ref = _reference(tiny_model, p, 8)
        refs.append(ref[:-1] if ref and ref[-1] in eos else ref)  # generate keeps EOS; we drop it
    assert sum(len(r) for r in refs) >= 20  # real continuations, not immediate EOS
    for batch_size in (1, 2, 5):  # 2: batches of unequal lengths, and a last batch of one
        got = greedy_generate(tiny_model, prompts, 8, pad_id=0, eos_ids=eos, batch_size=batch_size, progress=False)
        assert got == refs, batch_size


def _first_new(g):
    """First index k >= 1 whose token did not occur before it (so a stop there is unambiguous)."""
    return next(k for k in range(1, len(g)) if g[k] not in g[:k])


def test_stop_rules_truncate_at_eos_and_newline(tiny_llama, make_prompts):
    prompts = make_prompts((9, 30))
    free = greedy_generate(tiny_llama, prompts, 12, pad_id=0, batch_size=2, progress=False)
    g = free[0]
    k = _first_new(g)
    # EOS: the row stops before the EOS token, which is not returned
    out = greedy_generate(tiny_llama, prompts[:1], 12, pad_id=0, eos_ids=frozenset({g[k]}), progress=False)
    assert out[0] == g[:k]
    # newline after text: the newline token is kept and the row stops
    out = greedy_generate(tiny_llama, prompts[:1], 12, pad_id=0, stop_at_newline=True, newline_ids=frozenset({g[k]}), progress=False)
    assert out[0] == g[: k + 1]
    # a blank newline before any text does not stop the row
    nl = frozenset({g[0]})
    out = greedy_generate(
        tiny_llama, prompts[:1], 12, pad_id=0, stop_at_newline=True, newline_ids=nl, blank_ids=frozenset(nl), progress=False
    )
    later = [j for j in range(1, len(g)) if g[j] == g[0]]
    assert out[0] == (g[: later[0] + 1] if later else g)
    # budgets and stop flags are per row: one row stops early, the other runs on unchanged
    out = greedy_generate(
        tiny_llama, prompts, [12, 4], pad_id=0, stop_at_newline=[True, False], newline_ids=frozenset({g[k]}), batch_size=2, progress=False
    )
    assert out[0] == g[: k + 1]
    assert out[1] == free[1][:4]


def test_postprocess():
    assert postprocess("  Paris\nThe capital.", stop_at_newline=True) == "Paris"
    assert postprocess("\n\n Paris \n", stop_at_newline=True) == "Paris"
    assert postprocess("[1]\n[3] ", stop_at_newline=False) == "[1]\n[3]"
    assert postprocess("", stop_at_newline=True) == ""


def test_newline_and_blank_ids(smollm2_tokenizer):
    newline, blank = newline_and_blank_ids(smollm2_tokenizer)
    nl_id = smollm2_tokenizer("\n", add_special_tokens=False)["input_ids"][0]
    word = smollm2_tokenizer("Paris", add_special_tokens=False)["input_ids"][0]
    assert nl_id in newline and nl_id in blank
    assert word not in newline and word not in blank


def test_generate_answers_returns_one_stripped_string_per_record(tiny_llama, smollm2_tokenizer, mixed_records):
    recs = mixed_records
    cfg = EvalConfig(batch_size=2, max_new_tokens=6, chat=False)
    outs = generate_answers(tiny_llama, smollm2_tokenizer, recs, cfg, progress=False)
    assert len(outs) == len(recs) and all(isinstance(o, str) for o in outs)
    for r, o in zip(recs, outs):
        assert o == o.strip()
        if r.task != "summhay":
            assert "\n" not in o
    # the order of records does not change any answer (sorting by length is undone)
    rev = generate_answers(tiny_llama, smollm2_tokenizer, recs[::-1], cfg, progress=False)
    assert rev[::-1] == outs


def test_too_long_prompt_is_a_clear_error(tiny_llama, smollm2_tokenizer, make_qa_record):
    r = make_qa_record("long", "mdqa", "Q?", "A fact about Paris.", "Paris", n_docs=200)
    with pytest.raises(NeedleworkError, match="exceed the model's 2048 positions"):
        generate_answers(tiny_llama, smollm2_tokenizer, [r], EvalConfig(chat=False), progress=False)


def test_generation_through_a_peft_adapter_matches_generate(make_tiny, make_prompts, smollm2_tokenizer):
    from peft import LoraConfig, get_peft_model

    base = make_tiny("llama", len(smollm2_tokenizer))
    before = greedy_generate(base, make_prompts((6, 19)), 6, pad_id=0, batch_size=2, progress=False)
    cfg = LoraConfig(r=4, lora_alpha=64, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], init_lora_weights=False)
    model = get_peft_model(base, cfg).eval()
    prompts = make_prompts((6, 19))
    eos = eos_token_ids(model, None)
    got = greedy_generate(model, prompts, 6, pad_id=0, eos_ids=eos, batch_size=2, progress=False)
    refs = [_reference(model, p, 6) for p in prompts]
    assert got == [r[:-1] if r and r[-1] in eos else r for r in refs]
    assert got != before  # the adapter is really applied
