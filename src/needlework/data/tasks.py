"""Task builders: from the world, a concept level and a context source to a `Draft` of an example
(question, answers, gold documents with needle spans, hard negatives). Length fitting and depth
placement happen afterwards in `generate.py`, the same way for every task.

- mdqa: one gold document; hard negatives state the same relation of other entities (high context).
- musique: a 2-4 hop chain; one gold document per hop; composed question; hop decomposition in meta.
- summhay: insights that each recur verbatim in several documents; the question gives one.
- kv: Xiong et al.-style JSON dictionaries of random UUID-like keys and values (symbolic only).
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from needlework.data import phrasings as ph
from needlework.data.haystack import insert_sentences
from needlework.data.world import World, sample_chain

# Answer tokens a task's evaluation generates at most (evaluate's max_new_tokens: None); the study
# also leaves this room after an evaluation prompt when it fits the evaluation set to a length.
DEFAULT_MAX_NEW_TOKENS = {"mdqa": 32, "musique": 32, "kv": 32, "summhay": 64}


def answer_budget(task: str, max_new_tokens: int | None = None) -> int:
    """Answer tokens an evaluation of `task` generates at most: `max_new_tokens`, else the task's default."""
    return max_new_tokens or DEFAULT_MAX_NEW_TOKENS.get(task, 32)


@dataclass
class Piece:
    """A document under construction. `needles`/`sentences` are char spans inside `text`."""

    title: str
    text: str
    needles: list[tuple[int, int]] = field(default_factory=list)
    sentences: list[tuple[int, int]] = field(default_factory=list)  # inserted needle sentences
    role: str = "answer"  # role of the needles: answer, or evidence (bridge hop answers, insight sentences)


@dataclass
class Draft:
    question: str
    answers: list[str]
    gold: list[Piece]
    negatives: list[Piece]
    meta: dict[str, Any]
    gold_spread: float = 0.0  # spacing between gold documents, as a fraction of the haystack


@dataclass
class TaskSpec:
    """What a task builder needs: the variant, the world, a source of carrier documents, options."""

    concept: str
    context: str
    world: World
    source: Any  # TextPool or FillerPool: gives carrier documents
    relations: list[str]
    hops: tuple[int, int] = (2, 4)
    hard_negatives: int = 3
    insights: int = 4
    insight_docs: tuple[int, int] = (2, 4)
    kv_pairs: int = 4
    kv_dicts: int = 3


def _names(spec: TaskSpec, s: int, r: str, o: int) -> tuple[str, str, str]:
    """Surface forms of a fact: names for high/low concept, random ids for symbolic."""
    w = spec.world
    if spec.concept == "symbolic":
        return w.entities[s].symbol, w.relation_symbols[r], w.entities[o].symbol
    return w.entities[s].name, r, w.entities[o].name


def _fact_sentence(spec: TaskSpec, s: int, r: str, rng: random.Random, needle: bool = True) -> tuple[ph.Sentence, str]:
    o = spec.world.object_of(r, s)
    sn, rn, on = _names(spec, s, r, o)
    return ph.express(rn, sn, on, spec.concept, rng, needle), on


def _doc_about(spec: TaskSpec, s: int, sentences: list[ph.Sentence], rng: random.Random, avoid: set[str] = frozenset()) -> Piece:
    """A document carrying `sentences`.

    High concept in high context: a short article about entity s (title = its name) in which the
    sentences sit among other facts and neutral remarks about it. Otherwise: a carrier document
    from the context source (real prose or filler) with the sentences inserted between its sentences.
    """
    if spec.concept == "high" and spec.context == "high":
        w = spec.world
        ent = w.entities[s]
        others = [r for r in w.relations_of(s) if r not in avoid]
        rng.shuffle(others)
        body = [_fact_sentence(spec, s, r, rng, needle=False)[0] for r in others[: rng.randint(1, 2)]]
        body += [ph.generic(ent.kind, ent.name, rng) for _ in range(rng.randint(1, 2))]
        order = list(sentences) + body
        rng.shuffle(order)
        text, pos, needles, spans = "", 0, [], []
        for sent in order:
            if text:
                text += " "
                pos += 1
            if any(sent is x for x in sentences):
                spans.append((pos, pos + len(sent.text)))
                needles.extend((pos + a, pos + b) for a, b in sent.needles)
            text += sent.text
            pos += len(sent.text)
        return Piece(title=ent.name, text=text, needles=needles, sentences=spans)
    carrier = spec.source.carrier(rng)
    text, spans, needles = insert_sentences(carrier.text, sentences, rng)
    return Piece(title=carrier.title, text=text, needles=needles, sentences=spans)


def _negatives(spec: TaskSpec, r: str, exclude: set[int], k: int, rng: random.Random) -> list[Piece]:
    """Hard negatives (high context only): the same relation stated for other entities."""
    if spec.context != "high" or k <= 0:
        return []
    pool = [s for s in spec.world.subjects(r) if s not in exclude]
    out = []
    for s in rng.sample(pool, min(k, len(pool))):
        sent, _ = _fact_sentence(spec, s, r, rng, needle=False)
        out.append(_doc_about(spec, s, [sent], rng))
    return out


def build_mdqa(spec: TaskSpec, rng: random.Random) -> Draft:
    r = rng.choice(spec.relations)
    s = rng.choice(spec.world.subjects(r))
    sent, answer = _fact_sentence(spec, s, r, rng)
    sn, rn, _ = _names(spec, s, r, spec.world.object_of(r, s))
    gold = _doc_about(spec, s, [sent], rng, avoid={r})
    negs = _negatives(spec, r, {s}, spec.hard_negatives, rng)
    meta = {"relation": r, "subject": sn, "template": sent.template}
    return Draft(question=ph.question(rn, sn, spec.concept), answers=[answer], gold=[gold], negatives=negs, meta=meta)


def build_musique(spec: TaskSpec, rng: random.Random) -> Draft:
    h = rng.randint(*spec.hops)
    chain = sample_chain(spec.world, h, spec.relations, rng)
    gold, hops, rel_names = [], [], []
    for k, (s, r, o) in enumerate(chain):
        sent, answer = _fact_sentence(spec, s, r, rng)
        sn, rn, _ = _names(spec, s, r, o)
        rel_names.append(rn)
        gold.append(_doc_about(spec, s, [sent], rng, avoid={r}))
        gold[-1].role = "answer" if k == len(chain) - 1 else "evidence"  # bridge hops: evidence only
        hops.append({"relation": r, "subject": sn, "question": ph.question(rn, sn, spec.concept), "answer": answer})
    start = hops[0]["subject"]
    negs: list[Piece] = []
    for _s, r, _o in chain:
        negs += _negatives(spec, r, {c[0] for c in chain}, 1, rng)
    order = list(range(h))
    rng.shuffle(order)  # hop documents do not appear in chain order
    meta = {
        "hops": hops,
        "hop_answers": [x["answer"] for x in hops[:-1]],
        "n_hops": h,
        "relations": [c[1] for c in chain],
        "hop_doc_order": order,
    }
    return Draft(
        question=ph.composed_question(rel_names, start, spec.concept),
        answers=[hops[-1]["answer"]],
        gold=[gold[i] for i in order],
        negatives=negs,
        meta=meta,
        gold_spread=0.1,
    )


def build_summhay(spec: TaskSpec, rng: random.Random) -> Draft:
    n_insights = spec.insights if spec.context == "high" else 1  # low context: nothing but filler elsewhere
    facts: list[tuple[int, str]] = []
    seen: set[tuple[int, str]] = set()
    while len(facts) < n_insights:
        r = rng.choice(spec.relations)
        s = rng.choice(spec.world.subjects(r))
        if (s, r) not in seen:
            seen.add((s, r))
            facts.append((s, r))
    groups: list[list[Piece]] = []
    insights: list[str] = []
    for s, r in facts:
        sent, _ = _fact_sentence(spec, s, r, rng, needle=False)
        sent = ph.Sentence(text=sent.text, needles=[(0, len(sent.text))], template=sent.template)
        insights.append(sent.text)
        k = rng.randint(*spec.insight_docs)
        docs = []
        for _ in range(k):
            carrier = spec.source.carrier(rng)  # insight documents are ordinary haystack documents
            text, spans, needles = insert_sentences(carrier.text, [sent], rng)
            docs.append(Piece(title=carrier.title, text=text, needles=needles, sentences=spans, role="evidence"))
        groups.append(docs)
    meta = {"insight": insights[0], "other_insights": insights[1:], "relation": facts[0][1]}
    negs = [p for g in groups[1:] for p in g]
    return Draft(question=insights[0], answers=[""], gold=groups[0], negatives=negs, meta=meta, gold_spread=0.2)


def _uuid(rng: random.Random) -> str:
    h = f"{rng.getrandbits(128):032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _kv_dict(rng: random.Random, n: int, query: int | None) -> tuple[ph.Sentence, str, str]:
    """A JSON object of n random key/value pairs; the needle is the value of pair `query`."""
    pairs = [(_uuid(rng), _uuid(rng)) for _ in range(n)]
    text, needles = "{", []
    for i, (k, v) in enumerate(pairs):
        if i:
            text += ", "
        text += json.dumps(k) + ": "
        if i == query:
            needles.append((len(text) + 1, len(text) + 1 + len(v)))
        text += json.dumps(v)
    text += "}"
    key, value = pairs[query if query is not None else 0]
    return ph.Sentence(text=text, needles=needles, template="kv-json"), key, value


def build_kv(spec: TaskSpec, rng: random.Random) -> Draft:
    q = rng.randrange(spec.kv_pairs)
    sent, key, value = _kv_dict(rng, spec.kv_pairs, q)
    carrier = spec.source.carrier(rng)
    text, spans, needles = insert_sentences(carrier.text, [sent], rng)
    gold = Piece(title=carrier.title, text=text, needles=needles, sentences=spans)
    negs = []
    if spec.context == "high":  # other dictionaries: more keys to tell apart
        for _ in range(max(spec.kv_dicts - 1, 0)):
            other, _k, _v = _kv_dict(rng, spec.kv_pairs, None)
            c = spec.source.carrier(rng)
            t, _s, _n = insert_sentences(c.text, [other], rng)
            negs.append(Piece(title=c.title, text=t))
    return Draft(question=json.dumps(key), answers=[value], gold=[gold], negatives=negs, meta={"key": key, "n_pairs": spec.kv_pairs})


BUILDERS: dict[str, Callable[[TaskSpec, random.Random], Draft]] = {
    "mdqa": build_mdqa,
    "musique": build_musique,
    "summhay": build_summhay,
    "kv": build_kv,
}
