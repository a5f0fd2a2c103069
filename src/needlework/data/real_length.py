"""Lengthen real examples to a target token count with documents drawn from OTHER examples.

Lengths are measured by rendering (`needlework.data.render.render`, answer included) with the
given tokenizer. Whole distractor documents are added while they fit, then the last one is cut at
a token boundary until the rendered length is within max(2% of the target, 32) tokens. Gold
documents keep their relative position (or go to `depth`).

This module sits below `needlework.data.loaders` (which calls `lengthen_all`): it reads the options
through the `LengthOptions` protocol that `loaders.LoadConfig` satisfies, so it never imports loaders.
"""

from __future__ import annotations

import functools
import itertools
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from typing import Protocol

from tqdm import tqdm

from needlework.data.locate import normalize
from needlework.data.records import Document, Record
from needlework.data.render import length_ceiling, render, resolve_chat
from needlework.errors import NeedleworkError

_MAX_ROUNDS = 8


class Skip(Exception):
    """An example that cannot become a valid record; the message is the reason that is counted."""


class LengthOptions(Protocol):
    """The options lengthening reads (`needlework.data.loaders.LoadConfig` has them all)."""

    length: int | None
    tokenizer: str
    seed: int
    depth: float | str | None
    chat: bool | None
    max_tokens: int
    tolerance_frac: float
    tolerance_tokens: int


def _place(rec: Record, gold: list[int], fillers: list[Document], depth: float | None) -> Record:
    """A copy of `rec` whose documents are `fillers` with the gold documents inserted."""
    n_total = len(fillers) + len(gold)
    if depth is None:  # keep each gold document's relative position of the original example
        k = len(rec.documents)
        pos, prev = [], -1
        for i, g in enumerate(gold):
            p = round(g / (k - 1) * (n_total - 1)) if k > 1 else 0
            p = min(max(p, prev + 1), n_total - len(gold) + i)
            pos.append(p)
            prev = p
    else:  # the gold block starts at depth% of the distractors
        start = round(depth / 100 * len(fillers))
        pos = list(range(start, start + len(gold)))
    docs: list[Document] = []
    new_index: dict[int, int] = {}
    it = iter(fillers)
    gi = 0
    for p in range(n_total):
        if gi < len(gold) and pos[gi] == p:
            new_index[gold[gi]] = p
            docs.append(rec.documents[gold[gi]])
            gi += 1
        else:
            docs.append(next(it))
    needles = [replace(n, doc=new_index[n.doc]) for n in rec.needles]  # role kept
    meta = dict(rec.meta)
    if meta.get("unlocated_docs"):  # document indices: follow the documents
        meta["unlocated_docs"] = sorted(new_index[g] for g in meta["unlocated_docs"] if g in new_index)
    return replace(rec, documents=docs, needles=needles, gold_docs=sorted(new_index[g] for g in rec.gold_docs), meta=meta)


def _doc_cost(tok, d: Document, memo: dict) -> int:
    """Approximate tokens a document adds to the prompt (memoised: pool documents recur)."""
    key = (d.title, d.text)
    if key not in memo:
        head = f"Document [10] (Title: {d.title}) " if d.title else "Document [10] "
        memo[key] = len(tok(head + d.text + "\n", add_special_tokens=False)["input_ids"])
    return memo[key]


def _holds(text: str, normalized: list[str]) -> bool:
    """Whether `text` contains any of the normalised strings (case/space-insensitive)."""
    low = text.lower()
    hits = [a for a in normalized if a and a.split(" ", 1)[0] in low]  # cheap prefilter
    return bool(hits) and any(a in normalize(text) for a in hits)


def _cut(tok, text: str, n_tokens: int) -> str:
    """The first `n_tokens` tokens of `text` (cut at a token boundary, via offsets)."""
    if n_tokens <= 0:
        return ""
    offs = tok(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    if n_tokens >= len(offs):
        return text
    return text[: offs[n_tokens - 1][1]]


def _draw(pool: list[tuple[str, Document]], rng: random.Random, group) -> Iterator[Document]:
    """Documents of other groups in random order, without copying or shuffling the whole pool."""
    order = list(range(len(pool))) if len(pool) <= 4096 else None
    if order is not None:
        rng.shuffle(order)
        yield from (pool[i][1] for i in order if pool[i][0] != group)
        return
    seen: set[int] = set()
    misses = 0
    while misses < 1000 and len(seen) < len(pool):
        i = rng.randrange(len(pool))
        if i in seen or pool[i][0] == group:
            misses += 1
            continue
        seen.add(i)
        misses = 0
        yield pool[i][1]


def lengthen(
    rec: Record, pool: list[tuple[str, Document]], tok, cfg: LengthOptions, rng: random.Random, memo: dict | None = None
) -> Record:
    """`rec` lengthened to `cfg.length` tokens with distractors from `pool` ((group, doc) pairs).

    Raises:
        Skip: the gold documents alone are too long, or the pool cannot fill the length.
    """
    target = int(cfg.length)
    tol = max(cfg.tolerance_tokens, int(cfg.tolerance_frac * target))
    ceiling = length_ceiling(target, tol, cfg.max_tokens)  # no example longer than this
    aim = min(target, ceiling - min(tol, 2))  # the rounds below stop within 2 tokens of the aim
    chat = resolve_chat(cfg.chat, tok)
    gold = sorted(set(rec.gold_docs) | {n.doc for n in rec.needles})
    depth = cfg.depth
    if depth == "random":
        depth = rng.uniform(0, 100)
    depth = None if depth is None else float(depth)

    def measure(fillers: list[Document]) -> tuple[Record, int]:
        r = _place(rec, gold, fillers, depth)
        return r, render(r, tok, chat=chat).n_tokens

    _, base = measure([])
    if base > ceiling:
        raise Skip(f"longer than --length {target} with its gold documents alone")
    avoid = [normalize(a) for a in rec.answers if a.strip()] if rec.task != "summhay" else [normalize(rec.question)]
    own = [d for i, d in enumerate(rec.documents) if i not in gold]
    candidates = itertools.chain(own, _draw(pool, rng, rec.meta.get("group")))
    used_ids = {rec.documents[g].id for g in gold}
    fillers: list[Document] = []
    budget = aim - base
    full_text: str | None = None  # untrimmed text of the last filler, when it has been cut
    for d in candidates:
        if d.id in used_ids or _holds(d.text, avoid):
            continue
        cost = _doc_cost(tok, d, memo if memo is not None else {})
        if cost > budget:  # cut this one to fill what is left
            fillers.append(replace(d, text=_cut(tok, d.text, max(budget - 8, 1))))
            full_text = d.text
            used_ids.add(d.id)
            break
        fillers.append(d)
        used_ids.add(d.id)
        budget -= cost
    out, n = measure(fillers)
    for _ in range(_MAX_ROUNDS):
        diff = aim - n
        if abs(diff) <= min(tol, 2) or not fillers:
            break
        last = fillers[-1]
        have = len(tok(last.text, add_special_tokens=False)["input_ids"])
        if diff < 0 and have + diff <= 0:  # drop the last distractor entirely
            fillers.pop()
            full_text = None
        elif diff > 0 and full_text is None:  # nothing cut to regrow: stop (pool exhausted)
            break
        else:
            fillers[-1] = replace(last, text=_cut(tok, full_text or last.text, have + diff))
            full_text = full_text or last.text
        out, n = measure(fillers)
    if abs(target - n) > tol or n > ceiling:
        raise Skip(f"cannot reach --length {target} (got {n} tokens; too few distractor documents in other examples)")
    out.meta.update(
        {
            "n_tokens": n,
            "length": target,
            "tokenizer": cfg.tokenizer,
            "n_added_docs": len(out.documents) - len(rec.documents),
            "depth_frac": round((out.needles[0].doc if out.needles else out.gold_docs[0]) / max(len(out.documents) - 1, 1), 4),
        }
    )
    return out


def _unique_ids(pool: list[tuple[str, Document]]) -> list[tuple[str, Document]]:
    out = []
    for g, d in pool:
        out.append((g, replace(d, id=f"{g}/{d.id}")))
    return out


@functools.lru_cache(maxsize=4)
def _tokenizer(name: str):
    from needlework.models.load import load_tokenizer

    return load_tokenizer(name)


def lengthen_all(records: list[Record], all_records: list[Record], cfg: LengthOptions, skipped: Counter) -> list[Record]:
    """Lengthen every record of `records`, drawing distractors from the documents of `all_records`."""
    if cfg.length is not None and cfg.length <= 0:
        raise NeedleworkError(f"--length {cfg.length} is not a positive token count", "give e.g. --length 4096")
    if cfg.depth not in (None, "random"):
        try:
            d = float(cfg.depth)
        except (TypeError, ValueError):
            d = -1.0
        if not 0 <= d <= 100:
            raise NeedleworkError(f"--depth {cfg.depth!r} is not 0-100 or random", "give e.g. --depth 50 or --depth random")
    tok = _tokenizer(cfg.tokenizer)
    seen: set[tuple[str, str]] = set()
    pool: list[tuple[str, Document]] = []
    for r in all_records:  # SummHay records of one topic share documents: keep each once
        for d in r.documents:
            key = (str(r.meta.get("group")), d.id)
            if key not in seen:
                seen.add(key)
                pool.append((key[0], d))
    pool = _unique_ids(pool)
    out, memo = [], {}
    for r in tqdm(records, desc="lengthen", unit="ex", disable=len(records) < 50):
        rng = random.Random(f"{cfg.seed}-{r.id}")
        try:
            out.append(lengthen(r, pool, tok, cfg, rng, memo))
        except Skip as s:
            skipped[str(s).split(" (got")[0]] += 1
    return out
