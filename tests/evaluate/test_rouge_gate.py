"""The generate-mode success gate is Wu et al.'s ROUGE-1 recall: `rouge_score` with `use_stemmer=True`.

Hand-computed cases where stemming or rouge_score's tokenizer changes the result (against plain
lower-cased `\\w+` word matching, what the gate used to compute), each also checked against the
library's own scorer called the way Wu et al. call it.
"""

from __future__ import annotations

import pytest

from needlework.evaluate.metrics import rouge1_recall

# (answer, output, recall by rouge_score with stemming, recall by lower-cased \w+ words without stemming)
CASES = [
    ("running shoes", "run shoe", 1.0, 0.0),  # Porter: running -> run, shoes -> shoe
    ("studies", "study", 1.0, 0.0),  # studies, study -> studi
    ("The Beatles", "beatle", 0.5, 0.0),  # 'the' (3 chars) is kept unstemmed; beatles -> beatl
    ("birth_date", "birth date", 1.0, 0.0),  # '_' separates tokens (only [a-z0-9] are token characters)
    ("São Paulo", "Sao Paulo", 1 / 3, 0.5),  # non-ASCII letters are separators: s, o, paulo
    ("北京", "北京", 0.0, 1.0),  # no [a-z0-9] token in the answer: recall 0
    ("was", "wa", 0.0, 0.0),  # tokens of 3 characters or fewer are not stemmed
    ("Lake Vostok", "It is lake vostok.", 1.0, 1.0),
    ("Lake Vostok", "Vostok", 0.5, 0.5),  # not > 0.5: the example fails the gate
    ("New York New York", "New York", 0.5, 0.5),  # clipped counts
    ("", "anything", 0.0, 0.0),
]


def _unstemmed(answer: str, output: str) -> float:
    import re
    from collections import Counter

    words = lambda s: re.findall(r"\w+", s.lower())  # noqa: E731
    ref, hyp = Counter(words(answer)), Counter(words(output))
    total = sum(ref.values())
    return sum(min(c, hyp[w]) for w, c in ref.items()) / total if total else 0.0


@pytest.mark.parametrize("answer, output, want, unstemmed", CASES)
def test_hand_computed_cases(answer, output, want, unstemmed):
    assert rouge1_recall(answer, output) == pytest.approx(want)
    assert _unstemmed(answer, output) == pytest.approx(unstemmed)  # what the case distinguishes


@pytest.mark.parametrize(
    "answer, output",
    [(a, o) for a, o, *_ in CASES]
    + [
        ("Marie Curie discovered polonium", "The element polonium was discovered by Curie."),
        ("connections", "connected, connecting"),
        ("3.14 meters", "about 3 14 meter"),
    ],
)
def test_equals_rouge_score_with_stemmer(answer, output):
    rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")
    scorer = rouge_scorer.RougeScorer(["rouge1"], use_stemmer=True)
    assert rouge1_recall(answer, output) == scorer.score(target=answer, prediction=output)["rouge1"].recall


def test_heads_score_uses_the_same_function():
    from needlework.heads import score

    assert score.rouge1_recall is rouge1_recall
