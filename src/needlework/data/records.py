"""The needlework record: one long-context example as a JSONL line.

Every stage reads and writes this one format. Needles are character spans inside a document's
text, so they survive re-tokenisation; rendering maps them to token positions for any tokenizer.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from needlework.errors import NeedleworkError
from needlework.io import atomic_path

TASKS = ("mdqa", "musique", "summhay", "kv")
CONCEPTS = ("high", "low", "symbolic", "real")
CONTEXTS = ("high", "low", "real")
REQUIRED = ("id", "task", "concept", "context", "documents", "question", "answers", "needles")


@dataclass
class Document:
    id: str
    title: str
    text: str


ROLES = ("answer", "evidence")
# meta keys every record carries on disk, with fixed JSON types (see `Record.to_dict`, README 'The record')
META_FIXED = {"qtype": "", "n_hops": 0, "unlocated_docs": []}


@dataclass
class Needle:
    """A span `text[start:end]` of document `doc`.

    role: `answer` where the answer sits (the set S of the retrieval score, SPEC §2); `evidence`
    for other evidence (a MuSiQue bridge hop's answer, a SummHay insight sentence), which the
    insight and mass scores may use and the retrieval score never does. Files without a role read
    as `answer`.
    """

    doc: int
    start: int
    end: int
    role: str = "answer"


@dataclass
class Record:
    id: str
    task: str
    concept: str
    context: str
    documents: list[Document]
    question: str
    answers: list[str]
    needles: list[Needle]
    citations: list[str] = field(default_factory=list)
    gold_docs: list[int] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # one schema for every task: citations name the gold documents (SummHay: those holding the
        # insight), and the fixed meta keys are always present
        if not self.citations and self.task != "summhay":
            self.citations = [self.documents[g].id for g in self.gold_docs if 0 <= g < len(self.documents)]
        for k, v in META_FIXED.items():
            self.meta.setdefault(k, list(v) if isinstance(v, list) else v)

    @property
    def answer(self) -> str:
        """The canonical answer (the first)."""
        return self.answers[0]

    def needle_text(self, i: int = 0) -> str:
        n = self.needles[i]
        return self.documents[n.doc].text[n.start : n.end]

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of the record, one schema for every task (README 'The record'): `meta`
        holds exactly the keys of META_FIXED with fixed types (`unlocated_docs` as JSON text) plus
        `extra`, a JSON text of every other meta entry, so that files of different tasks load
        together (e.g. `datasets.load_dataset("json", data_files=[...])`)."""
        d = asdict(self)
        d["meta"] = meta_to_disk(self.meta)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Record:
        """Build a record from a parsed JSON object; raises ValueError naming a missing/bad field."""
        if not isinstance(d, dict):
            raise ValueError(f"expected a JSON object, got {type(d).__name__}")
        missing = [k for k in REQUIRED if k not in d]
        if missing:
            raise ValueError(f"missing field(s) {', '.join(missing)}")
        try:
            docs = [Document(id=str(x["id"]), title=str(x.get("title", "")), text=str(x["text"])) for x in d["documents"]]
        except (KeyError, TypeError) as e:
            raise ValueError(f"each document needs 'id' and 'text' ({e!r})") from None
        try:
            needles = [
                Needle(doc=int(x["doc"]), start=int(x["start"]), end=int(x["end"]), role=str(x.get("role") or "answer"))
                for x in d["needles"]
            ]
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ValueError(f"each needle needs integer 'doc', 'start', 'end' ({e!r})") from None
        answers = d["answers"]
        if isinstance(answers, str) or not isinstance(answers, list):
            raise ValueError("'answers' must be a list of strings")
        return cls(
            id=str(d["id"]),
            task=str(d["task"]),
            concept=str(d["concept"]),
            context=str(d["context"]),
            documents=docs,
            question=str(d["question"]),
            answers=[str(a) for a in answers],
            needles=needles,
            citations=[str(c) for c in d.get("citations") or []],
            gold_docs=[int(g) for g in d.get("gold_docs") or []],
            meta=meta_from_disk(d.get("meta")),
        )


def meta_to_disk(meta: dict[str, Any]) -> dict[str, Any]:
    """In-memory meta (one flat dict) -> the on-disk object: `qtype` (str), `n_hops` (int),
    `unlocated_docs` (JSON text of a list of int) and `extra` (JSON text of every other entry).
    Empty lists and nulls are never written as such: a file where a key is always empty would
    type it `null` and clash with files of other tasks."""
    extra = {k: v for k, v in meta.items() if k not in META_FIXED}
    return {
        "qtype": str(meta.get("qtype") or ""),
        "n_hops": int(meta.get("n_hops") or 0),
        "unlocated_docs": json.dumps([int(i) for i in meta.get("unlocated_docs") or []]),
        "extra": json.dumps(extra, ensure_ascii=False, separators=(",", ":")),
    }


def meta_from_disk(m: Any) -> dict[str, Any]:
    """The inverse of `meta_to_disk`; also reads old files whose meta is one free-form object."""
    if not m:
        return {}
    if not isinstance(m, dict):
        raise ValueError(f"'meta' must be a JSON object, got {type(m).__name__}")
    m = dict(m)
    extra = m.pop("extra", None)
    if isinstance(extra, str):
        try:
            extra = json.loads(extra) if extra else {}
        except json.JSONDecodeError as e:
            raise ValueError(f"meta 'extra' is not JSON text ({e.msg})") from None
    if isinstance(extra, dict):
        m = {**m, **{k: v for k, v in extra.items() if k not in m}}
    un = m.get("unlocated_docs")
    if isinstance(un, str):
        try:
            un = json.loads(un) if un.strip() else []
        except json.JSONDecodeError as e:
            raise ValueError(f"meta 'unlocated_docs' is not a JSON list ({e.msg})") from None
    if un is not None:
        if not isinstance(un, list):
            raise ValueError("meta 'unlocated_docs' must be a list of document indices")
        m["unlocated_docs"] = [int(i) for i in un]
    return m


def validate_record(r: Record) -> list[str]:
    """Return the record's invariant violations (empty when valid). See README 'The record'."""
    problems: list[str] = []
    if r.task not in TASKS:
        problems.append(f"task {r.task!r} is not one of {', '.join(TASKS)}")
    if r.concept not in CONCEPTS:
        problems.append(f"concept {r.concept!r} is not one of {', '.join(CONCEPTS)}")
    if r.context not in CONTEXTS:
        problems.append(f"context {r.context!r} is not one of {', '.join(CONTEXTS)}")
    if not r.answers or not r.answers[0].strip():
        problems.append("no answer: 'answers' is empty or its first entry is blank")
    if not r.needles:
        problems.append("no needles: every record needs at least one needle span")
    ids = [d.id for d in r.documents]
    if len(set(ids)) != len(ids):
        problems.append("document ids are not unique")
    for i, n in enumerate(r.needles):
        if not 0 <= n.doc < len(r.documents):
            problems.append(f"needle {i}: doc index {n.doc} is outside 0..{len(r.documents) - 1}")
            continue
        text = r.documents[n.doc].text
        if not 0 <= n.start < n.end <= len(text):
            problems.append(f"needle {i}: span {n.start}:{n.end} lies outside document {n.doc} (length {len(text)})")
            continue
        span = text[n.start : n.end]
        if n.role not in ROLES:
            problems.append(
                f"needle {i}: role {n.role!r} is not one of {', '.join(ROLES)} "
                "(answer: where the answer sits; evidence: other evidence such as a bridge entity or an insight)"
            )
            continue
        hop_answers = [str(a) for a in r.meta.get("hop_answers") or []] + [
            str(h.get("answer")) for h in r.meta.get("hops") or [] if isinstance(h, dict)
        ]
        if r.task in ("mdqa", "musique", "kv") and n.role == "answer":
            if span not in r.answers:
                hint = " (a bridge hop's answer: give it role 'evidence')" if r.task == "musique" and span in hop_answers else ""
                problems.append(f"needle {i}: span text {span!r} equals no answer {r.answers!r}{hint}")
        elif r.task == "musique":  # evidence: a hop's answer
            if span not in hop_answers:
                problems.append(f"needle {i}: evidence span text {span!r} equals no hop answer {hop_answers!r}")
        elif r.task == "summhay":
            insight = r.meta.get("insight", r.question)
            spans = r.meta.get("insight_spans") or []
            own = spans[i] if i < len(spans) else insight  # real SummHay: each document's own (paraphrased) insight
            if r.concept != "real" and span != insight and span != own:  # real insight sentences paraphrase it
                problems.append(f"needle {i}: span text {span[:60]!r} is not the insight {insight[:60]!r}")
    if r.task in ("mdqa", "musique", "kv") and r.needles and not any(n.role == "answer" for n in r.needles):
        problems.append("no answer needle: the retrieval score needs a span with role 'answer' where the answer sits")
    needle_docs = {n.doc for n in r.needles}
    unlocated = r.meta.get("unlocated_docs") or []
    for g in r.gold_docs:
        if g not in needle_docs and not (r.task == "summhay" and g in unlocated):
            problems.append(
                f"gold doc {g} holds no needle"
                + (" (SummHay: list it in meta['unlocated_docs'] when its insight sentence was not found)" if r.task == "summhay" else "")
            )
    if unlocated and r.task != "summhay":
        problems.append(f"meta['unlocated_docs'] is for summhay only (task {r.task}); leave it empty")
    for g in unlocated:
        if not isinstance(g, int) or g not in r.gold_docs:
            problems.append(f"meta['unlocated_docs'] entry {g!r} is not a gold (cited) document index")
        elif g in needle_docs:
            problems.append(f"meta['unlocated_docs'] lists document {g}, which holds a needle")
    if r.task == "summhay":
        if not r.citations:
            problems.append("summhay record without citations")
        unknown = [c for c in r.citations if c not in ids]
        if unknown:
            problems.append(f"citations {unknown} name no document")
    elif sorted(r.citations) != sorted(ids[g] for g in r.gold_docs if 0 <= g < len(ids)):
        problems.append(
            f"citations {r.citations} are not the ids of the gold documents {r.gold_docs} (task {r.task}); "
            "leave them empty outside SummHay: they are filled from gold_docs"
        )
    return problems


def read_jsonl(path: str | os.PathLike, validate: bool = False) -> list[Record]:
    """Read records; malformed lines raise NeedleworkError naming the file, line and fix."""
    return list(iter_jsonl(path, validate=validate))


def iter_jsonl(path: str | os.PathLike, validate: bool = False) -> Iterator[Record]:
    path = Path(path)
    if not path.exists():
        raise NeedleworkError(f"{path}: no such file", "check the path, or create it with `needlework generate`")
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise NeedleworkError(
                    f"{path}:{lineno}: malformed JSON ({e.msg} at column {e.colno})",
                    "each line must be one complete JSON object (JSONL); fix or remove that line",
                ) from None
            try:
                rec = Record.from_dict(obj)
            except ValueError as e:
                raise NeedleworkError(
                    f"{path}:{lineno}: {e}",
                    f"records need the fields {', '.join(REQUIRED)} (see README 'The record')",
                ) from None
            if validate:
                problems = validate_record(rec)
                if problems:
                    raise NeedleworkError(
                        f"{path}:{lineno} (id {rec.id}): " + "; ".join(problems),
                        "regenerate the record or fix its spans; `needlework validate` lists every problem",
                    )
            yield rec


def write_jsonl(path: str | os.PathLike, records: Iterable[Record | dict]) -> int:
    """Write records atomically, one JSON object per line; returns the count."""
    n = 0
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for r in records:
            d = r.to_dict() if isinstance(r, Record) else r
            f.write(json.dumps(d, ensure_ascii=False, separators=(",", ":")) + "\n")
            n += 1
    return n
