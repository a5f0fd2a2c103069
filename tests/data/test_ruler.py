"""`load --format ruler`: small files in the shape RULER's prepare.py writes (niah, vt, qa; the task
templates of RULER's constants.py inside a model template), read into records whose needle spans
sit on the needles, and scoreable for heads."""

from __future__ import annotations

import json

import pytest

from needlework.data.loaders import LoadConfig, load_real_report
from needlework.data.records import validate_record
from needlework.data.ruler import parse_ruler, task_name
from needlework.errors import NeedleworkError

NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
ESSAY = (
    "Startups that grow fast tend to do so because their founders talk to users early. "
    "Most of what matters happens in the first year, when nothing seems to be working. "
    "A good essay wanders a little before it finds its point, and that is fine. "
)
LLAMA3 = "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n{task}<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
NIAH_TEMPLATE = (
    "Some special magic {type_v} are hidden within the following text. Make sure to memorize it. "
    "I will quiz you about the {type_v} afterwards.\n{context}\n"
    "What are all the special magic {type_v} for {query} mentioned in the provided text?"
)
NIAH_PREFIX = " The special magic {type_v} for {query} mentioned in the provided text are"
VT_TEMPLATE = (
    "Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n{context}\n"
    "Question: Find all variables that are assigned the value {query} in the text above."
)
VT_PREFIX = (
    " Answer: According to the chain(s) of variable assignment in the text above, {n} variables are assgined the value {query}, they are: "
)
QA_TEMPLATE = (
    "Answer the question based on the given documents. Only give me the answer and do not output any other words.\n\n"
    "The following are given documents.\n\n{context}\n\n"
    "Answer the question based on the given documents. Only give me the answer and do not output any other words.\n\n"
    "Question: {query}"
)


def needle(key, value, type_v="numbers"):
    return f"One of the special magic {type_v} for {key} is: {value}."


def niah_line(index, needles, keys, outputs, haystack="noise", n=12, type_v="numbers"):
    """A niah line as RULER writes it: noise sentences joined by newlines (essay: by spaces) with the
    needles inserted, the single-needle wording ('A ... is'), the Llama-3 chat wrapper, and the
    answer prefix in its own field."""
    filler = [NOISE] * n if haystack == "noise" else [ESSAY] * n
    for j, s in enumerate(needles):
        filler.insert(3 + 4 * j, s)
    context = ("\n" if haystack == "noise" else " ").join(filler)
    query = keys[0] if len(keys) == 1 else ", ".join(keys[:-1]) + ", and " + keys[-1]
    template = NIAH_TEMPLATE
    if len(outputs) == 1:  # RULER's own rewording of the single-value template
        template = template.replace("Some", "A").replace("are all", "is").replace("are", "is")
        type_v = type_v[:-1]
    task = template.format(type_v=type_v, context=context, query=query)
    return {
        "index": index,
        "input": LLAMA3.format(task=task),
        "outputs": outputs,
        "length": 400,
        "length_w_model_temp": 420,
        "answer_prefix": NIAH_PREFIX.format(type_v=type_v, query=query),
    }


def vt_task(chain, value, n=10, decoy=()):
    """RULER's vt prompt: noise sentences joined by newlines with the chain's assignments (and a
    decoy chain of another value) inserted in order, and the answer prefix."""
    statements = [f"VAR {chain[0]} = {value}"] + [f"VAR {b} = VAR {a}" for a, b in zip(chain, chain[1:])]
    if decoy:
        statements += [f"VAR {decoy[0]} = 22222"] + [f"VAR {b} = VAR {a}" for a, b in zip(decoy, decoy[1:])]
    sentences = [NOISE] * n
    for j, s in enumerate(statements):
        sentences.insert(1 + 2 * j, s)
    return VT_TEMPLATE.format(context="\n".join(sentences), query=value) + VT_PREFIX.format(n=len(chain), query=value)


def vt_line(index, chain, value, decoy=()):
    """vt with RULER's few-shot example (another chain and its answer) before the task, and the
    answer prefix inside `input` (as RULER wrote it before answer_prefix got its own field)."""
    icl = vt_task(["QWE", "RTY", "UIO"], 11111, n=3) + " QWE RTY UIO\n\n"
    return {"index": index, "input": icl + vt_task(chain, value, decoy=decoy), "outputs": list(chain), "length": 380}


SQUAD = [
    "The Normans were the people who in the 10th and 11th centuries gave their name to Normandy, a region in France.",
    "The Amazon rainforest covers much of the Amazon basin of South America.",
    "Oxygen is a chemical element with symbol O and atomic number 8.",
]


def qa_line(index, docs, question, outputs):
    context = "\n\n".join(f"Document {i + 1}:\n{d}" for i, d in enumerate(docs))
    return {
        "index": index,
        "input": "[INST] " + QA_TEMPLATE.format(context=context, query=question) + " [/INST] Answer:",
        "outputs": outputs,
        "length": 300,
    }


def write(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def ruler_dir(tmp_path):
    """RULER's data folder: <task>/validation.jsonl per task."""
    root = tmp_path / "data"
    write(root / "niah_single_1" / "validation.jsonl", [niah_line(0, [needle("gentle-otter", "4817263")], ["gentle-otter"], ["4817263"])])
    mk = [needle(k, v) for k, v in [("brave-lion", "1111111"), ("quiet-fox", "2222222"), ("bold-crow", "3333333"), ("calm-owl", "4444444")]]
    write(root / "niah_multikey_1" / "validation.jsonl", [niah_line(0, mk, ["bold-crow"], ["3333333"], haystack="essay")])
    mv = [needle("tall-pine", "5550001"), needle("tall-pine", "5550002")]
    write(root / "niah_multivalue" / "validation.jsonl", [niah_line(0, mv, ["tall-pine"], ["5550001", "5550002"], haystack="essay")])
    mq = [needle("red-kite", "7000001"), needle("blue-jay", "7000002"), needle("grey-wolf", "7000003")]
    write(root / "niah_multiquery" / "validation.jsonl", [niah_line(0, mq, ["red-kite", "grey-wolf"], ["7000001", "7000003"])])
    write(root / "vt" / "validation.jsonl", [vt_line(0, ["ABCDE", "FGHIJ", "KLMNO"], 48213, decoy=["ZYXWV", "UTSRQ"])])
    hotpot = [f"Title {i}\n{t}" for i, t in enumerate(SQUAD)]
    write(
        root / "qa_1" / "validation.jsonl",
        [
            qa_line(0, SQUAD, "In what country is Normandy located?", ["France"]),
            qa_line(1, SQUAD, "Is oxygen an element?", ["yes"]),  # no span: skipped
        ],
    )
    write(root / "qa_2" / "validation.jsonl", [qa_line(0, hotpot, "What is the atomic number of oxygen?", ["8", "eight"])])
    write(
        root / "cwe" / "validation.jsonl", [{"index": 0, "input": "Below is a numbered list of words. ...", "outputs": ["a"], "length": 9}]
    )
    return root


def _by_task(records):
    return {r.meta["ruler_task"]: r for r in records}


def test_ruler_folder_loads_every_task_with_valid_spans(ruler_dir):
    res = load_real_report("ruler", str(ruler_dir), LoadConfig())
    recs = _by_task(res.records)
    assert set(recs) == {"niah_single_1", "niah_multikey_1", "niah_multivalue", "niah_multiquery", "vt", "qa_1", "qa_2"}
    assert res.n_read == 9 and sum(res.skipped.values()) == 2
    assert any("aggregation task" in k for k in res.skipped) and any("yes/no" in k for k in res.skipped)
    for r in res.records:
        assert validate_record(r) == [], (r.id, validate_record(r))
        assert r.task == "mdqa" and r.meta["qtype"] == r.meta["ruler_task"]
    assert recs["niah_single_1"].id == "ruler-niah_single_1-0"


def test_niah_spans_are_the_queried_needles(ruler_dir):
    recs = _by_task(load_real_report("ruler", str(ruler_dir), LoadConfig()).records)
    single = recs["niah_single_1"]
    (doc,) = single.documents
    assert doc.text.startswith(NOISE) and doc.text.endswith(NOISE)  # no header, question or chat template
    assert single.question == "What is the special magic number for gentle-otter mentioned in the provided text?"
    assert single.answers == ["4817263"] and (single.concept, single.context) == ("symbolic", "low")
    texts = {n.role: single.needle_text(i) for i, n in enumerate(single.needles)}
    assert texts == {"answer": "4817263", "evidence": needle("gentle-otter", "4817263")}
    mk = recs["niah_multikey_1"]  # three distractor needles: only the queried key's is a span
    assert [mk.needle_text(i) for i, n in enumerate(mk.needles) if n.role == "answer"] == ["3333333"]
    assert mk.context == "high"  # an essay haystack
    mv = recs["niah_multivalue"]  # every value required: the first answer joins them
    assert mv.answers == ["5550001, 5550002", "5550001", "5550002"] and mv.meta["ruler_outputs"] == ["5550001", "5550002"]
    mq = recs["niah_multiquery"]
    assert sorted(mq.needle_text(i) for i, n in enumerate(mq.needles) if n.role == "answer") == ["7000001", "7000003"]
    assert 0 < single.meta["depth_frac"] < 1


def test_vt_spans_follow_the_chain_and_skip_the_fewshot_example(ruler_dir):
    vt = _by_task(load_real_report("ruler", str(ruler_dir), LoadConfig()).records)["vt"]
    text = vt.documents[0].text
    assert "QWE" not in text and "Question:" not in text and "ZYXWV" in text  # the few-shot example is not context
    assert vt.question == "Find all variables that are assigned the value 48213 in the text above."
    answers = [vt.needle_text(i) for i, n in enumerate(vt.needles) if n.role == "answer"]
    evidence = [vt.needle_text(i) for i, n in enumerate(vt.needles) if n.role == "evidence"]
    assert set(answers) == {"ABCDE", "FGHIJ", "KLMNO"} and len(answers) == 5  # 3 assigned + 2 referenced
    assert evidence == ["VAR ABCDE = 48213", "VAR FGHIJ = VAR ABCDE", "VAR KLMNO = VAR FGHIJ"]  # the decoy chain is not
    assert vt.answers[0] == "ABCDE FGHIJ KLMNO"


def test_qa_gold_passage_titles_and_question(ruler_dir):
    recs = _by_task(load_real_report("ruler", str(ruler_dir), LoadConfig()).records)
    qa = recs["qa_1"]
    assert [d.text for d in qa.documents] == SQUAD and qa.gold_docs == [0]
    assert qa.question == "In what country is Normandy located?"  # without the model template and answer prefix
    assert {n.role: qa.needle_text(i) for i, n in enumerate(qa.needles)} == {"answer": "France", "evidence": SQUAD[0]}
    assert (qa.concept, qa.context) == ("real", "real")
    hot = recs["qa_2"]
    assert [d.title for d in hot.documents] == ["Title 0", "Title 1", "Title 2"] and hot.gold_docs == [2]
    assert hot.needle_text(0) == "8"


def test_ruler_records_are_scoreable_for_heads(ruler_dir, smollm2_tokenizer):
    from needlework.heads.score import ScoreConfig, prepare_examples

    recs = load_real_report("ruler", str(ruler_dir), LoadConfig()).records
    for score in ("retrieval", "insight", "mass"):
        examples, skipped = prepare_examples(recs, smollm2_tokenizer, ScoreConfig(score=score))
        assert skipped == {} and len(examples) == len(recs), (score, skipped)


def test_limited_and_single_file(ruler_dir):
    res = load_real_report("ruler", str(ruler_dir), LoadConfig(limited=("vt", "qa_1")))
    assert sorted(r.meta["ruler_task"] for r in res.records) == ["qa_1", "vt"]
    one = load_real_report("ruler", str(ruler_dir / "vt" / "validation.jsonl"), LoadConfig())
    assert [r.id for r in one.records] == ["ruler-vt-0"] and task_name(ruler_dir / "vt" / "validation.jsonl") == "vt"


def test_unrecoverable_lines_are_skipped_with_reasons(tmp_path):
    bad_value = niah_line(0, [needle("a-b", "1234567")], ["a-b"], ["7654321"])  # the output is in no needle
    broken_chain = vt_line(1, ["ABCDE", "FGHIJ"], 999)
    broken_chain["outputs"] = ["ABCDE", "FGHIJ", "NOPQR"]
    f = write(tmp_path / "mixed.jsonl", [bad_value, broken_chain])
    res = load_real_report("ruler", str(f), LoadConfig())
    assert res.records == [] and res.n_read == 2
    assert any("no needle sentence" in k for k in res.skipped) and any("chain of VAR" in k for k in res.skipped)


def test_malformed_ruler_lines_are_errors(tmp_path):
    with pytest.raises(NeedleworkError, match="missing outputs"):
        parse_ruler({"index": 0, "input": "x"}, "f:1", "r", "niah_single_1")
    with pytest.raises(NeedleworkError, match="non-empty list"):
        parse_ruler({"input": "x", "outputs": "7"}, "f:1", "r", "vt")
    with pytest.raises(NeedleworkError, match="no RULER files"):
        load_real_report("ruler", str(tmp_path), LoadConfig())


def test_cli_load_ruler(ruler_dir, tmp_path):
    from typer.testing import CliRunner

    from needlework.cli import app
    from needlework.data.records import read_jsonl

    out = tmp_path / "r.jsonl"
    r = CliRunner().invoke(app, ["load", "--format", "ruler", str(ruler_dir), "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "wrote 7 records" in r.output and "skipped 1" in r.output
    assert len(read_jsonl(out, validate=True)) == 7


def test_one_line_inputs_of_remove_newline_tab(tmp_path):
    """RULER's --remove_newline_tab writes every input on one line: the same spans are found."""
    flat = lambda row: {**row, "input": " ".join(row["input"].split())}  # noqa: E731
    rows = {
        "niah_single_2": niah_line(0, [needle("gentle-otter", "4817263")], ["gentle-otter"], ["4817263"]),
        "vt": vt_line(0, ["ABCDE", "FGHIJ", "KLMNO"], 48213, decoy=["ZYXWV", "UTSRQ"]),
        "qa_1": qa_line(0, SQUAD, "In what country is Normandy located?", ["France"]),
    }
    for task, row in rows.items():
        write(tmp_path / task / "validation.jsonl", [flat(row)])
    recs = _by_task(load_real_report("ruler", str(tmp_path), LoadConfig()).records)
    assert set(recs) == set(rows) and all(validate_record(r) == [] for r in recs.values())
    assert {n.role: recs["niah_single_2"].needle_text(i) for i, n in enumerate(recs["niah_single_2"].needles)}["answer"] == "4817263"
    assert recs["vt"].answers[0] == "ABCDE FGHIJ KLMNO" and "QWE" not in recs["vt"].documents[0].text
    assert recs["qa_1"].question == "In what country is Normandy located?" and recs["qa_1"].gold_docs == [0]
    assert recs["qa_1"].documents[2].text == SQUAD[2]  # the last passage ends before the repeated instruction
