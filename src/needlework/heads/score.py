"""Head scores of SPEC §2 (retrieval, insight, attention mass), exact and fast.

Every attention layer runs through the instrumented fast backend (`models.instrument`): outputs
come from SDPA, and only the query rows that emit answer tokens get their pre-softmax logits
computed on the side (argmax key, mass on the needle span). Teacher mode is ONE forward of the
decoder trunk over prompt + gold answer (no LM logits); generate mode is greedy decoding with a
KV cache (prefill probed on the last prompt row, then one probed row per step).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from needlework.errors import NeedleworkError
from needlework.evaluate.metrics import rouge1_recall  # the generate-mode success gate (Wu et al.'s ROUGE-1)
from needlework.heads.config import MATCHES, MODES, SCORES, SPANS, ScoreConfig  # noqa: F401  (re-exported)
from needlework.models.batching import for_batches
from needlework.models.decode import StopWhen, decode_loop, eos_token_ids
from needlework.models.instrument import RowProbe, instrumented, set_probe
from needlework.models.sites import attention_modules, cache_of, model_device, model_shape, with_cache


@dataclass
class Example:
    """One example at token level. `span` = S (sorted prompt positions). Teacher mode scores
    `answer_ids` (gold, final EOS excluded); generate mode decodes from `prompt_ids`."""

    id: str
    prompt_ids: list[int]
    answer_ids: list[int]
    span: list[int]
    answer_text: str = ""
    n_citing_docs: int = 0  # gold (SummHay: cited) documents
    n_spans_located: int = 0  # of them, those holding a span of the scored role(s) that rendered to tokens


@dataclass
class ScoreResult:
    """per_example: one row per (example, layer, head) with columns example_id, layer, head, hits,
    n_steps, span_tokens, score, success, kept, answer, n_spans_located, n_citing_docs. heads:
    layer, head, mean, std, n (kept examples only). skipped: {example id: reason}. coverage:
    located/total citing documents over every record (skipped ones included), see `span_coverage`."""

    per_example: pd.DataFrame
    heads: pd.DataFrame
    skipped: dict[str, str] = field(default_factory=dict)
    n_examples: int = 0
    coverage: dict = field(default_factory=dict)


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


def prepare_examples(
    records, tokenizer, cfg: ScoreConfig, coverage: dict[str, tuple[int, int]] | None = None
) -> tuple[list[Example], dict[str, str]]:
    """Render records into Examples; returns (examples, skipped {id: reason}). S is the token
    positions of the needles whose role `cfg.span_roles` picks (retrieval: answer spans only). A
    record is skipped (never scored as zero) when it has no needle of those roles, when none of
    them is found after rendering, or, for the retrieval score, when no answer token occurs in S
    (the answer is absent from the context). `coverage`, when given, is filled with
    {record id: (located, citing documents)} for every record."""
    from needlework.data.render import render

    cfg = cfg.resolved(tokenizer)
    chat = cfg.chat
    canon = Canon(cfg.match, tokenizer.decode)
    examples, skipped = [], {}
    for rec in records:
        r = render(rec, tokenizer, chat=chat)
        all_roles = [r.role(i) for i in range(len(r.needle_spans))]
        roles = cfg.span_roles("evidence" in all_roles)
        span = r.needle_positions(roles)
        located, citing = _located(rec, r, roles)
        if coverage is not None:
            coverage[rec.id] = (located, citing)
        ans = list(r.answer_ids)
        if ans and tokenizer.eos_token_id is not None and ans[-1] == tokenizer.eos_token_id:
            ans = ans[:-1]  # the final EOS is no copy target
        if not any(x in roles for x in all_roles):
            skipped[rec.id] = f"no needle span of role {'/'.join(roles)}"
            continue
        if not span:
            skipped[rec.id] = "needle span not found after rendering"
            continue
        if not ans:
            skipped[rec.id] = "empty answer"
            continue
        if cfg.score == "retrieval" and not set(canon(ans)) & set(canon(r.input_ids[i] for i in span)):
            skipped[rec.id] = "answer tokens absent from the needle span"
            continue
        examples.append(Example(rec.id, r.prompt_ids, ans, span, rec.answers[0], citing, located))
    return examples, skipped


# ---------------------------------------------------------------------------- scoring core


def _decoder(model):
    """The decoder trunk (no LM head): teacher mode never needs the vocabulary logits."""
    dec = model.get_decoder() if hasattr(model, "get_decoder") else None
    return dec if dec is not None else model.model


def _tally(cfg, argmax, mass, span_mask, key_canon, emit_canon, n_steps) -> tuple[np.ndarray, np.ndarray]:
    """Per-head hits and score for one example.

    argmax: (L, h, r) absolute key positions (r >= n_steps, extra rows ignored); mass: (L, h, r);
    span_mask: (k,) bool; key_canon: (k,) canonical token of each key; emit_canon: (n_steps,).
    Returns (hits, score), each (L, h)."""
    if cfg.score == "mass":
        m = mass[..., :n_steps]
        total = m.sum(-1)
        return total.numpy(), (total / max(n_steps, 1)).numpy()
    j = argmax[..., :n_steps]  # L, h, s
    in_span = span_mask[j]
    if cfg.score == "insight":
        hits = in_span.sum(-1)
        return hits.numpy(), (hits.float() / max(n_steps, 1)).numpy()
    copies = in_span & (key_canon[j] == emit_canon[None, None, :])  # token(j) == a_k
    hits = copies.sum(-1)
    n_span = int(span_mask.sum())
    return hits.numpy(), (hits.float() / n_span).numpy()


def _stack(probe: RowProbe, n_layers: int, what: str) -> torch.Tensor:
    d = probe.argmax if what == "argmax" else probe.mass
    return torch.stack([d[l] for l in range(n_layers)]).cpu()  # L, b, h, r


@torch.no_grad()
def _teacher_batch(model, batch: list[Example], cfg, canon, pad_id) -> list[dict]:
    """One forward over prompt + gold answer, right-padded; probe rows p-1 for answer positions p."""
    dev, L = model_device(model), model_shape(model).n_layers
    seqs = [e.prompt_ids + e.answer_ids for e in batch]
    n = max(map(len, seqs))
    ids = torch.full((len(batch), n), pad_id, dtype=torch.long)
    mask = torch.zeros(len(batch), n, dtype=torch.long)
    r = max(len(e.answer_ids) for e in batch)
    rows = torch.full((len(batch), r), -1, dtype=torch.long)
    span = torch.zeros(len(batch), n, dtype=torch.bool)
    for i, (e, s) in enumerate(zip(batch, seqs)):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
        p0 = len(e.prompt_ids)
        rows[i, : len(e.answer_ids)] = torch.arange(p0 - 1, p0 - 1 + len(e.answer_ids))  # query at t predicts t+1
        span[i, e.span] = True
    probe = RowProbe(rows=rows.to(dev), span_mask=span.to(dev) if cfg.score == "mass" else None, want_argmax=cfg.score != "mass")
    set_probe(model, probe)
    # no mask when nothing is padded: SDPA then takes its causal (flash / memory-efficient) path
    am = None if bool(mask.all()) else mask.to(dev)
    _decoder(model)(input_ids=ids.to(dev), attention_mask=am, use_cache=False)
    set_probe(model, None)
    am_ = _stack(probe, L, "argmax") if probe.want_argmax else None
    ms_ = _stack(probe, L, "mass") if cfg.score == "mass" else None
    out = []
    for i, e in enumerate(batch):
        key_canon = torch.tensor(canon(ids[i].tolist()))
        emit = torch.tensor(canon(e.answer_ids))
        hits, score = _tally(
            cfg, am_[:, i] if am_ is not None else None, ms_[:, i] if ms_ is not None else None, span[i], key_canon, emit, len(e.answer_ids)
        )
        out.append(dict(hits=hits, score=score, n_steps=len(e.answer_ids), success=None, answer=e.answer_text))
    return out


@torch.no_grad()
def greedy_decode(
    model,
    prompts: list[list[int]],
    max_new_tokens: int,
    pad_id: int,
    is_stop: Callable[[int, int], bool],
    probe: RowProbe | None = None,
    on_step=None,
) -> list[list[int]]:
    """Greedy decoding of left-padded prompts with a KV cache (`models.decode.decode_loop`);
    returns each row's emitted tokens up to (excluding) its stop token. With `probe`, the prefill
    probes only the last prompt row and each step its single row; `on_step(k)` runs after the
    forward that emits token k."""
    b, P = len(prompts), max(map(len, prompts))
    dev = model_device(model)
    cache = [None]

    def step(ids, mask, pos, k):
        if probe is not None:
            if k == 0:
                probe.rows, probe.seq_len = torch.full((b, 1), P - 1, dtype=torch.long, device=dev), P
            else:
                probe.rows, probe.seq_len = None, P + k  # one query row; absolute keys for window caches
        out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1, **with_cache(model, cache[0]))
        cache[0] = cache_of(out)
        if on_step is not None:
            on_step(k)
        return out.logits[:, -1]

    if probe is not None:
        set_probe(model, probe)
    try:
        return decode_loop(step, prompts, pad_id, dev, StopWhen(b, max_new_tokens, is_stop))
    finally:
        if probe is not None:
            set_probe(model, None)


def _generate_batch(model, batch: list[Example], cfg, canon, pad_id, is_stop, decode) -> list[dict]:
    L = model_shape(model).n_layers
    P = max(len(e.prompt_ids) for e in batch)
    span = torch.zeros(len(batch), P, dtype=torch.bool)  # padded coordinates; later keys are outside S
    for i, e in enumerate(batch):
        span[i, [P - len(e.prompt_ids) + j for j in e.span]] = True
    probe = RowProbe(span_mask=span.to(model_device(model)) if cfg.score == "mass" else None, want_argmax=cfg.score != "mass")
    steps_arg, steps_mass = [], []

    def on_step(_k):
        if probe.want_argmax:
            steps_arg.append(_stack(probe, L, "argmax"))  # L, b, h, 1
        if cfg.score == "mass":
            steps_mass.append(_stack(probe, L, "mass"))
        probe.clear()

    emitted = greedy_decode(model, [e.prompt_ids for e in batch], cfg.max_new_tokens, pad_id, is_stop, probe, on_step)
    am_ = torch.cat(steps_arg, -1) if steps_arg else None  # L, b, h, steps
    ms_ = torch.cat(steps_mass, -1) if steps_mass else None
    out = []
    for i, e in enumerate(batch):
        pad = P - len(e.prompt_ids)
        seq = [pad_id] * pad + e.prompt_ids + emitted[i]
        key_canon = torch.tensor(canon(seq))
        emit = torch.tensor(canon(emitted[i]), dtype=torch.long)
        n = len(emitted[i])
        span_full = torch.nn.functional.pad(span[i], (0, len(seq) - P))
        hits, score = _tally(
            cfg, am_[:, i] if am_ is not None else None, ms_[:, i] if ms_ is not None else None, span_full, key_canon, emit, n
        )
        text = decode(emitted[i]) if decode else " ".join(map(str, emitted[i]))
        ok = rouge1_recall(e.answer_text, text) > cfg.success_threshold if decode else None
        out.append(dict(hits=hits, score=score, n_steps=n, success=ok, answer=text))
    return out


def stop_rule(tokenizer, cfg: ScoreConfig, model=None) -> Callable[[int, int], bool]:
    """is_stop(token, n_emitted): EOS (the tokenizer's, and with `model` every EOS id its generation
    config lists, as evaluation stops: Llama-3-Instruct ends turns with <|eot_id|>), or a newline
    token once something was emitted (a leading newline is not an answer's end)."""
    eos_ids = eos_token_ids(model, tokenizer)
    cache: dict[int, bool] = {}

    def is_stop(t: int, n: int) -> bool:
        if t in eos_ids:
            return True
        if not cfg.stop_on_newline or n == 0:
            return False
        if t not in cache:
            cache[t] = "\n" in tokenizer.decode([t])
        return cache[t]

    return is_stop


def score_examples(
    model,
    examples: list[Example],
    cfg: ScoreConfig,
    *,
    pad_id: int = 0,
    decode: Callable[[list[int]], str] | None = None,
    is_stop: Callable[[int, int], bool] | None = None,
) -> pd.DataFrame:
    """Score token-level examples; the per-example long table (see ScoreResult).

    Examples are batched in order of length (less padding), `cfg.batch_size` at a time (`auto`:
    sized to the GPU's memory, models.batching).
    """
    cfg.check()
    attention_modules(model)  # a clear error when attention cannot be instrumented
    shape = model_shape(model)
    canon = Canon(cfg.match or "id", decode)  # unresolved (None): the examples' rendering is unknown here
    is_stop = is_stop or (lambda t, n: False)
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].prompt_ids) + len(examples[i].answer_ids))
    results: dict[int, dict] = {}
    was_training = model.training
    model.eval()

    def run(idx: list[int]) -> None:
        batch = [examples[i] for i in idx]
        if cfg.mode == "teacher":
            res = _teacher_batch(model, batch, cfg, canon, pad_id)
        else:
            res = _generate_batch(model, batch, cfg, canon, pad_id, is_stop, decode)
        results.update(zip(idx, res))

    bar = tqdm(total=len(order), desc=f"heads {cfg.mode}", unit="ex", leave=False)
    with instrumented(model):
        for_batches(order, cfg.batch_size, run, model_device(model), bar)
    bar.close()
    model.train(was_training)
    L, H = shape.n_layers, shape.n_heads
    layer, head = np.repeat(np.arange(L), H), np.tile(np.arange(H), L)
    frames = []
    for i, e in enumerate(examples):
        r = results[i]
        success = r["success"]
        kept = True if cfg.mode == "teacher" or cfg.keep_failed or success is None else bool(success)
        frames.append(
            pd.DataFrame(
                {
                    "example_id": e.id,
                    "layer": layer,
                    "head": head,
                    "hits": np.asarray(r["hits"], float).ravel(),
                    "n_steps": r["n_steps"],
                    "span_tokens": len(e.span),
                    "score": np.asarray(r["score"], float).ravel(),
                    "success": pd.array([success] * (L * H), dtype="boolean"),
                    "kept": kept,
                    "answer": r["answer"],
                    "n_spans_located": e.n_spans_located,
                    "n_citing_docs": e.n_citing_docs,
                }
            )
        )
    cols = [
        "example_id",
        "layer",
        "head",
        "hits",
        "n_steps",
        "span_tokens",
        "score",
        "success",
        "kept",
        "answer",
        "n_spans_located",
        "n_citing_docs",
    ]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=cols)


def head_table(per_example: pd.DataFrame, shape=None) -> pd.DataFrame:
    """Per-head mean/std/n of the per-example scores over kept examples (all heads listed)."""
    kept = per_example[per_example["kept"].astype(bool)] if "kept" in per_example else per_example
    g = kept.groupby(["layer", "head"])["score"]
    t = pd.DataFrame({"mean": g.mean(), "std": g.std(ddof=0), "n": g.size()}).reset_index()
    if shape is not None:
        full = pd.DataFrame([asdict(h) for h in shape.all_heads()])
        t = full.merge(t, on=["layer", "head"], how="left").fillna({"n": 0})
    return t.astype({"layer": int, "head": int, "n": int})


def score_heads(model, tokenizer, records, cfg: ScoreConfig) -> ScoreResult:
    """Score every attention head of `model` on `records` (SPEC §2).

    Args:
        model: a causal LM (any transformers Llama/Mistral/Qwen/Gemma-style model, or a peft wrap).
        tokenizer: its fast tokenizer (rendering, chat template, stop tokens, loose matching).
        records: needlework Records.
        cfg: mode, score, batching, matching options.
    Returns:
        ScoreResult with the per-example long table, the per-head table and the skipped ids.
    Raises:
        NeedleworkError: bad options, or a model whose attention cannot be instrumented.
    """
    cfg.check()
    cfg = cfg.resolved(tokenizer)  # chat and match decided once, for rendering and matching alike
    attention_modules(model)
    records = list(records)[: cfg.limit] if cfg.limit else list(records)
    located: dict[str, tuple[int, int]] = {}
    examples, skipped = prepare_examples(records, tokenizer, cfg, coverage=located)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    per = score_examples(model, examples, cfg, pad_id=pad_id, decode=tokenizer.decode, is_stop=stop_rule(tokenizer, cfg, model))
    return ScoreResult(per, head_table(per, model_shape(model)), skipped, len(records), span_coverage(located))
