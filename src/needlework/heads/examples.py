"""Records rendered into token-level examples for head scoring: the answer tokens, the span set S,
and for the query score the question's rows and the documents' keys; records that cannot be scored
are skipped with a reason (never scored as zero), and span coverage is counted for every record.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from needlework.errors import NeedleworkError
from needlework.heads.config import ScoreConfig

__all__ = ["Canon", "Example", "prepare_examples", "span_coverage"]


@dataclass
class Example:
    """One example at token level. `span` = S (sorted prompt positions; the query score: the gold
    documents' tokens). Teacher mode scores `answer_ids` (gold, final EOS excluded); generate mode
    decodes from `prompt_ids`. `query_rows` (the question's tokens) and `doc_tokens` (every
    document's tokens) serve the query score."""

    id: str
    prompt_ids: list[int]
    answer_ids: list[int]
    span: list[int]
    answer_text: str = ""
    n_citing_docs: int = 0  # gold (SummHay: cited) documents
    n_spans_located: int = 0  # of them, those holding a span of the scored role(s) that rendered to tokens
    query_rows: list[int] = field(default_factory=list)
    doc_tokens: list[int] = field(default_factory=list)


def span_coverage(per_record: dict[str, tuple[int, int]]) -> dict:
    """{record id: (located, citing)} -> {"n_spans_located", "n_citing_docs", "fraction" (None
    when there is no citing document), "n_records_partial" (records with a document unlocated)}."""
    located = sum(a for a, _b in per_record.values())
    citing = sum(b for _a, b in per_record.values())
    return {
        "n_spans_located": located,
        "n_citing_docs": citing,
        "fraction": round(located / citing, 4) if citing else None,
        "n_records_partial": sum(1 for a, b in per_record.values() if a < b),
    }


def _located(rec, r, roles: tuple[str, ...]) -> tuple[int, int]:
    """(citing documents holding a rendered span of `roles`, citing documents) of one record."""
    docs = [n.doc for n in getattr(rec, "needles", None) or []]
    citing = set(getattr(rec, "gold_docs", None) or docs)
    hit = {d for i, d in enumerate(docs) if i < len(r.needle_spans) and r.needle_spans[i] is not None and r.role(i) in roles}
    return len(citing & hit), len(citing)


# ---------------------------------------------------------------------------- token matching


class Canon:
    """Maps token ids to integers compared by the identity test (`id`: the id itself; `loose`:
    one integer per distinct stripped, lower-cased decoded string)."""

    def __init__(self, match: str, decode: Callable[[list[int]], str] | None):
        if match == "loose" and decode is None:
            raise NeedleworkError("match='loose' needs a tokenizer to decode tokens", "use match='id'")
        self.match, self.decode = match, decode
        self._ids: dict[int, int] = {}
        self._strings: dict[str, int] = {}

    def __call__(self, ids: Iterable[int]) -> list[int]:
        if self.match == "id":
            return list(ids)
        out = []
        for t in ids:
            if t not in self._ids:
                s = self.decode([t]).strip().lower()
                self._ids[t] = self._strings.setdefault(s, len(self._strings))
            out.append(self._ids[t])
        return out


# ---------------------------------------------------------------------------- preparing examples


def _gold_docs(rec) -> list[int]:
    """The record's gold documents (SummHay: the cited ones), else those holding a needle."""
    gold = list(getattr(rec, "gold_docs", None) or [])
    return sorted(set(gold or [n.doc for n in getattr(rec, "needles", None) or []]))


def _query_example(rec, r, ans: list[int], cfg: ScoreConfig) -> tuple[Example | None, str, tuple[int, int]]:
    """(Example or None, skip reason, (gold documents rendered, gold documents)) for the query
    score: query rows = the question's tokens, S = the gold documents' tokens, keys compared with
    every document's tokens."""
    gold = _gold_docs(rec)
    located = sum(1 for g in gold if g < len(r.doc_spans) and r.doc_spans[g] is not None)
    cov = (located, len(gold))
    span, docs, rows = r.doc_positions(set(gold)), r.doc_positions(), r.question_positions()
    why = ""
    if not gold:
        why = "no gold document"
    elif not span:
        why = "gold documents not found after rendering"
    elif not rows:
        why = "question not found after rendering"
    elif cfg.query_norm == "documents" and len(docs) == len(span):
        why = "every document is gold (nothing to compare with)"
    elif not ans:
        why = "empty answer"
    if why:
        return None, why, cov
    ex = Example(rec.id, r.prompt_ids, ans, span, rec.answers[0], len(gold), located, query_rows=rows, doc_tokens=docs)
    return ex, "", cov


def _span_example(rec, r, ans: list[int], cfg: ScoreConfig, canon: Canon) -> tuple[Example | None, str, tuple[int, int]]:
    """(Example or None, skip reason, (located, citing)) for the scores that use needle spans S."""
    all_roles = [r.role(i) for i in range(len(r.needle_spans))]
    roles = cfg.span_roles("evidence" in all_roles)
    span = r.needle_positions(roles)
    located, citing = _located(rec, r, roles)
    why = ""
    if cfg.score == "output":  # S is only reported: the output score reads no span
        why = "empty answer" if not ans else ""
    elif not any(x in roles for x in all_roles):
        why = f"no needle span of role {'/'.join(roles)}"
    elif not span:
        why = "needle span not found after rendering"
    elif not ans:
        why = "empty answer"
    elif cfg.score == "retrieval" and not set(canon(ans)) & set(canon(r.input_ids[i] for i in span)):
        why = "answer tokens absent from the needle span"
    if why:
        return None, why, (located, citing)
    return Example(rec.id, r.prompt_ids, ans, span, rec.answers[0], citing, located), "", (located, citing)


def prepare_examples(
    records, tokenizer, cfg: ScoreConfig, coverage: dict[str, tuple[int, int]] | None = None, rendered: dict | None = None
) -> tuple[list[Example], dict[str, str]]:
    """Render records into Examples; returns (examples, skipped {id: reason}). S is the token
    positions of the needles whose role `cfg.span_roles` picks (retrieval: answer spans only). A
    record is skipped (never scored as zero) when it has no needle of those roles, when none of
    them is found after rendering, or, for the retrieval score, when no answer token occurs in S
    (the answer is absent from the context). The query score needs instead a gold document, the
    question and, with `query_norm="documents"`, a non-gold document; the output score only an
    answer. `coverage`, when given, is filled with {record id: (located, citing documents)} for
    every record (query score: gold documents rendered / gold documents). `rendered`, when given,
    caches each record's rendering by position, for a second criterion on the same records.
    Raises NeedleworkError when two records share an id (every table is keyed by example id)."""
    from needlework.data.render import render

    cfg = cfg.resolved(tokenizer)
    canon = Canon(cfg.match, tokenizer.decode)
    examples, skipped, seen = [], {}, set()
    for pos, rec in enumerate(records):
        if rec.id in seen:
            raise NeedleworkError(f"two records have the id {rec.id!r}", "give every record its own id (head tables are keyed by it)")
        seen.add(rec.id)
        r = rendered.get(pos) if rendered is not None else None
        if r is None:
            r = render(rec, tokenizer, chat=cfg.chat)
            if rendered is not None:
                rendered[pos] = r
        ans = list(r.answer_ids)
        if ans and tokenizer.eos_token_id is not None and ans[-1] == tokenizer.eos_token_id:
            ans = ans[:-1]  # the final EOS is no copy target
        if cfg.score == "query":
            ex, why, cov = _query_example(rec, r, ans, cfg)
        else:
            ex, why, cov = _span_example(rec, r, ans, cfg, canon)
        if coverage is not None:
            coverage[rec.id] = cov
        if ex is None:
            skipped[rec.id] = why
        else:
            examples.append(ex)
    return examples, skipped
