"""The decoding layer on its own: stop rules on hand-built token streams, left padding, the loop
with a fake step function whose right answer is known, batching order, and the one-model step
against transformers' own greedy `generate`."""

import pytest
import torch

from needlework.errors import NeedleworkError
from needlework.models.decode import (
    AnswerPlan,
    StopRules,
    StopWhen,
    cached_step,
    decode_batched,
    decode_loop,
    greedy_answers,
    greedy_generate,
    left_pad,
    postprocess,
)

EOS, NL, SPACE = 2, 10, 11  # token ids of the hand-built streams: 10 is "\n", 11 is " "
NEWLINE, BLANK = frozenset({NL}), frozenset({NL, SPACE})


def _push_all(rules, steps: list[list[int]]) -> list[bool]:
    return [rules.push(s) for s in steps]


def test_stop_rules_eos_is_dropped_and_ends_the_row():
    rules = StopRules([5], [False], frozenset({EOS}), NEWLINE, BLANK)
    assert _push_all(rules, [[7], [8], [EOS]]) == [False, False, True]
    assert rules.gen == [[7, 8]]


def test_stop_rules_newline_only_after_text_and_kept():
    rules = StopRules([9, 9], [True, False], frozenset({EOS}), NEWLINE, BLANK)
    # row 0 stops at the newline after "7" (a leading newline and a space are no answer yet);
    # row 1 has no newline rule and runs on to its EOS
    done = _push_all(rules, [[NL, NL], [SPACE, 5], [7, NL], [NL, 6], [4, EOS]])
    assert done == [False, False, False, False, True]
    assert rules.gen == [[NL, SPACE, 7, NL], [NL, 5, NL, 6]]


def test_stop_rules_budget_per_row_and_zero_budget():
    rules = StopRules([2, 0, 3], [False] * 3, frozenset(), NEWLINE, BLANK)
    assert rules.done == [False, True, False]
    assert _push_all(rules, [[5, 5, 5], [6, 6, 6], [7, 7, 7]]) == [False, False, True]
    assert rules.gen == [[5, 6], [], [5, 6, 7]]


def test_stop_when_predicate_gets_the_count_and_drops_the_stop_token():
    seen = []

    def is_stop(t, n):
        seen.append((t, n))
        return t == NL and n > 0  # a leading newline is no answer's end

    rules = StopWhen(2, 4, is_stop)
    # row 0 stops at its second newline (not kept); row 1 at its budget of 4
    assert _push_all(rules, [[NL, 3], [5, 4], [NL, 6], [9, 9]]) == [False, False, False, True]
    assert rules.gen == [[NL, 5], [3, 4, 6, 9]]
    assert seen[:4] == [(NL, 0), (3, 0), (5, 1), (4, 1)]


def test_left_pad_ends_every_prompt_at_the_last_column():
    ids, mask, pos = left_pad([[5, 6, 7], [8]], pad_id=0, device="cpu")
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert pos.tolist() == [[0, 1, 2], [0, 0, 0]]  # positions count real tokens only


def _successor_step(vocab: int, calls: list):
    """A fake model: the next token is the last input token + 1 (mod vocab)."""

    def step(ids, mask, pos, k):
        calls.append((k, tuple(ids.shape), mask.tolist(), pos.tolist()))
        return torch.nn.functional.one_hot((ids[:, -1] + 1) % vocab, vocab).float()

    return step


def test_decode_loop_with_a_known_step_function():
    calls = []
    rules = StopRules([3, 5], [False, False], frozenset({9}), frozenset(), frozenset())
    gen = decode_loop(_successor_step(20, calls), [[1, 2, 3], [6]], 0, "cpu", rules)
    # row 0: 4 5 6 (budget 3); row 1: 7 8, then 9 is EOS (dropped)
    assert gen == [[4, 5, 6], [7, 8]]
    k, shape, mask, pos = calls[0]
    assert (k, shape, mask, pos) == (0, (2, 3), [[1, 1, 1], [0, 0, 1]], [[0, 1, 2], [0, 0, 0]])
    k, shape, mask, pos = calls[1]  # one new column per step; positions continue per row
    assert (k, shape, mask, pos) == (1, (2, 1), [[1, 1, 1, 1], [0, 0, 1, 1]], [[3], [1]])
    assert [c[0] for c in calls] == [0, 1, 2]  # row 0's budget ends the loop after token 2


def test_decode_batched_is_longest_first_and_keeps_input_order():
    prompts = [[1], [1, 2, 3], [1, 2], [1, 2, 3, 4]]
    batches = []

    def decode_batch(idx):
        batches.append(list(idx))
        return [[i] for i in idx]

    assert decode_batched(prompts, 2, decode_batch, progress=False) == [[0], [1], [2], [3]]
    assert batches == [[3, 1], [2, 0]]
    with pytest.raises(NeedleworkError, match="empty prompt"):
        decode_batched([[1], []], 2, decode_batch, progress=False)


def test_answer_plan_texts_and_rules():
    class Tok:
        def decode(self, ids, **_):
            return "".join({5: " Paris", 10: "\n", 6: "more"}[i] for i in ids)

    plan = AnswerPlan([[1], [1]], [4, 4], [True, False], frozenset({2}), frozenset({10}), frozenset({10}), 0)
    assert plan.texts(Tok(), [[5, 10, 6], [5, 10, 6]]) == ["Paris", "Paris\nmore"]
    assert plan.rules([1]).stop_newline == [False] and plan.rules([1]).max_new == [4]
    assert postprocess(" a \n b", True) == "a"


def test_cached_step_equals_transformers_generate(build_tiny):
    model = build_tiny("llama").eval()
    torch.manual_seed(0)
    prompts = [torch.randint(3, 128, (n,)).tolist() for n in (7, 12, 4)]
    want = []
    for p in prompts:
        out = model.generate(
            torch.tensor([p]),
            attention_mask=torch.ones(1, len(p), dtype=torch.long),
            do_sample=False,
            max_new_tokens=5,
            min_new_tokens=5,
            pad_token_id=0,
        )
        want.append(out[0, len(p) :].tolist())
    assert greedy_generate(model, prompts, 5, pad_id=0, batch_size=2, progress=False) == want
    plan = AnswerPlan(prompts, [5] * 3, [False] * 3, frozenset(), frozenset(), frozenset(), 0)
    assert greedy_answers(plan, lambda: cached_step(model), "cpu", 3, progress=False) == want
