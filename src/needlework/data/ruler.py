"""RULER's generated files read into records with needle spans, so that RULER's retrieval tasks can
be scored for heads like any other data.

RULER (NVIDIA/RULER, `scripts/data/prepare.py`) writes `<task>/validation.jsonl`, one object per
line: `index`, `input` (the whole prompt: task template, context and question, inside the model
template), `outputs` (the gold strings) and `length` (tokens). It keeps no spans, so they are
recovered from `input`:

- niah_*: the needle sentences `One of the special magic {type} for {key} is: {value}.` whose value
  is in `outputs`; the value is an `answer` span, the sentence an `evidence` span.
- vt: the chain of `VAR X = ...` assignments that starts at the queried value; each variable name
  in it is an `answer` span (they are the outputs), each assignment an `evidence` span. A few-shot
  example before the task (RULER's default) is left out: the last task header starts the context.
- qa_*: the `Document N:` passages; the gold passage(s) are those holding an answer (the two that
  share most content words with the question when more do): the answer is an `answer` span, the
  passage an `evidence` span.

Aggregation tasks (cwe, fwe) count words over the whole context and have no span; they are skipped
with that reason. Records are task `mdqa` (a question answered from documents), so they render with
needlework's prompt; `meta` keeps RULER's task, index, length and `outputs`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from needlework.data.locate import content_words, find_span
from needlework.data.real_length import Skip
from needlework.data.records import Document, Needle, Record
from needlework.errors import NeedleworkError

KINDS = ("niah", "vt", "qa")
SUBSETS = ("validation", "test")  # the file names RULER's prepare.py writes under each task folder
NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
_FIX = (
    "RULER lines need index, input (the prompt) and outputs (list of strings), as RULER's prepare.py writes them "
    "(<task>/validation.jsonl); otherwise pick the right --format"
)

_NIAH_HEAD = re.compile(r"hidden within the following text\.(?:[^\n]*?afterwards\.)?\s*")
_NIAH_QUESTION = re.compile(r"What (?:is|are all) the special magic \S+ for (?P<keys>.+?) mentioned in the provided text\?")
_NIAH_NEEDLE = re.compile(r"One of the special magic \S+ for (?P<key>.+?) is: (?P<value>[^\n]+?)\.(?=\s|$)")
_VT_HEAD = re.compile(r"Memorize and track the chain\(s\) of variable assignment hidden in the following text\.\s*")
_VT_QUESTION = re.compile(r"Question: (?P<q>Find all variables that are assigned the value (?P<value>\S+?) in the text above\.)")
_VT_ASSIGN = re.compile(r"VAR (?P<name>[A-Z]+) = (?:VAR (?P<src>[A-Z]+)|(?P<num>\d+))")
_QA_DOC = re.compile(r"Document (?P<i>\d+):\s*")
_QA_TAIL = re.compile(r"\s*(?:Answer the question based on the given documents|Question:)")
_QA_QUESTION = re.compile(r"Question:\s*(?P<q>[^\n]+)")
_QA_QUESTION_END = re.compile(r"\s+Answer:|\s*\[/INST\]|\s*<\||\s*<end_of_turn>")


def task_name(path: Path) -> str:
    """RULER's task of a file: its folder (`niah_single_1/validation.jsonl`), else the file's stem."""
    stem = path.name.removesuffix(".gz").removesuffix(".jsonl")
    return path.parent.name if stem in SUBSETS and path.parent.name else stem


def ruler_files(path: Path) -> list[Path]:
    """The files of a RULER path: a `.jsonl`, or a data folder of `<task>/validation.jsonl` (and `test.jsonl`)."""
    if not path.is_dir():
        return [path]
    files = sorted(f for s in SUBSETS for f in path.glob(f"*/{s}.jsonl")) or sorted(path.glob("*.jsonl"))
    if not files:
        raise NeedleworkError(
            f"{path}: no RULER files (<task>/validation.jsonl or *.jsonl) in this folder",
            "point at a RULER data folder (the --save_dir of prepare.py) or one of its jsonl files",
        )
    return files


def ruler_id(path: Path, obj: Any, lineno: int) -> str:
    """`ruler-<task>-<index>` (the subset added when it is not `validation`)."""
    index = obj.get("index", lineno) if isinstance(obj, dict) else lineno
    stem = path.name.removesuffix(".gz").removesuffix(".jsonl")
    return f"ruler-{task_name(path)}" + ("" if stem in ("validation", task_name(path)) else f"-{stem}") + f"-{index}"


def kind_of(task: str, text: str) -> str:
    """niah | vt | qa | cwe | fwe: from the task name when it says, else from the prompt's wording."""
    for k in (*KINDS, "cwe", "fwe"):
        if task == k or task.startswith(k + "_"):
            return k
    if "special magic" in text:
        return "niah"
    if "variable assignment" in text:
        return "vt"
    if "Document 1:" in text:
        return "qa"
    if "numbered list of words" in text:
        return "cwe"
    if "coded text" in text:
        return "fwe"
    raise Skip("not a RULER niah, vt or qa prompt (no needle sentence, variable chain or numbered documents)")


def _join(outputs: list[str], sep: str) -> list[str]:
    """Answers: every output must be given, so several join into the canonical first answer; each
    one follows on its own (the text of its `answer` spans)."""
    return [sep.join(outputs), *outputs] if len(outputs) > 1 else list(outputs)


def _last_before(pattern: re.Pattern, text: str, end: int) -> re.Match | None:
    hits = [m for m in pattern.finditer(text, 0, end)]
    return hits[-1] if hits else None


def _niah(text: str, outputs: list[str]) -> tuple[list[Document], str, list[Needle], list[str], str]:
    questions = list(_NIAH_QUESTION.finditer(text))
    if not questions:
        raise Skip("RULER niah: no 'What ... special magic ... for KEY mentioned in the provided text?' question")
    q = questions[-1]
    head = _last_before(_NIAH_HEAD, text, q.start())
    start = head.end() if head else 0
    doc = text[start : q.start()].rstrip()
    keys = {k.strip() for k in re.split(r",\s*(?:and\s+)?|\s+and\s+", q.group("keys")) if k.strip()}
    needles, found = [], set()
    all_needles = list(_NIAH_NEEDLE.finditer(doc))
    for m in all_needles:
        if m.group("value") in outputs and m.group("key") in keys:
            needles.append(Needle(0, m.start("value"), m.end("value"), "answer"))
            needles.append(Needle(0, m.start(), m.end(), "evidence"))
            found.add(m.group("value"))
    if set(outputs) - found:
        raise Skip("RULER niah: a value of `outputs` is in no needle sentence of the queried key(s)")
    context = "low" if NOISE in doc or len(all_needles) > 2 * len(outputs) + 8 else "high"  # noise / needle haystacks
    return [Document("context", "", doc)], q.group(0), needles, _join(outputs, ", "), context


def _vt(text: str, outputs: list[str]) -> tuple[list[Document], str, list[Needle], list[str], str]:
    questions = list(_VT_QUESTION.finditer(text))
    if not questions:
        raise Skip("RULER vt: no 'Question: Find all variables that are assigned the value ...' question")
    q = questions[-1]
    head = _last_before(_VT_HEAD, text, q.start())  # the last header: a few-shot example comes before it
    doc = text[head.end() if head else 0 : q.start()].rstrip()
    assigns = list(_VT_ASSIGN.finditer(doc))
    chain = {m.group("name") for m in assigns if m.group("num") == q.group("value")}
    while True:  # follow VAR Y = VAR X from the variables holding the value
        more = {m.group("name") for m in assigns if m.group("src") in chain} - chain
        if not more:
            break
        chain |= more
    if not chain or chain != set(outputs):
        raise Skip("RULER vt: the chain of VAR assignments from the queried value does not give `outputs`")
    needles = []
    for m in assigns:
        if m.group("name") in chain:
            needles += [Needle(0, m.start(g), m.end(g), "answer") for g in ("name", "src") if m.group(g)]
            needles.append(Needle(0, m.start(), m.end(), "evidence"))
    context = "low" if NOISE in doc else "high"
    return [Document("context", "", doc)], q.group("q"), needles, _join(outputs, " "), context


def _qa_documents(text: str) -> tuple[list[Document], int]:
    """RULER's `Document N:` passages (numbered 1, 2, ... in order), and where the last one ends."""
    starts, want = [], 1
    for m in _QA_DOC.finditer(text):
        if int(m.group("i")) == want:
            starts.append(m)
            want += 1
    if not starts:
        raise Skip("RULER qa: no 'Document 1:' passage")
    tail = _QA_TAIL.search(text, starts[-1].end())
    end = tail.start() if tail else len(text)
    docs = []
    for j, m in enumerate(starts):
        body = text[m.end() : starts[j + 1].start() if j + 1 < len(starts) else end].strip()
        title, sep, rest = body.partition("\n")  # HotpotQA passages are "title\ntext"
        if sep and rest.strip() and len(title) <= 200:
            docs.append(Document(f"d{j + 1}", title.strip(), rest.strip()))
        else:
            docs.append(Document(f"d{j + 1}", "", body))
    return docs, end


def _qa(text: str, outputs: list[str]) -> tuple[list[Document], str, list[Needle], list[str], str]:
    docs, end = _qa_documents(text)
    questions = list(_QA_QUESTION.finditer(text, end))
    if not questions:
        raise Skip("RULER qa: no 'Question:' after the documents")
    question = _QA_QUESTION_END.split(questions[-1].group("q"))[0].strip()
    answers = list(outputs)
    if all(a.strip().lower() in ("yes", "no") for a in answers):
        raise Skip("RULER qa: a yes/no answer has no span in the documents")
    hits = {i: find_span(d.text, answers) for i, d in enumerate(docs)}
    gold = [i for i, s in hits.items() if s is not None]
    if not gold:
        raise Skip("RULER qa: no document contains an answer")
    if len(gold) > 2:  # a common answer string: keep the passages closest to the question
        qwords = set(content_words(question))
        gold = sorted(sorted(gold, key=lambda i: -len(qwords & set(content_words(docs[i].text))))[:2])
    needles = []
    for i in gold:
        a, b = hits[i]
        needles += [Needle(i, a, b, "answer"), Needle(i, 0, len(docs[i].text), "evidence")]
        if docs[i].text[a:b] not in answers:  # the passage's own casing/spacing is an answer too
            answers.append(docs[i].text[a:b])
    return docs, question, needles, answers, "real"


def _depth(docs: list[Document], needles: list[Needle]) -> float:
    """Fraction of the context's characters before the first answer span."""
    first = min((n for n in needles if n.role == "answer"), key=lambda n: (n.doc, n.start))
    before = sum(len(d.text) for d in docs[: first.doc]) + first.start
    return round(before / max(sum(len(d.text) for d in docs), 1), 4)


def parse_ruler(obj: Any, where: str, rid: str, task: str) -> Record:
    """One line of a RULER file -> record (see the module docstring).

    Args:
        task: RULER's task name (`niah_single_1`, `vt`, `qa_1`, ...; `task_name` of the file).
    Raises:
        Skip: an aggregation task, or spans that cannot be recovered (the reason is counted).
        NeedleworkError: the line lacks RULER's fields.
    """
    if not isinstance(obj, dict) or not {"input", "outputs"} <= set(obj):
        missing = ", ".join(k for k in ("input", "outputs") if not isinstance(obj, dict) or k not in obj)
        raise NeedleworkError(f"{where}: not a RULER line (missing {missing})", _FIX)
    text, outputs = obj["input"], obj["outputs"]
    if not isinstance(text, str) or not isinstance(outputs, list) or not outputs:
        raise NeedleworkError(f"{where}: RULER 'input' must be a string and 'outputs' a non-empty list", _FIX)
    outputs = list(dict.fromkeys(str(o) for o in outputs))
    kind = kind_of(task, text)
    if kind in ("cwe", "fwe"):
        raise Skip(f"RULER {kind}: an aggregation task counts words over the whole context and has no needle span")
    docs, question, needles, answers, context = {"niah": _niah, "vt": _vt, "qa": _qa}[kind](text, outputs)
    meta = {
        "qtype": task,
        "ruler_task": task,
        "ruler_kind": kind,
        "ruler_index": obj.get("index"),
        "ruler_length": obj.get("length"),
        "ruler_outputs": outputs,  # RULER scores niah/vt with every output required, qa with any
        "depth_frac": _depth(docs, needles),
    }
    gold = sorted({n.doc for n in needles})
    concept = "real" if kind == "qa" else "symbolic"
    return Record(rid, "mdqa", concept, context, docs, question, answers, needles, gold_docs=gold, meta=meta)
