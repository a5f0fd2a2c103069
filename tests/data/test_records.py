"""The record format: needle roles, one schema for every task (files of different tasks load
together with `datasets`), old files, and the validator's role and unlocated-document rules."""

from __future__ import annotations

import json

import pytest

from needlework.data.generate import GenerateConfig, generate
from needlework.data.loaders import load_real
from needlework.data.records import Document, Needle, Record, read_jsonl, validate_record, write_jsonl
from test_loaders import MDQA, musique_row, summhay_topic, write_lines


def musique_record() -> Record:
    """A hand-built MuSiQue-shaped record: a bridge hop (evidence) and the final answer."""
    docs = [
        Document("p0", "Alma Quist", "Alma Quist was born in Brelmont."),
        Document("p1", "Filler", "The valley was settled by farmers."),
        Document("p2", "Brelmont", "Brelmont is a town in Quistovia."),
    ]
    at = lambda d, s: (d, docs[d].text.index(s), docs[d].text.index(s) + len(s))  # noqa: E731
    return Record(
        "m1",
        "musique",
        "real",
        "real",
        docs,
        "In which country was Alma Quist born?",
        ["Quistovia"],
        [Needle(*at(0, "Brelmont"), "evidence"), Needle(*at(2, "Quistovia"), "answer")],
        gold_docs=[0, 2],
        meta={
            "hop_answers": ["Brelmont"],
            "n_hops": 2,
            "qtype": "2hop",
            "hops": [
                {"question": "Alma Quist >> place of birth", "answer": "Brelmont", "doc": 0},
                {"question": "#1 >> country", "answer": "Quistovia", "doc": 2},
            ],
        },
    )


def summhay_record(unlocated=(2,), needle_docs=(0, 1)) -> Record:
    """A real-SummHay-shaped record: three documents cite the insight, the sentence was located in two."""
    texts = [
        "Intro. Remote staff save an hour a day. End.",
        "Surveys: remote workers save about an hour daily. More.",
        "This one says it very differently, in a way no matcher finds.",
        "Unrelated text.",
    ]
    docs = [Document(f"doc{i}", "", t) for i, t in enumerate(texts)]
    sent = {0: "Remote staff save an hour a day.", 1: "remote workers save about an hour daily."}
    needles = [Needle(d, texts[d].index(sent[d]), texts[d].index(sent[d]) + len(sent[d]), "evidence") for d in needle_docs]
    return Record(
        "s1",
        "summhay",
        "real",
        "real",
        docs,
        "Remote workers save about an hour a day on commuting.",
        ["doc0 doc1 doc2"],
        needles,
        citations=["doc0", "doc1", "doc2"],
        gold_docs=[0, 1, 2],
        meta={
            "insight": "Remote workers save about an hour a day on commuting.",
            "qtype": "Productivity",
            "insight_spans": [docs[n.doc].text[n.start : n.end] for n in needles],
            "unlocated_docs": list(unlocated),
        },
    )


def test_roles_round_trip_and_schema(tmp_path):
    recs = [musique_record(), summhay_record()]
    assert [n.role for n in recs[0].needles] == ["evidence", "answer"] and validate_record(recs[0]) == []
    assert recs[0].needle_text(0) == "Brelmont" and recs[0].needle_text(1) == "Quistovia"
    assert recs[0].citations == ["p0", "p2"]  # every task: the gold documents' ids
    assert validate_record(recs[1]) == []
    write_jsonl(tmp_path / "r.jsonl", recs)
    back = read_jsonl(tmp_path / "r.jsonl", validate=True)
    assert back == recs
    for line in (tmp_path / "r.jsonl").read_text().splitlines():
        d = json.loads(line)
        assert set(d["meta"]) == {"qtype", "n_hops", "unlocated_docs", "extra"}
        assert all(set(n) == {"doc", "start", "end", "role"} for n in d["needles"])
    d = json.loads((tmp_path / "r.jsonl").read_text().splitlines()[1])
    assert d["meta"]["unlocated_docs"] == "[2]" and json.loads(d["meta"]["extra"])["insight_spans"] == recs[1].meta["insight_spans"]


def test_old_files_without_role_read_as_answer(tmp_path):
    old = {
        "id": "o",
        "task": "mdqa",
        "concept": "high",
        "context": "high",
        "documents": [{"id": "d0", "title": "T", "text": "The key is Marlowe."}],
        "question": "What is the key?",
        "answers": ["Marlowe"],
        "needles": [{"doc": 0, "start": 11, "end": 18}],
        "citations": [],
        "gold_docs": [0],
        "meta": {"seed": 3, "hops": [], "depth_frac": 0.5},
    }
    (tmp_path / "old.jsonl").write_text(json.dumps(old) + "\n")
    (rec,) = read_jsonl(tmp_path / "old.jsonl", validate=True)
    assert rec.needles[0].role == "answer" and rec.citations == ["d0"]
    assert rec.meta["seed"] == 3 and rec.meta["depth_frac"] == 0.5 and rec.meta["unlocated_docs"] == []
    # an old MuSiQue file: its bridge needle reads as an answer, which validation names with the fix
    m = musique_record().to_dict()
    for n in m["needles"]:
        del n["role"]
    bad = Record.from_dict(m)
    assert [n.role for n in bad.needles] == ["answer", "answer"]
    assert any("bridge hop's answer: give it role 'evidence'" in p for p in validate_record(bad))


def test_validate_roles_and_unlocated_docs():
    r = musique_record()
    r.needles[0].role = "bridge"
    (p,) = validate_record(r)
    assert "role 'bridge' is not one of answer, evidence" in p
    r = musique_record()
    r.needles[1].role = "evidence"  # no answer span left
    assert any("no answer needle" in p for p in validate_record(r))
    r = musique_record()
    r.needles[0] = Needle(0, 0, 4, "evidence")  # "Alma" is no hop answer
    assert any("equals no hop answer" in p for p in validate_record(r))
    # SummHay: a cited document without a needle is fine only when listed as unlocated
    assert validate_record(summhay_record(unlocated=())) == [
        "gold doc 2 holds no needle (SummHay: list it in meta['unlocated_docs'] when its insight sentence was not found)"
    ]
    assert any("which holds a needle" in p for p in validate_record(summhay_record(unlocated=(1, 2))))
    assert any("not a gold (cited) document" in p for p in validate_record(summhay_record(unlocated=(2, 3))))
    m = musique_record()
    m.meta["unlocated_docs"] = [0]
    assert any("for summhay only" in p for p in validate_record(m))


def test_real_loaders_give_roles(tmp_path):
    (m,) = load_real("musique", str(write_lines(tmp_path / "musique_ans_v1.0_dev.jsonl", [musique_row("2hop__1_2")])))
    assert [(m.needle_text(i), n.role) for i, n in enumerate(m.needles)] == [("Sklodowski family", "evidence"), ("Warsaw", "answer")]
    (tmp_path / "sh").mkdir()
    (tmp_path / "sh" / "topic_remote.json").write_text(json.dumps(summhay_topic()))
    assert {n.role for r in load_real("summhay", str(tmp_path / "sh")) for n in r.needles} == {"evidence"}
    assert {n.role for r in load_real("mdqa", str(write_lines(tmp_path / "q.jsonl", MDQA))) for n in r.needles} == {"answer"}


def _task_files(tmp_path, tok) -> dict[str, list]:
    files = {}
    for task, concept in (("mdqa", "high"), ("musique", "high"), ("summhay", "low"), ("kv", "symbolic")):
        recs = generate(GenerateConfig(task=task, concept=concept, context="low", n=2, length=600, seed=2), tokenizer=tok)
        files[f"syn-{task}"] = recs
    files["real-mdqa"] = load_real("mdqa", str(write_lines(tmp_path / "q.jsonl", MDQA)))
    files["real-musique"] = load_real("musique", str(write_lines(tmp_path / "mu.jsonl", [musique_row("2hop__1_2")])))
    (tmp_path / "sh").mkdir()
    (tmp_path / "sh" / "topic_remote.json").write_text(json.dumps(summhay_topic()))
    files["real-summhay"] = load_real("summhay", str(tmp_path / "sh")) + [summhay_record()]  # one with an unlocated doc
    files["hand-musique"] = [musique_record()]
    return files


def test_files_of_every_task_load_together_with_datasets(tmp_path, smollm2_tokenizer, monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    files = _task_files(tmp_path, smollm2_tokenizer)
    paths = {}
    for name, recs in files.items():
        assert recs and all(validate_record(r) == [] for r in recs), name
        write_jsonl(tmp_path / f"{name}.jsonl", recs)
        paths[name] = str(tmp_path / f"{name}.jsonl")
    names = list(paths)
    # datasets types the columns from the first file: each task first once, and the real SummHay file last
    orders = [names, names[::-1], ["syn-kv", "real-summhay"], ["real-mdqa", "hand-musique", "syn-summhay"]]
    for k, order in enumerate(orders):
        ds = datasets.load_dataset("json", data_files=[paths[n] for n in order], split="train", cache_dir=str(tmp_path / f"cache{k}"))
        assert len(ds) == sum(len(files[n]) for n in order)
    ds = datasets.load_dataset("json", data_files=[paths[n] for n in names], split="train", cache_dir=str(tmp_path / "c"))
    assert sorted(set(ds["task"])) == ["kv", "mdqa", "musique", "summhay"]
    by_id = {r.id: r for recs in files.values() for r in recs}
    for row in ds:  # every row reads back as the record written
        assert Record.from_dict(row) == by_id[row["id"]]
    roles = {n["role"] for row in ds for n in row["needles"]}
    assert roles == {"answer", "evidence"}
