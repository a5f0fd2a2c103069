"""The needlework record: one long-context example as a JSONL line.

Every stage reads and writes this one format. Needles are character spans inside a document's
text, so they survive re-tokenisation; rendering maps them to token positions for any tokenizer.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

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


@dataclass
class Needle:
    """Where the answer (SummHay: the insight) is written: `text[start:end]` of document `doc`."""

    doc: int
    start: int
    end: int


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

    @property
    def answer(self) -> str:
        """The canonical answer (the first)."""
        return self.answers[0]

    def needle_text(self, i: int = 0) -> str:
        n = self.needles[i]
        return self.documents[n.doc].text[n.start : n.end]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Record":
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
            needles = [Needle(doc=int(x["doc"]), start=int(x["start"]), end=int(x["end"])) for x in d["needles"]]
        except (KeyError, TypeError, ValueError) as e:
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
            meta=dict(d.get("meta") or {}),
        )


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
        if r.task in ("mdqa", "musique", "kv"):
            if span not in r.answers and not (r.task == "musique" and "hop_answers" in r.meta and span in r.meta["hop_answers"]):
                problems.append(f"needle {i}: span text {span!r} equals no answer {r.answers!r}")
        elif r.task == "summhay":
            insight = r.meta.get("insight", r.question)
            spans = r.meta.get("insight_spans") or []
            own = spans[i] if i < len(spans) else insight  # real SummHay: each document's own (paraphrased) insight
            if span != insight and span != own:
                problems.append(f"needle {i}: span text {span[:60]!r} is not the insight {insight[:60]!r}")
    needle_docs = {n.doc for n in r.needles}
    for g in r.gold_docs:
        if g not in needle_docs:
            problems.append(f"gold doc {g} holds no needle")
    if r.task == "summhay":
        if not r.citations:
            problems.append("summhay record without citations")
        unknown = [c for c in r.citations if c not in ids]
        if unknown:
            problems.append(f"citations {unknown} name no document")
    elif r.citations:
        problems.append(f"citations are for summhay only (task {r.task})")
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
