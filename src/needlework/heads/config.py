"""The heads stage's options (`heads score`, `heads compare`), kept apart from the scoring code so
that the CLI and the study config read them without importing torch."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from needlework.errors import NeedleworkError
from needlework.schema import build, int_or_auto

MODES = ("teacher", "generate")
SCORES = ("retrieval", "insight", "mass", "query", "output")
QUERY_NORMS = ("documents", "none")
OUTPUT_BASELINES = ("mean", "none")
MATCHES = ("id", "loose")
SPANS = ("auto", "answer", "evidence", "all")


@dataclass
class ScoreConfig:
    """How to score heads. Fields are the YAML keys of the `heads:` section of study configs.

    match: the token-identity test of the retrieval score. `id` (SPEC): the attended key's token id
        equals the emitted token id. `loose`: equal after decoding, stripping whitespace and
        lower-casing; use it with chat templates, where the answer's first token often lacks the
        leading space its copy in the context has ("Paris" vs " Paris" are different ids).
        None (default): what fits the rendering, `loose` with the chat template, `id` without
        (`resolved` fills it in, with `chat`).
    keep_failed: generate mode only; False (Wu et al.) excludes examples whose output has ROUGE-1
        recall of the gold answer <= `success_threshold` from the per-head means (they stay in the
        per-example table with `kept = False`). The recall is Wu et al.'s: `rouge_score`'s rouge1
        with `use_stemmer=True` (lower-cased [a-z0-9] tokens, Porter-stemmed when longer than 3
        characters, clipped unigram overlap over the answer's tokens; `evaluate.metrics.rouge1_recall`).
    stop_on_newline: generate mode stops at a token containing a newline (not as the first token).
    spans: which needle spans form the span set S, by role (SPEC §2: `answer` = where the answer
        sits; `evidence` = other evidence, a MuSiQue bridge entity or a SummHay insight sentence).
        `auto` (default) is, per score: retrieval -> `answer` (the only value it accepts: the
        retrieval score never uses evidence); insight -> `evidence`, or a record's answer spans
        when it has no evidence span (MDQA, KV, old files without roles); mass -> `all`. Set
        `answer`, `evidence` or `all` to force one for insight and mass; a record without a span of
        that role is skipped (with the reason). Every run also reports span coverage: per example
        `n_citing_docs` (gold documents; SummHay: the cited ones) and `n_spans_located` (those of
        them holding a span of the used role that rendered to tokens). The query and output
        scores take `auto` only (query: the keys are documents; output: no span is read).
    query_norm: the query score (QRHead's detection score without its null-query calibration):
        per example, the attention mass that the question's tokens put on the gold documents'
        tokens, summed over the question's tokens and divided by the mass they put on all
        documents' tokens (`documents`: a share in [0, 1], attention sinks and the instructions
        left out; a head that spreads evenly over the documents scores |gold tokens| / |document
        tokens|), or by the number of question tokens (`none`: QRHead's mean mass per query token).
    criteria: more criteria scored on the same examples beside `score` (the primary, whose head
        sets the study compares and intervenes on unless told otherwise). Teacher mode computes
        them all in the one forward of `score`; generate mode decodes once per criterion. `spans`
        applies to the insight and mass criteria; the others take their own (`auto`). A record is
        scored by each criterion that can score it (skips are counted per criterion).
    output_baseline: the output score (direct logit attribution, in logits of the next answer
        token): `mean` subtracts the mean logit over the vocabulary that the same head writes
        (softmax ignores a shift common to all tokens, so a head that raises every logit alike
        scores 0), `none` keeps the raw logit contribution.
    """

    mode: str = "teacher"  # teacher | generate
    score: str = "retrieval"  # retrieval | insight | mass | query (QRHead) | output (direct logit attribution)
    batch_size: int | str = 1  # examples per forward pass, or auto: as many as fit on the GPU
    limit: int | None = None
    chat: bool | None = None  # None: use the chat template when the tokenizer has one
    max_new_tokens: int = 32
    keep_failed: bool = False
    match: str | None = None  # id | loose | None: loose with the chat template, id without
    stop_on_newline: bool = True
    success_threshold: float = 0.5  # stemmed ROUGE-1 recall of the answer must exceed this (Wu et al.)
    spans: str = "auto"  # auto | answer | evidence | all: the needle roles that form S (see above)
    query_norm: str = "documents"  # query score: documents (share of the document attention) | none (mean mass)
    output_baseline: str = "mean"  # output score: mean (logit minus the mean logit) | none (raw logit)
    criteria: list[str] = field(default_factory=list)  # more criteria on the same examples (teacher mode: the same forward)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ScoreConfig:
        """Build from a config mapping (YAML section); unknown keys and wrong types name themselves."""
        return build(cls, d, what="score option")

    def check(self) -> None:
        for name, val, allowed in (
            ("mode", self.mode, MODES),
            ("score", self.score, SCORES),
            ("match", self.match or "id", MATCHES),
            ("spans", self.spans, SPANS),
            ("query_norm", self.query_norm, QUERY_NORMS),
            ("output_baseline", self.output_baseline, OUTPUT_BASELINES),
        ):
            if val not in allowed:
                raise NeedleworkError(f"unknown {name} {val!r}", f"use one of {', '.join(allowed)}")
        if self.score == "retrieval" and self.spans not in ("auto", "answer"):
            raise NeedleworkError(
                f"spans={self.spans!r} with the retrieval score",
                "the retrieval score uses answer spans only (SPEC §2); use spans=auto or answer, "
                "or the insight/mass score for evidence spans",
            )
        if self.score in ("query", "output") and self.spans != "auto":
            raise NeedleworkError(
                f"spans={self.spans!r} with the {self.score} score",
                "the query score's keys are documents and the output score reads no span; use spans=auto",
            )
        for c in self.criteria:
            if c not in SCORES:
                raise NeedleworkError(f"unknown criterion {c!r} in criteria", f"use some of {', '.join(SCORES)}")
        if len(set(self.criteria)) < len(self.criteria):
            raise NeedleworkError(f"criteria {self.criteria} names one twice", "list each criterion once")
        self.batch_size = int_or_auto(self.batch_size, "batch_size")
        if self.max_new_tokens < 1:
            raise NeedleworkError("max_new_tokens must be >= 1", "pass a positive value")

    def all_criteria(self) -> list[str]:
        """`score` then the other `criteria` (each once)."""
        return [self.score, *[c for c in self.criteria if c != self.score]]

    def for_criterion(self, criterion: str) -> ScoreConfig:
        """The options of one criterion alone: `spans` kept for insight and mass (`auto` for the others)."""
        spans = self.spans if criterion in ("insight", "mass") else "auto"
        return replace(self, score=criterion, criteria=[], spans=spans)

    def span_roles(self, has_evidence: bool) -> tuple[str, ...]:
        """The needle roles forming S for one record (`has_evidence`: it has an evidence span)."""
        s = self.spans
        if s == "auto":
            auto = {"retrieval": "answer", "insight": "evidence" if has_evidence else "answer", "mass": "all"}
            s = auto.get(self.score, "all")  # query, output: S is only reported (span_tokens, coverage)
        return ("answer", "evidence") if s == "all" else (s,)

    def resolved(self, tokenizer) -> ScoreConfig:
        """This config with `chat` (the template when the tokenizer has one) and `match` (loose
        with the chat template, id without) decided for `tokenizer`."""
        from needlework.data.render import resolve_chat

        chat = resolve_chat(self.chat, tokenizer)
        return replace(self, chat=chat, match=self.match or ("loose" if chat else "id"))


@dataclass
class CompareConfig:
    top: int | None = None  # head set = top-k heads; None: threshold
    threshold: float = 0.1  # head set = mean score > threshold
    view: str = "query"  # query | kv
    kv_agg: str = "max"  # max | mean over the query heads of a kv group
    criterion: str | None = None  # in folders scored with several criteria, the one compared (default: their `score`)
    n_boot: int = 1000
    alpha: float = 0.05
    seed: int = 0

    def check(self) -> None:
        if self.view not in ("query", "kv") or self.kv_agg not in ("max", "mean"):
            raise NeedleworkError(f"bad view {self.view!r} / kv_agg {self.kv_agg!r}", "use --view query|kv and --kv-agg max|mean")
        if self.top is not None and self.top < 1:
            raise NeedleworkError("--top must be >= 1", "pass a positive number of heads")
