"""Locate answers and insights inside passages: normalised exact matching for answer strings, and a
content-word similarity over sentence windows for SummHay insights that documents paraphrase.

Spans are character offsets into the ORIGINAL text, so the stored needle is what the passage says.
"""

from __future__ import annotations

import math
import re

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
    return _find_normed(*_norm_index(text), answers)


def _find_normed(nt: str, idx: list[int], answers: list[str]) -> tuple[int, int] | None:
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


# ----------------------------------------------------------------------------- SummHay insights
#
# Real SummHay documents paraphrase their insights ("FedEx's earnings surpassed fiscal Q3 forecasts
# thanks to cost cuts" for "FedEx reported earnings that topped fiscal Q3 views on cost cuts"), so
# an insight is located as the window of 1..max_sentences adjacent sentences whose CONTENT words
# best match the insight's: stop words dropped, light suffix stemming, each word weighted by its
# inverse sentence frequency in the topic's documents (words every document repeats, such as the
# topic's company names, count little), and scored by the weighted F1 of the two word sets. A span
# is kept only at or above INSIGHT_THRESHOLD, calibrated so that documents NOT including an insight
# almost never pass (README "Real data" gives the measured distributions). Every sentence of a longer
# window must resemble the insight by itself (at least INSIGHT_MIN_SENTENCE), so that a window never
# takes in an unrelated neighbour ("Founded in 1971, Bed Bath & Beyond ...") for its few shared names.

INSIGHT_THRESHOLD = 0.4
INSIGHT_MAX_SENTENCES = 2
INSIGHT_MIN_SENTENCE = 0.2  # half the threshold

STOP_WORDS = frozenset(
    """
a about above after again against all also am amid among an and any are as at be because been before being below
between both but by can could did do does doing down during each either few for from further had has have having he
her here hers herself him himself his how i if in into is it its itself just me more most my myself neither no nor
not now of off on once only or other our ours ourselves out over own same she should so some such than that the
their theirs them themselves then there these they this those through thus to too under until up upon very via was
we were what when where whether which while who whom whose why will with within without would yet you your yours
yourself yourselves s t ll re ve d m
""".split()
)

_WORD = re.compile(r"\d+(?:[.,]\d+)*|[^\W\d_]+(?:['\u2019][^\W\d_]+)*")
# a sentence ends at . ! ? (plus closing quotes/brackets) before whitespace, at a line break, or at <br>
_END = re.compile(r"[.!?]+[\"')\]\u201d\u2019]*(?=\s)|\s*\n\s*|\s*<br\s*/?>\s*", re.I)
_ABBREV = re.compile(
    r"(?:\b(?:[A-Za-z]\.){2,}|(?<![\w.])[A-Z]\.|\b(?:Mr|Mrs|Ms|Dr|Prof|Sr|Jr|St|Mt|Inc|Corp|Co|Ltd|No|vs|etc|Gov|Sen|Rep|Gen|"
    r"Jan|Feb|Mar|Apr|Jun|Jul|Aug|Sep|Sept|Oct|Nov|Dec)\.)$"
)
_SUFFIXES = (("sses", "ss"), ("ies", "y"), ("ied", "y"), ("ing", ""), ("edly", ""), ("ed", ""), ("es", ""), ("s", ""), ("ly", ""))


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of each sentence of `text`, without surrounding whitespace.

    Boundaries: `.`/`!`/`?` followed by whitespace and a word that does not start in lower case or
    with a digit ("U.S. banks", "3.5 p.m. on"), except after abbreviations (U.S., Mr., Inc., Mar.);
    every line break; HTML `<br>`.
    """
    cuts: list[tuple[int, int]] = []  # (end of a sentence, start of the gap after it)
    for m in _END.finditer(text):
        if m.group()[0] in ".!?":
            nxt = re.match(r"\s*(\S)", text[m.end() :])
            if nxt and (nxt.group(1).islower() or nxt.group(1).isdigit()):
                continue
            if m.group()[0] == "." and _ABBREV.search(text[max(0, m.start() - 12) : m.start() + 1]):
                continue
            cuts.append((m.end(), m.end()))
        else:
            cuts.append((m.start(), m.end()))
    spans, pos = [], 0
    for a, b in cuts + [(len(text), len(text))]:
        seg = text[pos:a]
        if seg.strip():
            lead = len(seg) - len(seg.lstrip())
            spans.append((pos + lead, pos + len(seg.rstrip())))
        pos = b
    return spans


def stem(word: str) -> str:
    """Light suffix stemming (plural, -ed, -ing, -ly; a doubled final consonant and a final e go):
    `cuts`/`cut`/`cutting` -> `cut`, `raised`/`raises`/`raise` -> `rais`, `companies` -> `company`."""
    w = word
    for suf, rep in _SUFFIXES:
        if w.endswith(suf) and len(w) - len(suf) >= 3 and not (suf == "s" and w.endswith(("ss", "us", "is"))):
            w = w[: len(w) - len(suf)] + rep
            if suf in ("ing", "ed", "edly") and len(w) > 3 and w[-1] == w[-2] and w[-1] not in "aeioulsz":
                w = w[:-1]
            break
    if w.endswith("e") and len(w) > 4:
        w = w[:-1]
    return w


def content_words(text: str) -> list[str]:
    """Stemmed content words of `text`: lower-cased, stop words and one-letter words dropped; numbers
    kept whole (`3.23`, `1,000` -> `1000`)."""
    out = []
    for m in _WORD.finditer(text.lower().replace("\u2019", "'")):
        w = m.group()
        if w[0].isdigit():
            out.append(w.replace(",", ""))
            continue
        if w.endswith("'s"):
            w = w[:-2]
        if len(w) < 2 or w in STOP_WORDS:
            continue
        out.append(stem(w))
    return out


class InsightLocator:
    """Locates insights in the documents of one SummHay topic (see the comment above).

    Args:
        texts: the topic's document texts; their sentences give the words' inverse frequencies.
        max_sentences: longest window of adjacent sentences a span may cover.
        min_sentence: least similarity of each sentence of a window of two or more sentences.
    """

    def __init__(self, texts: list[str], max_sentences: int = INSIGHT_MAX_SENTENCES, min_sentence: float = INSIGHT_MIN_SENTENCE):
        self.texts = texts
        self.max_sentences = max(1, int(max_sentences))
        self.min_sentence = float(min_sentence)
        self._sents = [sentence_spans(t) for t in texts]
        self._words = [[frozenset(content_words(t[s:e])) for s, e in ss] for t, ss in zip(texts, self._sents)]
        n = sum(len(ws) for ws in self._words)
        df: dict[str, int] = {}
        for ws in self._words:
            for sw in ws:
                for w in sw:
                    df[w] = df.get(w, 0) + 1
        self._weights = {w: math.log((n + 1) / (k + 1)) + 1.0 for w, k in df.items()}
        self._unseen = math.log(n + 1) + 1.0
        self._normed: dict[int, tuple[str, list[int]]] = {}

    def weight(self, word: str) -> float:
        """Inverse sentence frequency: ln((N + 1) / (df + 1)) + 1 over the topic's N sentences."""
        return self._weights.get(word, self._unseen)

    def similarity(self, insight: str, text: str) -> float:
        """Weighted content-word F1 between an insight and any text (0 when they share no word)."""
        return self._f1(frozenset(content_words(insight)), frozenset(content_words(text)))

    def _f1(self, a: frozenset, b: frozenset) -> float:
        common = a & b
        if not common:
            return 0.0
        c = sum(self.weight(w) for w in common)
        p = c / sum(self.weight(w) for w in b)
        r = c / sum(self.weight(w) for w in a)
        return 2 * p * r / (p + r)

    def best(self, doc: int, insight: str) -> tuple[int, int, float] | None:
        """The best-matching window of document `doc`, whatever its score: (start, end, score).

        A verbatim copy (ignoring case and spacing) scores 1.0. Ties go to the earlier, shorter window.
        """
        if doc not in self._normed:
            self._normed[doc] = _norm_index(self.texts[doc])
        span = _find_normed(*self._normed[doc], [insight])
        if span is not None:
            return span[0], span[1], 1.0
        target = frozenset(content_words(insight))
        sents, words = self._sents[doc], self._words[doc]
        alone = [self._f1(target, w) for w in words]
        best: tuple[int, int, float] | None = None
        for k in range(len(sents)):
            acc: frozenset = frozenset()
            for j in range(k, min(k + self.max_sentences, len(sents))):
                if j > k and min(alone[k : j + 1]) < self.min_sentence:
                    break
                acc = acc | words[j]
                score = alone[j] if j == k else self._f1(target, acc)
                if best is None or score > best[2]:
                    best = (sents[k][0], sents[j][1], score)
        if best is None:
            return None
        return best[0], best[1], round(best[2], 4)

    def locate(self, doc: int, insight: str, threshold: float = INSIGHT_THRESHOLD) -> tuple[int, int, float] | None:
        """The insight's span in document `doc` as (start, end, score), or None below `threshold`."""
        hit = self.best(doc, insight)
        return hit if hit is not None and hit[2] >= threshold else None


def find_insight(text: str, insight: str, threshold: float = INSIGHT_THRESHOLD) -> tuple[int, int, float] | None:
    """Span of `insight` in one `text`: exact (case/space-normalised) first, else the window of 1-2
    sentences with the best weighted content-word F1 (word weights from this text's sentences), if at
    least `threshold`. Returns (start, end, score) with score 1.0 for an exact match, or None.

    A topic's documents should share one `InsightLocator`, whose word weights cover them all.
    """
    return InsightLocator([text]).locate(0, insight, threshold)


def question_type(question: str) -> str:
    """MDQA question type: the first wh-word/pattern in the question, else `other`."""
    q = " " + re.sub(r"[^\w\s]", " ", question.lower()) + " "
    hits = [(q.find(f" {w} "), -len(w), w) for w in WH_TYPES if f" {w} " in q]
    return min(hits)[2] if hits else "other"
