"""Generate-mode scoring keeps an example when Wu et al.'s stemmed ROUGE-1 recall of its answer in
the decoded output exceeds `success_threshold` (cases where stemming decides the outcome)."""

import dataclasses

import torch

from heads_helpers import build, make_example
from needlework.heads.score import ScoreConfig, head_table, score_examples


def test_generate_mode_gate_uses_stemmed_rouge1_recall():
    torch.manual_seed(0)
    model = build("llama")
    answers = {
        "ex0": "running shoes",  # output "run shoe": stemmed recall 1.0 (0.0 without stemming)
        "ex1": "Lake Vostok",  # recall 0.5: not above the threshold
        "ex2": "studies",
    }  # "study": 1.0 stemmed
    examples = [dataclasses.replace(make_example(i, 20 + i), answer_text=answers[f"ex{i}"]) for i in range(3)]
    outputs = {"ex0": "run shoe", "ex1": "Vostok", "ex2": "study"}
    cfg = ScoreConfig(mode="generate", batch_size=1, max_new_tokens=3)
    kept = {}
    for e in examples:  # decode stands for the text each example generated (the tiny model's tokens are random)
        df = score_examples(model, [e], cfg, decode=lambda ids, text=outputs[e.id]: text)
        assert (df.answer == outputs[e.id]).all()
        kept[e.id] = bool(df.success.iloc[0]), bool(df.kept.iloc[0])
    assert kept == {"ex0": (True, True), "ex1": (False, False), "ex2": (True, True)}
    df = score_examples(model, examples[1:2], dataclasses.replace(cfg, keep_failed=True), decode=lambda ids: "Vostok")
    assert not df.success.iloc[0] and df.kept.all()  # keep_failed keeps it, flagged
    assert (head_table(df)["n"] == 1).all()
