import math

import pytest

from needlework.errors import NeedleworkError
from needlework.evaluate.metrics import (
    METRICS,
    PRIMARY,
    best_subspan_acc,
    citation_scores,
    clean_kv,
    exact_match,
    kv_contains,
    kv_exact_match,
    normalize_answer,
    parse_citations,
    primary_metric,
    score_example,
    token_f1,
)


def test_normalize_answer_drops_case_punctuation_articles_and_spaces():
    assert normalize_answer("  The  Eiffel-Tower, in Paris!! ") == "eiffeltower in paris"
    assert normalize_answer("An apple a day") == "apple day"
    assert normalize_answer("theatre") == "theatre"  # 'the' inside a word stays
    assert normalize_answer("") == ""


def test_exact_match_with_several_golds():
    assert exact_match("the Beatles.", ["Beatles"]) == 1.0
    assert exact_match("Beatles band", ["Beatles"]) == 0.0
    assert exact_match("Lisboa", ["Lisbon", "Lisboa"]) == 1.0
    assert exact_match("", ["Lisbon"]) == 0.0
    assert exact_match("Lisbon", []) == 0.0


def test_token_f1_values():
    # pred tokens {paris, france}, gold {paris}: p = 1/2, r = 1, f1 = 2/3
    assert token_f1("Paris, France", ["Paris"]) == pytest.approx(2 / 3)
    assert token_f1("Paris", ["Paris"]) == 1.0
    assert token_f1("London", ["Paris"]) == 0.0
    # max over golds
    assert token_f1("New York City", ["York", "New York City"]) == 1.0
    # empty output and no golds
    assert token_f1("", ["Paris"]) == 0.0
    assert token_f1("   the  ", ["Paris"]) == 0.0  # normalises to empty
    assert token_f1("Paris", []) == 0.0
    # repeated tokens count with multiplicity: pred "paris paris", gold "paris": p = 1/2, r = 1
    assert token_f1("Paris Paris", ["Paris"]) == pytest.approx(2 / 3)


def test_best_subspan_accuracy():
    assert best_subspan_acc("I think the answer is The Beatles, clearly.", ["beatles"]) == 1.0
    assert best_subspan_acc("The Rolling Stones", ["The Beatles"]) == 0.0
    assert best_subspan_acc("It was Ringo Starr.", ["John Lennon", "Ringo Starr"]) == 1.0
    assert best_subspan_acc("", ["Paris"]) == 0.0
    # a gold that normalises to "" would match everything; it is ignored
    assert best_subspan_acc("anything", ["the", "!!"]) == 0.0
    # punctuation in the gold does not block a match
    assert best_subspan_acc("born in washington dc", ["Washington, D.C."]) == 1.0


def test_parse_citations_forms():
    assert parse_citations("[1] [3]") == [1, 3]
    assert parse_citations("Document [2], Document [4]") == [2, 4]
    assert parse_citations("Doc 3 and doc 5") == [3, 5]
    assert parse_citations("1, 2 and 7") == [1, 2, 7]
    assert parse_citations("[2] [2] [1] [2]") == [2, 1]  # duplicates once, first-mention order
    # bracketed numbers win over stray numbers in prose
    assert parse_citations("In 2021, Document [3] said so") == [3]
    assert parse_citations("3rd, 2.5 and x7") == []  # not standalone integers
    assert parse_citations("") == []
    assert parse_citations("none of them") == []


def test_citation_scores_maps_positions_to_ids(make_summhay_record):
    r = make_summhay_record(gold=(1, 3))  # gold ids doc1, doc3 = positions [2] and [4]
    s = citation_scores("[2] [4]", r)
    assert (s["cite_precision"], s["cite_recall"], s["cite_f1"], s["n_cited"]) == (1.0, 1.0, 1.0, 2.0)
    s = citation_scores("[2] [1]", r)  # one right, one wrong
    assert (s["cite_precision"], s["cite_recall"]) == (0.5, 0.5)
    assert s["cite_f1"] == pytest.approx(0.5)
    s = citation_scores("[2]", r)  # p = 1, r = 1/2, f1 = 2/3
    assert s["cite_f1"] == pytest.approx(2 / 3)


def test_citation_scores_edge_cases(make_summhay_record):
    r = make_summhay_record(gold=(1, 3))
    # duplicates count once
    assert citation_scores("[2] [2] [2] [4]", r)["cite_precision"] == 1.0
    # a number past the last document is an invalid citation: hurts precision only
    s = citation_scores("[2] [4] [9]", r)
    assert s["cite_precision"] == pytest.approx(2 / 3) and s["cite_recall"] == 1.0 and s["n_cited"] == 3.0
    # [0] is not a valid 1-based position either
    assert citation_scores("[0]", r)["cite_precision"] == 0.0
    # empty and unparseable output score 0 everywhere
    for out in ("", "I cannot tell which documents contain it."):
        s = citation_scores(out, r)
        assert (s["cite_precision"], s["cite_recall"], s["cite_f1"], s["n_cited"]) == (0.0, 0.0, 0.0, 0.0)
    # no gold citations: abstaining is right, citing anything is wrong
    r.citations = []
    assert citation_scores("", r)["cite_f1"] == 1.0
    s = citation_scores("[1]", r)
    assert (s["cite_precision"], s["cite_recall"], s["cite_f1"]) == (0.0, 1.0, 0.0)


def test_kv_exact_match_strips_whitespace_quotes_and_period():
    g = ["2d4e-8812"]
    for out in ("2d4e-8812", " 2d4e-8812 \n", '"2d4e-8812"', "'2d4e-8812'.", "\u201c2d4e-8812\u201d", "2d4e-8812."):
        assert kv_exact_match(out, g) == 1.0, out
    assert kv_exact_match("2D4E-8812", g) == 0.0  # case-sensitive
    assert kv_exact_match("The value is 2d4e-8812", g) == 0.0
    assert kv_contains("The value is 2d4e-8812", g) == 1.0
    assert kv_exact_match("", g) == 0.0 and kv_contains("", g) == 0.0
    assert kv_exact_match("", [""]) == 0.0  # a blank gold never matches
    assert clean_kv('"unbalanced') == '"unbalanced'


def test_score_example_per_task(mixed_records):
    m, q, k, s = mixed_records
    assert score_example(m, "The secret password is Marigold.") == {"subspan_acc": 1.0, "f1": pytest.approx(2 / 5)}
    assert score_example(q, "Lisboa") == {"em": 1.0, "f1": 1.0}  # an alias
    assert score_example(k, "2d4e-8812") == {"exact_match": 1.0, "contains": 1.0}
    assert score_example(s, "[2] [4]")["cite_f1"] == 1.0
    for r in mixed_records:
        keys = set(score_example(r, ""))
        assert keys == set(METRICS[r.task]) and PRIMARY[r.task] in keys
        assert all(not math.isnan(v) for v in score_example(r, "").values())


def test_musique_aliases_from_meta(make_qa_record):
    r = make_qa_record("q1", "musique", "Where?", "It was in Lisbon.", "Lisbon")
    r.meta["answer_aliases"] = ["Lisboa"]
    assert score_example(r, "lisboa")["em"] == 1.0


def test_unknown_task_is_a_clear_error(make_qa_record):
    r = make_qa_record("x", "mdqa", "Q?", "A fact about Paris.", "Paris")
    r.task = "translation"
    with pytest.raises(NeedleworkError, match="no metrics for task"):
        score_example(r, "Paris")
    with pytest.raises(NeedleworkError):
        primary_metric("translation")


def test_hand_made_records_are_valid(mixed_records):
    from needlework.data.records import validate_record

    for r in mixed_records:
        assert validate_record(r) == [], r.id
