"""Real SummHay topics: paraphrased insights located on their own sentence, exact citations,
unlocated citing documents listed and counted, both file shapes (official and real release)."""

from __future__ import annotations

import json

from needlework.data.loaders import LoadConfig, load_real, load_real_report
from needlework.data.locate import INSIGHT_THRESHOLD, InsightLocator, content_words, find_insight, sentence_spans
from needlework.data.records import Document, Record, read_jsonl, validate_record

INSIGHTS = {  # subtopic -> {insight_id: insight}
    "Remote work": {
        "a1": "Remote workers save about an hour a day that they used to spend commuting.",
        "a2": "Video calls cause noticeable fatigue after roughly three hours of meetings.",
        "a3": "Several startups cut office rent costs after going fully remote.",  # no document really says it
    },
    "Company news": {
        "b1": "FedEx reported earnings that topped fiscal Q3 views on cost cuts, despite missing revenue expectations.",
        "b2": "Bed Bath & Beyond shares dropped 21% after it sought shareholder approval for a reverse stock split.",
    },
}
FOUNDED = "Founded in 1971, Bed Bath & Beyond has long been a staple of the American retail landscape."
DOCS = [  # (document_id, text, insights included): documents paraphrase their insights
    (
        "d0",
        "The survey covered 2,000 employees in twelve countries. Remote employees now save close to an hour every day "
        "that they once spent on commuting. Managers remained cautious about productivity.",
        ["a1"],
    ),
    (
        "d1",
        "Meetings have changed. After about three hours of video calls, many staff report noticeable fatigue, "
        "researchers found. Shorter calls help.",
        ["a2"],
    ),
    ("d2", "FedEx posted fiscal Q3 earnings that beat views thanks to cost cuts, although revenue missed expectations. " + FOUNDED, ["b1"]),
    # labelled with b1 and b2, but only unrelated sentences that share their company names
    ("d3", FOUNDED + " FedEx, founded in 1971 as well, ships parcels worldwide from its Memphis hub.", ["b1", "b2"]),
    (
        "d4",
        "Retail news: Bed Bath & Beyond stock fell 21% once the company asked shareholders to approve a reverse split. "
        "Analysts expect more volatility.",
        ["b2"],
    ),
    ("d5", "Remote work became common in 2020. Offices emptied and commuting trains ran half full.", ["a3"]),
    (
        "d6",
        "Remote staff now save close to an hour a day they used to spend commuting. Video calls still tire "
        "many, with noticeable fatigue after roughly three hours of meetings.",
        ["a1", "a2"],
    ),
]
SPANS = {  # (insight, document) -> the sentence that expresses the insight there
    ("a1", "d0"): "Remote employees now save close to an hour every day that they once spent on commuting.",
    ("a2", "d1"): "After about three hours of video calls, many staff report noticeable fatigue, researchers found.",
    ("b1", "d2"): "FedEx posted fiscal Q3 earnings that beat views thanks to cost cuts, although revenue missed expectations.",
    ("b2", "d4"): "Retail news: Bed Bath & Beyond stock fell 21% once the company asked shareholders to approve a reverse split.",
    ("a1", "d6"): "Remote staff now save close to an hour a day they used to spend commuting.",
    ("a2", "d6"): "Video calls still tire many, with noticeable fatigue after roughly three hours of meetings.",
}
UNLOCATED = {"a3": ["d5"], "b1": ["d3"], "b2": ["d3"]}


def official_topic() -> dict:
    return {
        "topic": "Work and markets",
        "subtopics": [
            {"subtopic": st, "insights": [{"insight_id": k, "insight": v} for k, v in ins.items()]} for st, ins in INSIGHTS.items()
        ],
        "documents": [{"document_id": i, "document_text": t, "insights_included": inc} for i, t, inc in DOCS],
    }


def real_release_topic() -> dict:
    """The shape of the real release: topic_id/topic_metadata, subtopic_name, insight_name, label_ columns
    (no insights_included here; one label names an insight that is not in the topic)."""
    ids = [k for ins in INSIGHTS.values() for k in ins]
    return {
        "topic_id": "64192736",
        "topic_metadata": {"articles": [], "insight_duplicates": {}},
        "subtopics": [
            {
                "subtopic": f"{st}: details",
                "subtopic_name": st,
                "insights": [{"insight_name": k.upper(), "insight": v, "insight_id": k} for k, v in ins.items()],
            }
            for st, ins in INSIGHTS.items()
        ],
        "documents": [
            {
                "document_id": i,
                "document_text": t,
                "document_metadata": {"plan": "..."},
                "idx": n,
                **{f"label_{k}": int(k in inc) for k in ids},
                "label_zz_removed": 1,
            }
            for n, (i, t, inc) in enumerate(DOCS)
        ],
    }


def _needs_a_needle() -> bool:
    """Whether the record format (still) requires a needle in every record."""
    r = Record(
        id="x",
        task="summhay",
        concept="real",
        context="real",
        documents=[Document("d", "", "text")],
        question="q",
        answers=["d"],
        needles=[],
        citations=["d"],
        gold_docs=[0],
        meta={"unlocated_docs": [0]},
    )
    return any(p.startswith("no needles") for p in validate_record(r))


def _check_topic(res) -> None:
    by = {r.meta["insight_id"]: r for r in res.records}
    cited = {k: [i for i, _, inc in DOCS if k in inc] for ins in INSIGHTS.values() for k in ins}
    zero = {k for k in cited if all(d in UNLOCATED.get(k, []) for d in cited[k])}  # a3: no located span at all
    assert zero == {"a3"}
    if _needs_a_needle():
        assert set(by) == set(cited) - zero and res.skipped == {"no citing document has a located insight span": 1}
    else:
        assert set(by) == set(cited) and res.skipped == {} and by["a3"].needles == []
    for k, r in by.items():
        assert validate_record(r) == [], (k, validate_record(r))
        assert r.citations == cited[k] and r.gold_docs == [int(d[1:]) for d in cited[k]]  # exactly the labelled documents
        assert r.answers == [" ".join(cited[k])] and r.question == INSIGHTS["Remote work" if k[0] == "a" else "Company news"][k]
        got = {r.documents[n.doc].id: r.needle_text(i) for i, n in enumerate(r.needles)}
        assert got == {d: s for (kk, d), s in SPANS.items() if kk == k}, k
        assert all(n.role == "evidence" for n in r.needles)
        assert [r.documents[i].id for i in r.meta["unlocated_docs"]] == UNLOCATED.get(k, [])
        assert r.meta["insight_spans"] == [r.needle_text(i) for i in range(len(r.needles))]
        assert all(INSIGHT_THRESHOLD <= s <= 1 for s in r.meta["insight_match"])
        assert r.meta["span_coverage"] == round(len(r.needles) / len(r.citations), 4)
        assert FOUNDED not in " ".join(r.meta["insight_spans"])  # never the unrelated sentence, alone or in a window
    loaded = set(by)
    n_cite = sum(len(cited[k]) for k in loaded)
    n_unloc = sum(len(UNLOCATED.get(k, [])) for k in loaded)
    assert dict(res.summhay) == {
        "insights": len(loaded),
        "citing_docs": n_cite,
        "located": n_cite - n_unloc,
        "unlocated": n_unloc,
        "no_span": int("a3" in loaded),
    }
    line = res.span_summary()
    assert f"{len(loaded)} insights with exact citations ({n_cite} citing documents)" in line
    assert f"located in {n_cite - n_unloc} of them" in line and f"not in {n_unloc} " in line


def test_real_release_shape_paraphrases_located_on_their_sentence(tmp_path):
    (tmp_path / "topic_work.json").write_text(json.dumps(real_release_topic()))
    res = load_real_report("summhay", str(tmp_path / "topic_work.json"))
    _check_topic(res)
    r = res.records[0]
    assert r.meta["topic"] == "64192736" and r.meta["subtopic"] == "Remote work"  # topic_id; brief subtopic_name
    assert [x.meta["subtopic"] for x in load_real("summhay", str(tmp_path), LoadConfig(limited=("company news",)))] == ["Company news"] * 2


def test_official_shape_loads_the_same(tmp_path):
    (tmp_path / "topic_work.json").write_text(json.dumps(official_topic()))
    res = load_real_report("summhay", str(tmp_path))
    _check_topic(res)
    assert res.records[0].meta["topic"] == "Work and markets"
    # insights_included wins over label_ columns when a file has both
    both = real_release_topic()
    for d, (_, _, inc) in zip(both["documents"], DOCS):
        d["insights_included"] = inc
        d["label_a1"] = 1
    (tmp_path / "topic_work.json").write_text(json.dumps(both))
    by = {r.meta["insight_id"]: r for r in load_real("summhay", str(tmp_path))}
    assert by["a1"].citations == ["d0", "d6"]


def test_threshold_override_unlocates_but_keeps_citations(tmp_path):
    (tmp_path / "topic_work.json").write_text(json.dumps(official_topic()))
    strict = load_real_report("summhay", str(tmp_path), LoadConfig(insight_threshold=0.99))
    for r in strict.records:  # no paraphrase reaches 0.99: every citing document is unlocated, citations unchanged
        assert r.needles == [] and len(r.meta["unlocated_docs"]) == len(r.citations) > 0
    if _needs_a_needle():
        assert strict.records == [] and strict.skipped == {"no citing document has a located insight span": 5}
    else:
        assert strict.summhay["located"] == 0 and strict.summhay["no_span"] == 5


def test_locator_prefers_the_right_sentence_and_rejects_unrelated_ones():
    texts = [t for _, t, _ in DOCS]
    loc = InsightLocator(texts)
    fedex = INSIGHTS["Company news"]["b1"]
    assert loc.similarity(fedex, FOUNDED) < 0.1  # shares no content word with the FedEx insight
    assert loc.locate(3, fedex) is None and loc.best(3, fedex)[2] < INSIGHT_THRESHOLD
    s, e, score = loc.locate(2, fedex)
    assert texts[2][s:e] == SPANS[("b1", "d2")] and 0.5 < score < 1  # the window stops before FOUNDED
    # in a document holding two insights, each insight gets its own sentence and prefers it
    for k in ("a1", "a2"):
        s, e, _ = loc.locate(6, INSIGHTS["Remote work"][k])
        span = texts[6][s:e]
        assert span == SPANS[(k, "d6")]
        others = [v for ins in INSIGHTS.values() for kk, v in ins.items() if kk != k]
        assert loc.similarity(INSIGHTS["Remote work"][k], span) > max(loc.similarity(o, span) for o in others)
    # verbatim copies score 1.0 (case and spacing ignored)
    assert loc.best(0, "remote employees now save close to an hour every day  that they once spent on commuting.")[2] == 1.0
    assert find_insight("First. The cat sat quietly on the mat. Last.", "A cat sat quietly on a mat.")[:2] == (7, 38)


def test_sentences_and_content_words():
    text = 'Big U.S. banks fell 1.2% at 9:43 a.m. on Monday. Mr. Dimon spoke.\nAnna: yes<br>Ben: no! "Quote." End'
    assert [text[a:b] for a, b in sentence_spans(text)] == [
        "Big U.S. banks fell 1.2% at 9:43 a.m. on Monday.",
        "Mr. Dimon spoke.",
        "Anna: yes",
        "Ben: no!",
        '"Quote."',
        "End",
    ]
    assert content_words("The company's cuts, cutting and raised 1,000 raises") == ["company", "cut", "cut", "rais", "1000", "rais"]
    assert content_words("It is of the and") == []


def test_cli_prints_the_span_summary(tmp_path):
    import typer
    from typer.testing import CliRunner

    from needlework.data import cli_real

    app = typer.Typer()
    cli_real.register(app)
    (tmp_path / "topic_work.json").write_text(json.dumps(real_release_topic()))
    out = tmp_path / "s.jsonl"
    res = CliRunner().invoke(app, ["load", "--format", "summhay", str(tmp_path / "topic_work.json"), "--out", str(out)])
    assert res.exit_code == 0, res.output
    recs = read_jsonl(out, validate=True)
    n = len(recs)
    assert f"wrote {n} records" in res.output and f"summhay: {n} insights with exact citations" in res.output
    assert "located in 6 of them" in res.output and "(listed in meta.unlocated_docs)" in res.output
    assert {r.meta["insight_id"]: [r.documents[i].id for i in r.meta["unlocated_docs"]] for r in recs}["b2"] == ["d3"]


def test_lengthened_records_keep_unlocated_documents(tmp_path):
    filler = " The river valley was settled by farmers who grew barley and kept sheep on the hills." * 6
    for k in range(3):  # other topics supply the distractors
        topic = official_topic()
        for d in topic["documents"]:
            d["document_id"] += f"-{k}"
            d["document_text"] += filler
        (tmp_path / f"topic_{k}.json").write_text(json.dumps(topic))
    plain = {r.id: r for r in load_real("summhay", str(tmp_path))}
    for r in load_real("summhay", str(tmp_path), LoadConfig(length=1500)):
        before = plain[r.id]
        assert len(r.documents) > len(before.documents) and abs(r.meta["n_tokens"] - 1500) <= 32
        assert [r.documents[i].id for i in r.meta["unlocated_docs"]] == [before.documents[i].id for i in before.meta["unlocated_docs"]]
        assert [r.documents[g].id for g in r.gold_docs] == r.citations == before.citations
        assert [r.needle_text(i) for i in range(len(r.needles))] == before.meta["insight_spans"]
        assert validate_record(r) == []
