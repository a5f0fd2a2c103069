"""Task metrics as pure functions of (record, model output): SQuAD-normalised exact match, token F1
and best-subspan accuracy for the QA tasks, citation precision/recall/F1 for SummHay, and exact
match for key-value retrieval. No model, no I/O, so every edge case is unit-tested.

Per task (`score_example` returns these keys; `PRIMARY` names the headline metric):

| task    | metrics                                     | primary       |
|---------|---------------------------------------------|---------------|
| mdqa    | subspan_acc, f1                             | subspan_acc   |
| musique | em, f1                                      | f1            |
| summhay | cite_precision, cite_recall, cite_f1, n_cited | cite_f1     |
| kv      | exact_match, contains                       | exact_match   |
"""

from __future__ import annotations

import functools
import re
import string
from collections import Counter
from collections.abc import Iterable

from needlework.data.records import Record
from needlework.errors import NeedleworkError

PRIMARY = {"mdqa": "subspan_acc", "musique": "f1", "summhay": "cite_f1", "kv": "exact_match"}
METRICS = {
    "mdqa": ("subspan_acc", "f1"),
    "musique": ("em", "f1"),
    "summhay": ("cite_precision", "cite_recall", "cite_f1", "n_cited"),
    "kv": ("exact_match", "contains"),
}

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)


# --- SQuAD-style answers --------------------------------------------------------------------------


def normalize_answer(s: str) -> str:
    """SQuAD normalisation: lower case, drop punctuation, drop articles (a/an/the), squeeze spaces."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _PUNCT)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def exact_match(output: str, golds: Iterable[str]) -> float:
    """1.0 when the normalised output equals any normalised gold answer, else 0.0."""
    pred = normalize_answer(output)
    return float(any(pred == normalize_answer(g) for g in golds))


def _f1(pred_toks: list[str], gold_toks: list[str]) -> float:
    # SQuAD v2 convention: when either side is empty, F1 is 1 only if both are empty.
    if not pred_toks or not gold_toks:
        return float(pred_toks == gold_toks)
    common = Counter(pred_toks) & Counter(gold_toks)
    n_same = sum(common.values())
    if n_same == 0:
        return 0.0
    p, r = n_same / len(pred_toks), n_same / len(gold_toks)
    return 2 * p * r / (p + r)


def token_f1(output: str, golds: Iterable[str]) -> float:
    """SQuAD token F1 of the output against the best-matching gold answer (max over golds).

    An empty output scores 0 against any non-empty gold; no golds at all scores 0.
    """
    pred = normalize_answer(output).split()
    return max((_f1(pred, normalize_answer(g).split()) for g in golds), default=0.0)


def best_subspan_acc(output: str, golds: Iterable[str]) -> float:
    """Lost-in-the-Middle best-subspan accuracy: 1.0 when any normalised gold answer occurs as a
    substring of the normalised output. Golds that normalise to "" are ignored (they would match
    everything), so an example whose golds are all blank scores 0."""
    pred = normalize_answer(output)
    return float(any(g and g in pred for g in map(normalize_answer, golds)))


# --- SummHay citations ----------------------------------------------------------------------------

_BRACKETED = re.compile(r"\[\s*(\d+)\s*\]")
_BARE = re.compile(r"(?<![\w.])(\d+)(?!\w|\.\d)")  # "3", "Doc 3", "Document 3," but not "3rd", "2.5", "x3"


def parse_citations(output: str) -> list[int]:
    """The 1-based document numbers cited in `output`, in order of first mention, duplicates removed.

    Bracketed numbers (`[3]`, `Document [3]`) take priority: when any are present, bare numbers
    are ignored (they are then likely years or counts in prose). Otherwise every standalone
    integer counts (`3`, `Doc 3`, `Documents 1, 4 and 7`). Nothing parseable gives [].
    """
    found = _BRACKETED.findall(output) or _BARE.findall(output)
    seen: dict[int, None] = {}
    for x in found:
        seen.setdefault(int(x), None)
    return list(seen)


def citation_scores(output: str, record: Record) -> dict[str, float]:
    """Citation precision, recall and F1 of the documents cited in `output` (SummHay Citation).

    Cited 1-based positions map to document ids through `record.documents`; duplicates count once.
    Edge cases, chosen so that a mean over examples stays well defined:
      * a cited number outside 1..len(documents) is an invalid citation: it counts as a cited id
        that is not gold (lowers precision, never recall);
      * empty or unparseable output (no ids) with gold citations: precision = recall = F1 = 0;
      * no gold citations and no ids cited: precision = recall = F1 = 1 (correct abstention);
      * no gold citations but ids cited: precision = 0, recall = 1, F1 = 0.
    `n_cited` is the number of distinct cited numbers (valid or not).
    """
    n_docs = len(record.documents)
    cited = {record.documents[i - 1].id if 1 <= i <= n_docs else f"#invalid:{i}" for i in parse_citations(output)}
    gold = set(record.citations)
    hit = len(cited & gold)
    if not gold:
        p, r = (1.0, 1.0) if not cited else (0.0, 1.0)
    else:
        p = hit / len(cited) if cited else 0.0
        r = hit / len(gold)
    f1 = 2 * p * r / (p + r) if p + r > 0 else 0.0
    return {"cite_precision": p, "cite_recall": r, "cite_f1": f1, "n_cited": float(len(cited))}


# --- key-value retrieval --------------------------------------------------------------------------

_QUOTES = ('""', "''", "``", "\u201c\u201d", "\u2018\u2019")


def clean_kv(s: str) -> str:
    """Strip whitespace, then one trailing period, then one pair of matching surrounding quotes."""
    s = s.strip()
    if s.endswith(".") and len(s) > 1:
        s = s[:-1].rstrip()
    for a, b in _QUOTES:
        if len(s) >= 2 and s[0] == a[0] and s[-1] == b[-1]:
            s = s[1:-1].strip()
            break
    return s


def kv_exact_match(output: str, golds: Iterable[str]) -> float:
    """1.0 when the cleaned output equals a cleaned gold value exactly (case-sensitive: values are
    symbols such as UUIDs, where case matters)."""
    out = clean_kv(output)
    return float(any(out == clean_kv(g) and out for g in golds))


def kv_contains(output: str, golds: Iterable[str]) -> float:
    """Lenient variant: 1.0 when a (non-empty, cleaned) gold value occurs anywhere in the output."""
    return float(any((g := clean_kv(x)) and g in output for x in golds))


# --- per task -------------------------------------------------------------------------------------


def gold_answers(record: Record) -> list[str]:
    """The record's gold answers plus `meta["answer_aliases"]` when present, de-duplicated."""
    golds = list(record.answers) + [str(a) for a in record.meta.get("answer_aliases", []) or []]
    return list(dict.fromkeys(golds))


def primary_metric(task: str) -> str:
    """The headline metric of a task (see the module table). Raises NeedleworkError for unknown tasks."""
    try:
        return PRIMARY[task]
    except KeyError:
        raise NeedleworkError(f"no metrics for task {task!r}", f"use one of {', '.join(PRIMARY)}") from None


def score_example(record: Record, output: str) -> dict[str, float]:
    """All metrics of one example for its task (keys in `METRICS[record.task]`).

    Args:
        record: the example (its task picks the metrics; answers/citations are the gold).
        output: the model's generated text, after stop rules.
    Returns:
        metric name -> value (floats in [0, 1], except `n_cited`, a count).
    Raises:
        NeedleworkError: the task has no metrics.
    """
    task = record.task
    primary_metric(task)
    if task == "summhay":
        return citation_scores(output, record)
    golds = gold_answers(record)
    if task == "mdqa":
        return {"subspan_acc": best_subspan_acc(output, golds), "f1": token_f1(output, golds)}
    if task == "musique":
        return {"em": exact_match(output, golds), "f1": token_f1(output, golds)}
    return {"exact_match": kv_exact_match(output, golds), "contains": kv_contains(output, golds)}


# --- the success gate of generate-mode head scoring (Wu et al.) -----------------------------------


@functools.lru_cache(maxsize=1)
def _rouge1_scorer():
    from rouge_score import rouge_scorer  # imports nltk (~1-3 s): only when generate mode scores

    return rouge_scorer.RougeScorer(["rouge1"], use_stemmer=True)


def rouge1_recall(answer: str, output: str) -> float:
    """ROUGE-1 recall of `answer` in `output`, computed by Wu et al.'s own library and setting:
    `rouge_score.rouge_scorer.RougeScorer(["rouge1"], use_stemmer=True).score(target=answer,
    prediction=output)["rouge1"].recall`.

    What that computes: both texts are lower-cased and every run of characters outside [a-z0-9]
    becomes a token separator (so punctuation and underscores split words, and non-ASCII letters
    are dropped: "São Paulo" -> s, o, paulo); tokens longer than 3 characters are reduced by NLTK's
    Porter stemmer (its default NLTK_EXTENSIONS mode: "running shoes" -> run, shoe); recall = the
    clipped unigram overlap (each answer token counts at most as often as the output has it) over
    the number of answer tokens, 0.0 when the answer has no token (e.g. an all-non-ASCII answer).
    """
    return float(_rouge1_scorer().score(target=answer, prediction=output)["rouge1"].recall)
