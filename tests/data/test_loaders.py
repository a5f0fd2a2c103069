"""Real-data loaders: small hand-made files in each official format, with known answers and spans."""

from __future__ import annotations

import gzip
import json

import pytest

from needlework.data.loaders import LoadConfig, load_real, load_real_report
from needlework.data.locate import find_insight, find_span, question_type
from needlework.data.records import read_jsonl, validate_record, write_jsonl
from needlework.data.render import render
from needlework.errors import NeedleworkError

FILLER = "The river valley was settled by farmers who grew barley and kept sheep on the hills. " * 3


def mdqa_line(q, answers, gold_text, gold_at=1, n=4, isgold=True, title="Gold"):
    ctxs = [
        {"id": f"w{i}", "title": f"Other {i}", "text": f"Passage {i}. " + FILLER, "hasanswer": False, "isgold": False} for i in range(n - 1)
    ]
    ctxs.insert(gold_at, {"id": "g", "title": title, "text": gold_text, "hasanswer": True, "isgold": isgold})
    return {"question": q, "answers": answers, "ctxs": ctxs, "nq_annotated_gold": {"title": title, "long_answer": gold_text}}


MDQA = [
    mdqa_line("who wrote the novel moby dick", ["Herman Melville"], "Moby-Dick is an 1851 novel by  herman\nmelville, an American writer."),
    mdqa_line(
        "when did the berlin wall fall",
        ["1989", "November 9, 1989"],
        "The Berlin Wall fell on 9 November 1989 after weeks of unrest.",
        gold_at=3,
    ),
    mdqa_line("where is the eiffel tower", ["Paris"], "The tower stands in Lyon.", gold_at=0),  # gold lacks the answer: skipped
    mdqa_line("how many legs does a spider have", ["eight"], "Spiders have eight legs and two body parts.", gold_at=2),
]


def write_lines(path, rows, gz=False):
    data = "".join(json.dumps(r) + "\n" for r in rows)
    if gz:
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(data)
    else:
        path.write_text(data)
    return path


def musique_row(qid, answerable=True, second_answer="Warsaw"):
    paras = [{"idx": i, "title": f"T{i}", "paragraph_text": f"Paragraph {i}. " + FILLER, "is_supporting": False} for i in range(5)]
    paras[1] = {"idx": 1, "title": "Marie Curie", "paragraph_text": "Marie Curie was born to the Sklodowski family.", "is_supporting": True}
    paras[3] = {
        "idx": 3,
        "title": "Sklodowski",
        "paragraph_text": f"The Sklodowski family lived in {second_answer} for decades.",
        "is_supporting": True,
    }
    return {
        "id": qid,
        "question": "In which city did the family of Marie Curie live?",
        "answer": "warsaw",
        "answer_aliases": ["Warszawa"],
        "answerable": answerable,
        "paragraphs": paras,
        "question_decomposition": [
            {"id": 11, "question": "Marie Curie >> family", "answer": "Sklodowski family", "paragraph_support_idx": 1},
            {"id": 12, "question": "where did #1 live", "answer": "Warsaw", "paragraph_support_idx": 3},
        ],
    }


def summhay_topic():
    return {
        "topic": "Remote work",
        "subtopics": [
            {
                "subtopic": "Productivity",
                "insights": [
                    {"insight_id": "1.1", "insight": "Remote workers save about an hour a day on commuting."},
                    {"insight_id": "1.2", "insight": "Video calls cause fatigue after three hours."},
                ],
            },
            {"subtopic": "Hiring", "insights": [{"insight_id": "2.1", "insight": "Companies hire across time zones more often."}]},
        ],
        "documents": [
            {
                "document_id": "doc0",
                "document_text": "Intro sentence here. Remote workers save about an hour a day on commuting. Then more.",
                "insights_included": ["1.1"],
            },
            {
                "document_id": "doc1",
                "document_text": "People said many things. "
                "According to surveys, remote staff save roughly an hour each day on commuting! Other news.",
                "insights_included": ["1.1"],
            },
            {
                "document_id": "doc2",
                "document_text": "A report. Companies hire across time zones more often. End.",
                "insights_included": ["2.1"],
            },
            {"document_id": "doc3", "document_text": "Nothing about that here at all. Weather was mild.", "insights_included": ["1.2"]},
        ],
    }


def check(rec):
    problems = validate_record(rec)
    # SummHay with paraphrased insights: each needle's text is listed in meta["insight_spans"]
    if rec.task == "summhay":
        problems = [p for p in problems if "is not the insight" not in p]
        assert [rec.needle_text(i) for i in range(len(rec.needles))] == rec.meta["insight_spans"]
    assert problems == []


def test_find_span_normalises_case_and_space_and_respects_words():
    text = "Born in NEW   york city; someone said one."
    s = find_span(text, ["new york"])
    assert text[s[0] : s[1]] == "NEW   york"
    s = find_span(text, ["one"])
    assert text[s[0] : s[1]] == "one" and s[0] == text.rindex("one")  # not inside "someone"
    assert find_span(text, ["boston"]) is None


def test_question_type():
    assert question_type("who wrote the novel moby dick") == "who"
    assert question_type("how many legs does a spider have") == "how many"
    assert question_type("the song was sung by who") == "who"
    assert question_type("name the capital") == "other"


@pytest.mark.parametrize("gz", [False, True])
def test_mdqa_plain_and_gz(tmp_path, gz):
    path = write_lines(tmp_path / ("nq-open-5_total_documents_gold_at_1.jsonl" + (".gz" if gz else "")), MDQA, gz=gz)
    res = load_real_report("mdqa", str(path))
    assert res.n_read == 4 and len(res.records) == 3
    assert res.skipped == {"gold passage does not contain the answer": 1}
    r0, r1, r3 = res.records
    assert (r0.task, r0.concept, r0.context) == ("mdqa", "real", "real")
    assert r0.needle_text() == "herman\nmelville" and r0.answers == ["Herman Melville", "herman\nmelville"]
    assert r0.gold_docs == [1] and r0.needles[0].doc == 1 and r0.meta["qtype"] == "who"
    assert r0.meta["nq_gold_title"] == "Gold" and r0.id.endswith("-1")
    assert r1.needle_text() == "1989" and r1.gold_docs == [3] and r1.answers == ["1989", "November 9, 1989"]
    assert r3.meta["qtype"] == "how many"
    for r in res.records:
        check(r)


def test_mdqa_oracle_single_passage(tmp_path):
    rows = [
        {
            "question": "who wrote the novel moby dick",
            "answers": ["Herman Melville"],
            "ctxs": [{"title": "Moby-Dick", "text": "A novel by Herman Melville.", "hasanswer": True, "isgold": True}],
        }
    ]
    recs = load_real("mdqa", str(write_lines(tmp_path / "nq-open-oracle.jsonl.gz", rows, gz=True)))
    assert len(recs) == 1 and len(recs[0].documents) == 1 and recs[0].needle_text() == "Herman Melville"


def test_limited_and_limit(tmp_path):
    path = write_lines(tmp_path / "q.jsonl", MDQA)
    recs = load_real("mdqa", str(path), LoadConfig(limited=("who", "how many")))
    assert [r.meta["qtype"] for r in recs] == ["who", "how many"]
    assert len(load_real("mdqa", str(path), LoadConfig(limit=1))) == 1


def test_musique(tmp_path):
    rows = [musique_row("2hop__1_2"), musique_row("2hop__3_4", answerable=False), musique_row("2hop__5_6", second_answer="Krakow")]
    res = load_real_report("musique", str(write_lines(tmp_path / "musique_ans_v1.0_dev.jsonl", rows)))
    assert len(res.records) == 1
    assert res.skipped == {"unanswerable (MuSiQue answerable=false)": 1, "supporting paragraph does not contain its hop's answer": 1}
    r = res.records[0]
    assert r.gold_docs == [1, 3] and [n.doc for n in r.needles] == [1, 3]
    assert [r.needle_text(i) for i in range(2)] == ["Sklodowski family", "Warsaw"]
    assert r.answers == ["warsaw", "Warszawa", "Warsaw"] and r.meta["hop_answers"] == ["Sklodowski family", "Warsaw"]
    assert r.meta["n_hops"] == 2 and r.meta["qtype"] == "2hop" and r.meta["hops"][1]["doc"] == 3
    check(r)
    assert load_real("musique", str(tmp_path / "musique_ans_v1.0_dev.jsonl"), LoadConfig(limited=("3hop",))) == []


def test_summhay_exact_and_fuzzy(tmp_path):
    (tmp_path / "topic_remote.json").write_text(json.dumps(summhay_topic()))
    res = load_real_report("summhay", str(tmp_path))  # a folder of topic files
    by = {r.meta["insight_id"]: r for r in res.records}
    if "1.2" in by:  # its only citing document does not hold it: the citation stays, the document is listed unlocated
        assert by["1.2"].needles == [] and by["1.2"].citations == ["doc3"] and by["1.2"].meta["unlocated_docs"] == [3]
        assert res.skipped == {} and res.summhay["no_span"] == 1
    else:  # while a record needs a needle, such an insight is skipped and counted
        assert res.skipped == {"no citing document has a located insight span": 1}
    assert {"1.1", "2.1"} <= set(by)
    r = by["1.1"]
    assert r.citations == ["doc0", "doc1"] and r.gold_docs == [0, 1] and r.question.startswith("Remote workers")
    assert r.needle_text(0) == "Remote workers save about an hour a day on commuting."
    assert r.needle_text(1) == "According to surveys, remote staff save roughly an hour each day on commuting!"
    assert r.meta["insight_match"][0] == 1.0 and 0.5 < r.meta["insight_match"][1] < 1.0
    assert by["2.1"].meta["insight"] == "Companies hire across time zones more often."
    assert validate_record(by["2.1"]) == []
    for rec in res.records:
        check(rec)
    assert [r.meta["subtopic"] for r in load_real("summhay", str(tmp_path / "topic_remote.json"), LoadConfig(limited=("hiring",)))] == [
        "Hiring"
    ]


def test_find_insight_threshold():
    text = "First. The cat sat quietly on the mat. Last."
    assert find_insight(text, "A cat sat quietly on a mat.", 0.5)[:2] == (7, 38)
    assert find_insight(text, "Stocks fell sharply in Tokyo today.", 0.5) is None


@pytest.mark.parametrize("depth", [None, 0, 100])
def test_lengthen_mdqa(tmp_path, smollm2_tokenizer, depth):
    path = write_lines(tmp_path / "q.jsonl", MDQA * 3)
    cfg = LoadConfig(length=600, depth=depth, seed=1)
    recs = load_real("mdqa", str(path), cfg)
    assert len(recs) == 9
    for r in recs:
        n = render(r, smollm2_tokenizer).n_tokens
        assert abs(n - 600) <= 32 and r.meta["n_tokens"] == n
        assert len(r.documents) > 5 and len({d.id for d in r.documents}) == len(r.documents)
        check(r)
        g = r.gold_docs[0]
        if depth is None:  # original relative position kept
            assert abs(g / (len(r.documents) - 1) - r.meta["gold_position"] / (r.meta["n_ctxs"] - 1)) < 0.15
        else:
            assert g == (0 if depth == 0 else len(r.documents) - 1)
        rendered = render(r, smollm2_tokenizer)
        a, b = rendered.needle_spans[0]
        assert r.needle_text().strip().lower() in smollm2_tokenizer.decode(rendered.input_ids[a:b]).lower()
        # distractors come from other examples: none of them repeats this record's answer
        for i, d in enumerate(r.documents):
            if i not in r.gold_docs:
                assert r.answers[0].lower() not in d.text.lower()
    assert load_real("mdqa", str(path), cfg)[0].to_dict() == recs[0].to_dict()  # same seed, same output


def test_lengthen_musique_and_summhay(tmp_path, smollm2_tokenizer):
    mus = write_lines(tmp_path / "m.jsonl", [musique_row(f"2hop__{i}_{i}") for i in range(6)])
    for r in load_real("musique", str(mus), LoadConfig(length=500)):
        assert abs(render(r, smollm2_tokenizer).n_tokens - 500) <= 32 and [r.needle_text(i) for i in range(2)] == [
            "Sklodowski family",
            "Warsaw",
        ]
        assert r.gold_docs[0] < r.gold_docs[1]
        check(r)
    for k in range(3):  # other topics: other insights, longer documents
        topic = json.dumps(summhay_topic()).replace("Then more.", "Then more. " + FILLER)
        if k:
            topic = topic.replace("commuting", f"commuting in zone {k}").replace("time zones", f"{k} time zones")
        (tmp_path / f"topic_{k}.json").write_text(topic)
    recs = load_real("summhay", str(tmp_path), LoadConfig(length=400))
    assert len(recs) == 6
    for r in recs:
        assert abs(render(r, smollm2_tokenizer).n_tokens - 400) <= 32
        assert all(c in {d.id for d in r.documents} for c in r.citations)
        check(r)


def test_lengthen_skips_when_too_long_or_no_pool(tmp_path):
    path = write_lines(tmp_path / "q.jsonl", MDQA[:1])
    res = load_real_report("mdqa", str(path), LoadConfig(length=40))
    assert res.records == [] and any("gold documents alone" in k for k in res.skipped)
    res = load_real_report("mdqa", str(path), LoadConfig(length=3000))
    assert res.records == [] and any("cannot reach --length 3000" in k for k in res.skipped)


def test_write_and_read_back(tmp_path):
    recs = load_real("mdqa", str(write_lines(tmp_path / "q.jsonl", MDQA)))
    write_jsonl(tmp_path / "out.jsonl", recs)
    assert [r.to_dict() for r in read_jsonl(tmp_path / "out.jsonl", validate=True)] == [r.to_dict() for r in recs]


@pytest.mark.parametrize(
    "fmt,content,match",
    [
        ("mdqa", '{"question": "q", "answers": ["a"], "ctxs": []}\n{"question": \n', r"x\.jsonl:2: malformed JSON"),
        ("mdqa", '{"question": "q", "ctxs": []}\n', r"x\.jsonl:1: example lacks field\(s\) answers"),
        ("mdqa", '{"question": "q", "answers": "a", "ctxs": []}\n', r"x\.jsonl:1: field 'answers' must be a list"),
        ("mdqa", '{"question": "q", "answers": ["a"], "ctxs": [{"title": "t"}]}\n', r"x\.jsonl:1 ctxs\[0\]: passage lacks field\(s\) text"),
        ("musique", '{"id": "x", "question": "q"}\n', r"x\.jsonl:1: example lacks field\(s\) answer, answerable"),
        (
            "summhay",
            '{"topic": "t", "subtopics": [], "documents": [{"document_id": "d"}]}',
            r"documents\[0\]: document lacks field\(s\) document_text",
        ),
        ("summhay", '{"topic": "t",\n "subtopics": [}', r"x\.jsonl:2: malformed JSON"),
    ],
)
def test_bad_inputs(tmp_path, fmt, content, match):
    (tmp_path / "x.jsonl").write_text(content)
    with pytest.raises(NeedleworkError, match=match) as e:
        load_real(fmt, str(tmp_path / "x.jsonl"))
    assert e.value.fix


def test_unknown_format_missing_file_and_offline_hub(tmp_path, monkeypatch):
    with pytest.raises(NeedleworkError, match="unknown format 'nq'"):
        load_real("nq", str(tmp_path))
    with pytest.raises(NeedleworkError, match="no such file"):
        load_real("mdqa", str(tmp_path / "missing.jsonl.gz"))
    gz = write_lines(tmp_path / "cut.jsonl.gz", MDQA, gz=True)
    gz.write_bytes(gz.read_bytes()[:60])  # a truncated download
    with pytest.raises(NeedleworkError, match="cut.jsonl.gz: cannot read"):
        load_real("mdqa", str(gz))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(NeedleworkError, match="cannot load hugging face dataset 'someone/not-here'") as e:
        load_real("hf:someone/not-here:validation", None)
    assert "offline" in e.value.fix


def test_bad_options(tmp_path):
    path = write_lines(tmp_path / "q.jsonl", MDQA)
    for cfg, match in [
        (LoadConfig(length=500, tokenizer=str(tmp_path / "no-such-tokenizer")), "does not exist"),
        (LoadConfig(length=-5), "not a positive token count"),
        (LoadConfig(length=500, depth=150), "not 0-100"),
        (LoadConfig(depth=50), "without --length"),
    ]:
        with pytest.raises(NeedleworkError, match=match):
            load_real("mdqa", str(path), cfg)


def test_hf_local_dataset_folder(tmp_path):
    folder = tmp_path / "musique_hf"
    folder.mkdir()
    write_lines(folder / "train.jsonl", [musique_row("3hop1__1_2_3")])
    recs = load_real(f"hf:{folder}:train", None)
    assert len(recs) == 1 and recs[0].task == "musique" and recs[0].needle_text(1) == "Warsaw"


def _cli():
    import typer
    from typer.testing import CliRunner

    from needlework.data import cli_real

    app = typer.Typer()
    cli_real.register(app)
    return app, CliRunner()


def test_cli_load_writes_records_and_reports_skips(tmp_path):
    app, runner = _cli()
    src = write_lines(tmp_path / "nq.jsonl.gz", MDQA * 2, gz=True)
    out = tmp_path / "out" / "mdqa.jsonl"
    res = runner.invoke(app, ["load", "--format", "mdqa", str(src), "--out", str(out), "--length", "500", "--depth", "50"])
    assert res.exit_code == 0, res.output
    assert "skipped 2: gold passage does not contain the answer" in res.output
    assert "read 8 examples, wrote 6 records" in res.output
    recs = read_jsonl(out, validate=True)
    assert len(recs) == 6 and all(abs(r.meta["n_tokens"] - 500) <= 32 for r in recs)
    res = runner.invoke(app, ["load", "--format", "mdqa", str(src), "--out", str(tmp_path / "x.jsonl"), "--limited", "why"])
    assert isinstance(res.exception, NeedleworkError) and "no example" in res.exception.problem
    assert not (tmp_path / "x.jsonl").exists()
    res = runner.invoke(
        app, ["load", "--format", "mdqa", str(src), "--out", str(tmp_path / "y.jsonl"), "--length", "500", "--depth", "deep"]
    )
    assert isinstance(res.exception, NeedleworkError) and "--depth 'deep'" in res.exception.problem


def test_split_by_question_is_disjoint_stable_and_draws_distractors_from_its_own_side(tmp_path):
    from needlework.data.loaders import split_side

    rows = [
        mdqa_line(f"question number {i} about rivers", [f"ans{i}"], f"Gold passage {i} says ans{i} here.", gold_at=i % 4) for i in range(60)
    ]
    path = write_lines(tmp_path / "pool.jsonl", rows)
    sides = {s: load_real("mdqa", str(path), LoadConfig(split=s, eval_fraction=0.3, length=300, seed=1)) for s in ("train", "eval")}
    qs = {s: {r.question for r in recs} for s, recs in sides.items()}
    assert not qs["train"] & qs["eval"] and len(qs["train"]) + len(qs["eval"]) == 60  # disjoint, and nothing lost
    assert 0.1 < len(qs["eval"]) / 60 < 0.5  # about the eval fraction (60 hashed questions)
    for s, recs in sides.items():
        gold_of_other_side = {f"Gold passage {q.split()[2]}" for q in qs["train" if s == "eval" else "eval"]}
        texts = " ".join(d.text for r in recs for d in r.documents)
        assert not any(g + " " in texts for g in gold_of_other_side)  # no passage crosses the split
    again = load_real("mdqa", str(path), LoadConfig(split="eval", eval_fraction=0.3, length=300, seed=7))
    assert {r.question for r in again} == qs["eval"]  # the split does not depend on the seed
    assert split_side("Who  wrote MOBY dick", 0.5) == split_side("who wrote moby dick", 0.5)  # normalised text
    with pytest.raises(NeedleworkError, match="split 'test'"):
        load_real("mdqa", str(path), LoadConfig(split="test"))
    with pytest.raises(NeedleworkError, match="eval_fraction"):
        load_real("mdqa", str(path), LoadConfig(split="eval", eval_fraction=1.5))


def test_lengthen_with_a_ceiling_and_the_chat_template(tmp_path, smollm2_tokenizer):
    """max_tokens: never longer than the ceiling, measured as the model sees the prompt (chat=None:
    the template SmolLM2's tokenizer has)."""
    path = write_lines(tmp_path / "q.jsonl", MDQA * 3)
    recs = load_real("mdqa", str(path), LoadConfig(length=600, max_tokens=600, chat=None, seed=1))
    assert len(recs) == 9
    for r in recs:
        n = render(r, smollm2_tokenizer, chat=True).n_tokens
        assert 600 - 32 <= n <= 600 and r.meta["n_tokens"] == n
    with pytest.raises(NeedleworkError, match="below --length"):
        load_real("mdqa", str(path), LoadConfig(length=600, max_tokens=500))
