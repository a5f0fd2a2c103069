"""`needlework generate`: synthetic examples of any task x variant, fitted to an exact token length
with the gold document(s) at a chosen depth.

Fitting is cheap on purpose: every haystack document's token count is computed once per
tokenizer (one batch call), an example takes whole documents while they fit and cuts one
("elastic") document to the remainder, then renders once to measure. Token merges at document
borders make the estimate a few tokens off; the budget is corrected by the measured difference
and the example re-rendered (usually once more).

Depth (`--depth`): the fraction of the haystack's tokens (every non-gold document) that precedes
the gold document; with several gold documents, the mean over them (they are spread around the
target). The achieved value is `meta["depth_frac"]`; `meta["needle_depth"]` is the mean needle
token position over the prompt length, for reference.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from needlework.data import haystack as hs
from needlework.data.phrasings import FILLER_SENTENCES
from needlework.data.records import Document, Needle, Record, validate_record
from needlework.data.render import answer_text, check_max_tokens, length_ceiling, render, resolve_chat
from needlework.data.tasks import BUILDERS, Draft, Piece, TaskSpec
from needlework.data.world import World, build_world, check_relations, sample_chain
from needlework.errors import NeedleworkError, OptionError

GENERATOR = "needlework.generate/1"


@dataclass
class GenerateConfig:
    """Options of `needlework generate` (the CLI flags and the YAML keys have these names)."""

    task: str = "mdqa"  # mdqa | musique | summhay | kv
    concept: str = "high"  # high | low | symbolic (kv: symbolic only)
    context: str = "high"  # high | low
    n: int = 100
    length: int = 2048  # target tokens of prompt + answer (+ EOS), within 2% or 32 tokens
    tokenizer: str = "smollm2"  # hub id, local path, or smollm2
    seed: int = 0
    depth: str | float = "random"  # 0..100 (percent of the haystack before the gold docs) or random
    relations: list[str] | None = None  # restrict relation types (the "limited" sets); None: all
    chat: bool | None = False  # count length with the tokenizer's chat template (a study passes its stages' setting; null: if it has one)
    max_tokens: int = 0  # never exceed this many tokens (a study: its task length, so records fit the model); 0: length + tolerance
    haystack: str | None = None  # dir of .txt or JSONL with `text`; default: CPython docs prose
    hops: str | int = "2-4"  # musique: hops per question, "N" or "LO-HI"
    hard_negatives: int = 3  # mdqa: documents stating the same relation of other entities (high context)
    insights: int = 3  # summhay: insights per haystack (high context; low context has 1)
    insight_docs: str | int = "2-3"  # summhay: documents per insight, "N" or "LO-HI"
    kv_pairs: int = 4  # kv: key/value pairs per JSON dictionary
    kv_dicts: int = 3  # kv: dictionaries per example (high context; low context has 1)
    world_size: int = 0  # people in the fictional world; 0: max(400, n)
    writer_docs: int = 200  # haystack documents to request from a writer, when one is given
    meta: dict = field(default_factory=dict)  # extra fields copied into every record's meta


def _span(text: str, name: str, lo: int = 1, hi: int = 64) -> tuple[int, int]:
    try:
        parts = [int(x) for x in str(text).split("-")]
    except ValueError:
        parts = []
    if len(parts) not in (1, 2) or not lo <= parts[0] <= parts[-1] <= hi:
        raise NeedleworkError(f"--{name} {text!r} is not N or LO-HI within {lo}..{hi}", f"e.g. --{name} {lo}-{min(hi, lo + 2)}")
    return parts[0], parts[-1]


def parse_depth(depth: str | float | int) -> float | None:
    """`--depth` as a fraction in [0, 1], or None for random."""
    if str(depth).lower() == "random":
        return None
    try:
        d = float(depth)
    except ValueError:
        d = -1.0
    if not 0 <= d <= 100:
        raise NeedleworkError(f"--depth {depth!r} is not a percentage in 0..100 or 'random'", "e.g. --depth 50 or --depth random")
    return d / 100.0


CONCEPTS = ("high", "low", "symbolic")  # concept expression (SPEC §1)
CONTEXTS = ("high", "low")  # context diversity


def _option(key: str, check, *args):
    """Run one value check; its error names the option (`OptionError.key`), as the study reports it."""
    try:
        return check(*args)
    except OptionError:
        raise
    except NeedleworkError as e:
        raise OptionError(key, e.problem, e.fix) from None


def _check_chains(cfg: GenerateConfig) -> None:
    """musique: the allowed relations must chain `hops` times (tried on a small world of the seed)."""
    hi = _span(cfg.hops, "hops", 1, 6)[1]
    sample_chain(build_world(cfg.seed, 400), hi, check_relations(cfg.relations), random.Random(cfg.seed))


def check_config(cfg: GenerateConfig) -> None:
    """Reject bad options before any work, naming the fix. The one check of generator options: the
    CLI, `generate()` and a study config (on load, per data set) all run it; each error is an
    `OptionError` whose `key` is the offending field."""
    if cfg.task not in BUILDERS:
        raise OptionError("task", f"unknown task {cfg.task!r} (not one of {', '.join(BUILDERS)})", f"use one of {', '.join(BUILDERS)}")
    if cfg.concept not in CONCEPTS:
        raise OptionError(
            "concept",
            f"unknown concept {cfg.concept!r} (not one of {', '.join(CONCEPTS)})",
            "use high, low or symbolic (real data: `needlework load`)",
        )
    if cfg.context not in CONTEXTS:
        raise OptionError(
            "context",
            f"unknown context {cfg.context!r} (not one of {', '.join(CONTEXTS)})",
            "use high or low (real data: `needlework load`)",
        )
    if cfg.task == "kv" and cfg.concept != "symbolic":
        raise OptionError("concept", f"the kv task is symbolic only (got --concept {cfg.concept})", "use --concept symbolic with --task kv")
    if cfg.n < 1 or cfg.length < 1:
        raise OptionError(
            "n" if cfg.n < 1 else "length", f"--n {cfg.n} and --length {cfg.length} must be positive", "e.g. --n 100 --length 2048"
        )
    check_max_tokens(cfg.max_tokens, cfg.length)
    for key, least in (("hard_negatives", 0), ("insights", 0), ("kv_pairs", 1), ("kv_dicts", 1), ("world_size", 0), ("writer_docs", 1)):
        if getattr(cfg, key) < least:
            raise OptionError(key, f"--{key.replace('_', '-')} {getattr(cfg, key)} must be at least {least}", f"give a count >= {least}")
    _option("depth", parse_depth, cfg.depth)
    _option("relations", check_relations, cfg.relations)
    _option("hops", _span, cfg.hops, "hops", 1, 6)
    _option("insight_docs", _span, cfg.insight_docs, "insight-docs", 1, 32)
    if cfg.haystack and cfg.context == "high" and not Path(cfg.haystack).exists():
        raise OptionError("haystack", f"haystack {cfg.haystack} does not exist", "give a folder of .txt files or a .jsonl file")
    if cfg.task == "musique":
        _option("relations", _check_chains, cfg)


class _Haystack:
    """Haystack documents of one source for one tokenizer, with token costs (header included)."""

    def __init__(self, source, tokenizer):
        self.source, self.tok = source, tokenizer
        self.bias, self._errors = 0.0, []  # mean per-document error of the summed token estimate
        n = lambda s: len(tokenizer(s, add_special_tokens=False)["input_ids"])  # noqa: E731
        # what a document costs beyond its text (and title): "Document [12] (Title: ...) " + "\n"
        self.header = n("Document [12] (Title: ) \n") if source.titled else n("Document [12] \n")
        if isinstance(source, hs.TextPool):
            self.counts = source.counts(tokenizer)

    def learn(self, per_doc_error: float) -> None:
        self._errors.append(per_doc_error)
        self.bias = float(np.mean(self._errors[-200:]))

    def stream(self, rng: random.Random):
        """Yield (key, cost): pool documents without replacement, or filler sizes."""
        if isinstance(self.source, hs.TextPool):
            for i in self.source.stream(rng):
                yield i, int(self.counts.n_tokens[i] + self.counts.n_title[i]) + self.header
        else:
            while True:
                k = rng.randint(*self.source.sizes)
                yield k, int(self.source.cum_tokens(self.tok, k)[k]) + self.header

    def piece(self, key: int, n_tokens: int | None = None) -> Piece:
        """The document `key`, whole or cut to about n_tokens of text."""
        if isinstance(self.source, hs.TextPool):
            d = self.source.docs[key]
            text = d.text if n_tokens is None else self.source.truncate(key, n_tokens, self.tok)
            return Piece(title=d.title, text=text)
        k = key if n_tokens is None else min(key, self.source.sentences_within(n_tokens, self.tok))
        return Piece(title="", text=self.source.text(max(k, 1)))

    def cost(self, piece: Piece) -> int:
        ids = self.tok([piece.title or "", piece.text], add_special_tokens=False)["input_ids"]
        return len(ids[0]) + len(ids[1]) + self.header


def _positions(cum: np.ndarray, targets: list[float]) -> list[int]:
    """Insertion index (0..len) whose preceding haystack fraction is closest to each target."""
    total = cum[-1]
    if total <= 0:
        return [0 for _ in targets]
    return [int(np.argmin(np.abs(cum / total - t))) for t in targets]


def _assemble(
    draft: Draft,
    hay: list[tuple[Piece, int]],
    neg_costs: list[int],
    neg_u: list[float],
    depth: float,
    rec_id: str,
    task: str,
    concept: str,
    context: str,
) -> Record:
    """Order documents (haystack, negatives, gold at the depth) and build the record."""
    items = list(hay)
    for p, c, u in zip(draft.negatives, neg_costs, neg_u):
        items.insert(round(u * len(items)), (p, c))
    cum = np.concatenate([[0], np.cumsum([c for _p, c in items])]).astype(float)
    m = len(draft.gold)
    half = draft.gold_spread * (m - 1) / 2
    centre = min(max(depth, half), 1 - half) if half < 0.5 else 0.5
    targets = [centre + (k - (m - 1) / 2) * draft.gold_spread for k in range(m)]
    pos = _positions(cum, targets)
    docs: list[Piece] = []
    gold_at: list[int] = [0] * m
    for i in range(len(items) + 1):
        for k in range(m):
            if pos[k] == i:
                gold_at[k] = len(docs)
                docs.append(draft.gold[k])
        if i < len(items):
            docs.append(items[i][0])
    needles, sentences = [], []
    for k, j in enumerate(gold_at):
        needles += [Needle(doc=j, start=a, end=b, role=draft.gold[k].role) for a, b in draft.gold[k].needles]
        sentences += [[j, a, b] for a, b in draft.gold[k].sentences]
    documents = [Document(id=f"d{i + 1}", title=p.title, text=p.text) for i, p in enumerate(docs)]
    meta = dict(draft.meta)
    meta["depth_frac"] = round(float(np.mean([cum[p] / cum[-1] for p in pos])) if cum[-1] > 0 else 0.0, 4)
    meta["needle_sentences"] = sentences
    if task == "musique":
        order = meta["hop_doc_order"]
        meta["hops"] = [dict(h) for h in meta["hops"]]
        for k, hop in enumerate(order):
            meta["hops"][hop]["doc"] = gold_at[k]
    rec = Record(
        id=rec_id,
        task=task,
        concept=concept,
        context=context,
        documents=documents,
        question=draft.question,
        answers=list(draft.answers),
        needles=needles,
        gold_docs=sorted(gold_at),
        meta=meta,
    )
    if task == "summhay":
        rec.citations = [documents[j].id for j in sorted(gold_at)]
        rec.answers = [answer_text(rec)]
    return rec


def _fit(draft: Draft, hay: _Haystack, tokenizer, cfg: GenerateConfig, rng: random.Random, depth: float, rec_id: str) -> tuple[Record, int]:
    """Add/trim haystack until the rendered example has cfg.length tokens; returns (record, n_tokens)."""
    target = cfg.length
    tol = max(round(0.02 * target), 32)  # the contract: within 2% or 32 tokens
    exact = max(4, round(0.002 * target))  # what we aim for: 4 tokens at 2K, 16 at 8K
    ceiling = length_ceiling(target, tol, cfg.max_tokens)  # no example longer than this
    aim = min(target, ceiling - exact)  # below a ceiling at the target, so that the aim's error stays under it
    neg_costs = [hay.cost(p) for p in draft.negatives]
    neg_u = [rng.random() for _ in draft.negatives]
    elastic_u = rng.random()

    def build(hay_items):
        rec = _assemble(draft, hay_items, neg_costs, neg_u, depth, rec_id, cfg.task, cfg.concept, cfg.context)
        return rec, render(rec, tokenizer, chat=cfg.chat)

    rec, r0 = build([])
    n0 = r0.n_tokens
    if n0 > ceiling:
        raise NeedleworkError(
            f"--length {target} is too short for {cfg.task} ({cfg.concept}/{cfg.context}): the instruction, question, "
            f"answer and needle documents alone take {n0} tokens",
            f"use --length {int(n0 * 1.25) + 32} or more (or fewer --hard-negatives/--insights/--kv-dicts)",
        )
    stream, drawn = hay.stream(rng), []
    budget, best = aim - n0, (abs(n0 - aim), rec, r0)
    for attempt in range(8):
        items, used, i = [], 0.0, 0
        while True:
            if i == len(drawn):
                nxt = next(stream, None)
                if nxt is None:
                    raise NeedleworkError(
                        f"--length {target} needs about {budget} haystack tokens but the haystack "
                        f"({hay.source.name}) has only {int(used)} left for this example",
                        "use a shorter --length, or --haystack PATH with more text",
                    )
                drawn.append(nxt)
            key, cost = drawn[i]
            if used + cost + hay.bias > budget:
                break
            items.append((hay.piece(key), cost))
            used += cost + hay.bias  # bias: learned per-document error of summed counts (border merges)
            i += 1
        rest = int(budget - used - hay.bias) - (cost - _text_cost(hay, key, cost))
        if rest >= 4:  # the elastic document: the next one, cut to the remainder
            piece = hay.piece(key, rest)
            items.insert(round(elastic_u * len(items)), (piece, hay.cost(piece)))
        rec, r = build(items)
        diff = r.n_tokens - aim
        if attempt == 0 and items:  # learn the estimate's per-document error from this render
            hay.learn((r.n_tokens - n0 - sum(c for _p, c in items)) / len(items))
        if abs(diff) < best[0] and r.n_tokens <= ceiling:
            best = (abs(diff), rec, r)
        if abs(diff) <= exact or (attempt >= 2 and best[0] <= 4 * exact):  # exact enough; stop re-rendering
            break
        budget -= diff
    _, rec, r = best
    if abs(r.n_tokens - target) > tol or r.n_tokens > ceiling:
        raise NeedleworkError(
            f"could not fit example {rec_id} to {target} tokens, at most {ceiling} (got {r.n_tokens})",
            "use a larger --length; report this if it persists",
        )
    starts = [s[0] for s in r.needle_spans if s is not None]
    rec.meta["needle_depth"] = round(float(np.mean(starts)) / r.prompt_len, 4) if starts else None
    return rec, r.n_tokens


def _text_cost(hay: _Haystack, key: int, cost: int) -> int:
    """Tokens of a document's text alone (its cost minus header and title)."""
    if isinstance(hay.source, hs.TextPool):
        return int(hay.counts.n_tokens[key])
    return cost - hay.header


def make_source(cfg: GenerateConfig, writer=None):
    """The context source of a config: filler (low), a writer, a --haystack path, or CPython docs."""
    if cfg.context == "low":
        return hs.FillerPool()
    if writer is not None:
        return hs.writer_pool(writer, cfg.writer_docs, cfg.seed)
    if cfg.haystack:
        return hs.path_pool(cfg.haystack)
    return hs.python_docs_pool()


def make_world(cfg: GenerateConfig, source) -> World:
    """The config's fictional world; invented names avoid every word of the haystack and filler."""
    banned = hs.python_docs_pool().vocabulary() | {w.lower() for w in " ".join(FILLER_SENTENCES).replace(".", "").split()}
    if isinstance(source, hs.TextPool):
        banned |= source.vocabulary()
    return build_world(cfg.seed, cfg.world_size or max(400, cfg.n), banned=banned)


def generate(cfg: GenerateConfig, tokenizer=None, writer=None) -> list[Record]:
    """Generate `cfg.n` synthetic records of one task x variant, each exactly `cfg.length` tokens.

    Args:
        cfg: the options (see GenerateConfig).
        tokenizer: an already loaded fast tokenizer (else loaded from cfg.tokenizer).
        writer: optional LLM writer (`write_documents(prompts) -> texts`) supplying haystack documents.

    Returns:
        The records, valid under `validate_record`, in a seeded, reproducible order.

    Raises:
        NeedleworkError: bad options, unknown tokenizer, or a length the material cannot reach.
    """
    check_config(cfg)
    if tokenizer is None:
        from needlework.models.load import load_tokenizer

        tokenizer = load_tokenizer(cfg.tokenizer)
    cfg = replace(cfg, chat=resolve_chat(cfg.chat, tokenizer))
    if not getattr(tokenizer, "is_fast", False):
        raise NeedleworkError(
            f"tokenizer {cfg.tokenizer!r} is not a fast tokenizer (no character offsets)",
            "use a tokenizer with a tokenizer.json (tokenizers library)",
        )
    source = make_source(cfg, writer)
    world = make_world(cfg, source)
    spec = TaskSpec(
        concept=cfg.concept,
        context=cfg.context,
        world=world,
        source=source,
        relations=check_relations(cfg.relations),
        hops=_span(cfg.hops, "hops", 1, 6),
        hard_negatives=cfg.hard_negatives,
        insights=max(cfg.insights, 1),
        insight_docs=_span(cfg.insight_docs, "insight-docs", 1, 32),
        kv_pairs=cfg.kv_pairs,
        kv_dicts=cfg.kv_dicts,
    )
    hay = _Haystack(source, tokenizer)
    depth_fixed = parse_depth(cfg.depth)
    records = []
    for i in tqdm(range(cfg.n), desc=f"generate {cfg.task} {cfg.concept}/{cfg.context}", disable=cfg.n < 50, leave=True):
        rng = random.Random(f"{cfg.seed}:{cfg.task}:{cfg.concept}:{cfg.context}:{i}")
        depth = rng.random() if depth_fixed is None else depth_fixed
        draft = BUILDERS[cfg.task](spec, rng)
        rec_id = f"{cfg.task}-{cfg.concept}-{cfg.context}-s{cfg.seed}-{i:05d}"
        rec, n_tokens = _fit(draft, hay, tokenizer, cfg, rng, depth, rec_id)
        rec.meta.update(
            {
                "generator": GENERATOR,
                "seed": cfg.seed,
                "index": i,
                "tokenizer": cfg.tokenizer,
                "haystack": source.name,
                "target_length": cfg.length,
                "n_tokens": n_tokens,
                "chat": cfg.chat,
                "depth_target": round(depth, 4),
                "relations_allowed": spec.relations,
                **cfg.meta,
            }
        )
        problems = validate_record(rec)
        if problems:  # a generator bug, not user input
            raise RuntimeError(f"generated an invalid record {rec_id}: {problems}")
        records.append(rec)
    return records


def config_dict(cfg: GenerateConfig) -> dict:
    return asdict(cfg)
