"""Locate answers and insights inside passages: normalised exact matching for answer strings, and a
difflib sentence match for SummHay insights that documents paraphrase.

Spans are character offsets into the ORIGINAL text, so the stored needle is what the passage says.
"""

from __future__ import annotations

import re
from difflib import SequenceMatcher

# MDQA "limited" types: the first wh-word/pattern of the question (NQ questions are lower-case,
# often without "?"); `how many`/`how much` are kept apart from plain `how`.
WH_TYPES = ("how many", "how much", "how", "what", "which", "whom", "whose", "who", "when", "where", "why")

def _norm_index(text: str) -> tuple[str, list[int]]:
    """Lower-cased text with whitespace runs collapsed to one space, and each char's source index."""
    out: list[str] = []
    idx: list[int] = []
    space = True  # drops leading whitespace
    for i, c in enumerate(text):
        if c.isspace():
            if not space:
                out.append(" ")
                idx.append(i)
                space = True
            continue
        space = False
        for lc in c.lower():
            out.append(lc)
            idx.append(i)
    if out and out[-1] == " ":
        out.pop()
        idx.pop()
    return "".join(out), idx


def normalize(text: str) -> str:
    return _norm_index(text)[0]


def find_span(text: str, answers: list[str]) -> tuple[int, int] | None:
    """Character span in `text` of the first answer found, ignoring case and whitespace.

    The match must not sit inside a word (answer `one` does not match `someone`). Returns the span
    of the ORIGINAL text, whose slice may differ from the answer in case or spacing.
    """
    nt, idx = _norm_index(text)
    for a in answers:
        na = normalize(a)
        if not na:
            continue
        pos = nt.find(na)
        while pos >= 0:
            end = pos + len(na)
            left_ok = pos == 0 or not (nt[pos - 1].isalnum() and na[0].isalnum())
            right_ok = end == len(nt) or not (nt[end].isalnum() and na[-1].isalnum())
            if left_ok and right_ok:
                return idx[pos], idx[end - 1] + 1
            pos = nt.find(na, pos + 1)
    return None


_SENTENCE = re.compile(r"\S.*?(?:[.!?]+[\"')\]]*(?=\s|\Z)|(?=\n)|\Z)", re.S)


def find_insight(text: str, insight: str, threshold: float) -> tuple[int, int, float] | None:
    """Span of `insight` in `text`: exact (case/space-normalised) first, else the sentence (or two
    adjacent sentences) most similar to it by difflib ratio, if at least `threshold`.

    Returns (start, end, score) with score 1.0 for an exact match, or None.
    """
    span = find_span(text, [insight])
    if span is not None:
        return span[0], span[1], 1.0
    target = normalize(insight)
    sents = [(m.start(), m.end()) for m in _SENTENCE.finditer(text)]
    cands = sents + [(a[0], b[1]) for a, b in zip(sents, sents[1:])]
    best, best_score = None, threshold
    sm = SequenceMatcher(None, autojunk=False)
    sm.set_seq2(target)
    for s, e in cands:
        sm.set_seq1(normalize(text[s:e]))
        if sm.real_quick_ratio() < best_score or sm.quick_ratio() < best_score:
            continue
        r = sm.ratio()
        if r >= best_score:
            best, best_score = (s, e), r
    if best is None:
        return None
    return best[0], best[1], round(best_score, 4)


def question_type(question: str) -> str:
    """MDQA question type: the first wh-word/pattern in the question, else `other`."""
    q = " " + re.sub(r"[^\w\s]", " ", question.lower()) + " "
    hits = [(q.find(f" {w} "), -len(w), w) for w in WH_TYPES if f" {w} " in q]
    return min(hits)[2] if hits else "other"
