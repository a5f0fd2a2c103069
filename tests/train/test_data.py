"""Rendering for training: answer-only targets, packing layout, bad inputs."""

import dataclasses

import pytest
import torch

from conftest import copy_record, copy_records
from needlework.data.render import render
from needlework.errors import NeedleworkError
from needlework.train.data import collate, encode, epoch_plan, pack


def test_only_answer_tokens_carry_loss(tiny_tok):
    recs = [copy_record(0, "1234"), copy_record(1, "5678", n_filler=3)]
    exs = [encode(r, tiny_tok, 512) for r in recs]
    b = collate([[e] for e in exs], tiny_tok.pad_token_id)
    labels = b.labels()
    for i, r in enumerate(recs):
        rd = render(r, tiny_tok)
        answer = tiny_tok.convert_ids_to_tokens(rd.answer_ids)
        assert answer == list(r.answer) + ["</s>"]  # the answer digits and EOS
        carried = (labels[i] != -100).nonzero().flatten().tolist()
        assert carried == list(range(rd.prompt_len, rd.n_tokens))  # nothing from the prompt or the padding
        assert labels[i, carried].tolist() == rd.answer_ids
    # the hidden states used are those one position earlier (t predicts t+1)
    assert torch.equal(b.input_ids[b.rows, b.pos + 1], b.targets)


def test_packed_rows_restart_positions(tiny_tok):
    exs = [encode(r, tiny_tok, 512) for r in copy_records(5, seed=3)]
    groups = pack(exs, pack_length=2 * len(exs[0].input_ids) + 1)
    assert [len(g) for g in groups] == [2, 2, 1]
    b = collate(groups, tiny_tok.pad_token_id, packed=True)
    n = len(exs[0].input_ids)
    assert b.position_ids[0, :n].tolist() == list(range(n)) and b.position_ids[0, n : 2 * n].tolist() == list(range(n))
    assert b.position_ids[2, n:].tolist() == list(range(b.input_ids.shape[1] - n))  # pad tail: its own segment
    assert torch.equal(b.input_ids[b.rows, b.pos + 1], b.targets) and b.n_answer == sum(e.n_answer for e in exs)


def test_epoch_plan_is_deterministic(tiny_tok):
    exs = [encode(r, tiny_tok, 512) for r in copy_records(10, seed=4)]
    ids = lambda plan: [e.id for mb in plan for row in mb for e in row]  # noqa: E731
    assert ids(epoch_plan(exs, 0, 7, 3)) == ids(epoch_plan(exs, 0, 7, 3))
    assert ids(epoch_plan(exs, 0, 7, 3)) != ids(epoch_plan(exs, 1, 7, 3))
    assert sorted(ids(epoch_plan(exs, 1, 7, 3))) == sorted(e.id for e in exs)


def test_record_without_answer_is_an_error(tiny_tok):
    r = dataclasses.replace(copy_record(0, "1234"), answers=[""])
    with pytest.raises(NeedleworkError, match="no answer"):
        encode(r, tiny_tok, 512)


def test_too_long_is_an_error_unless_truncating_haystack(tiny_tok):
    r = copy_record(0, "1234", n_filler=6)
    n = render(r, tiny_tok).n_tokens
    short = render(copy_record(0, "1234", n_filler=2), tiny_tok).n_tokens
    with pytest.raises(NeedleworkError, match="more than max_length"):
        encode(r, tiny_tok, short)
    e = encode(r, tiny_tok, short, truncate_haystack=True)
    assert len(e.input_ids) <= short < n
    assert tiny_tok.convert_ids_to_tokens(e.input_ids[e.prompt_len :]) == ["1", "2", "3", "4", "</s>"]
    assert tiny_tok.decode(e.input_ids[: e.prompt_len]).count("1 2 3 4") == 1  # the gold document survived
    gold_only = render(copy_record(0, "1234", n_filler=0), tiny_tok).n_tokens
    with pytest.raises(NeedleworkError, match="even without its non-gold documents"):
        encode(r, tiny_tok, gold_only - 1, truncate_haystack=True)
