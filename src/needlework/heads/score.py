"""Head scores of SPEC §2 (retrieval, insight, attention mass) and issue 14 (query, output), exact
and fast.

Every attention layer runs through the instrumented fast backend (`models.instrument`): outputs
come from SDPA, and only the query rows that emit answer tokens get their pre-softmax logits
computed on the side (argmax key, mass on the needle span). Teacher mode is ONE forward of the
decoder trunk over prompt + gold answer (no LM logits); generate mode is greedy decoding with a
KV cache (prefill probed on the last prompt row, then one probed row per step). The `query` score
probes the question's rows instead (mass on gold and on all documents, `heads.criteria`); the
`output` score keeps the per-head outputs and norm inputs at the answer rows (`row_outputs`) and
attributes the next token's logit to each head after the forward.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from needlework.evaluate.metrics import rouge1_recall  # the generate-mode success gate (Wu et al.'s ROUGE-1)
from needlework.heads.config import MATCHES, MODES, SCORES, SPANS, ScoreConfig  # noqa: F401  (re-exported)
from needlework.heads.criteria import check_output_path, logit_attribution, query_tally, unembedding_mean
from needlework.heads.examples import Canon, Example, prepare_examples, span_coverage  # noqa: F401  (re-exported)
from needlework.models.batching import for_batches
from needlework.models.decode import StopWhen, decode_loop, eos_token_ids
from needlework.models.instrument import RowProbe, instrumented, row_outputs, set_probe
from needlework.models.sites import attention_modules, cache_of, decoder_trunk, model_device, model_shape, with_cache


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
    others: dict[str, ScoreResult] = field(default_factory=dict)  # the further criteria's, by name


# ---------------------------------------------------------------------------- scoring core


def _decoder(model):
    """The decoder trunk (no LM head): teacher mode never needs the vocabulary logits."""
    return decoder_trunk(model)


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
    d = probe.argmax if what == "argmax" else probe.mass if what == "mass" else probe.log_masses[what]
    return torch.stack([d[l] for l in range(n_layers)]).cpu()  # L, b, h, r


def _pad_rows(lists: list[list[int]], fill: int = -1, width: int = 1) -> torch.Tensor:
    """(b, r) long, r = the longest list (at least `width`), row i holding lists[i] then `fill`
    (-1 marks padding rows for the probes)."""
    out = torch.full((len(lists), max(width, max(map(len, lists)))), fill, dtype=torch.long)
    for i, xs in enumerate(lists):
        out[i, : len(xs)] = torch.tensor(xs, dtype=torch.long)
    return out


Group = dict[str, Example]  # one record's Examples by criterion (same prompt and answer tokens)
ARGMAX = frozenset({"retrieval", "insight"})  # criteria read from the attention argmax


def _key_mask(batch: list[Group], crit: str, keys, width: int, shift: list[int]) -> torch.Tensor:
    """(b, width) bool: the keys `keys(example)` of each row's `crit` Example, at prompt position +
    shift[i] (left padding); all False for a row without one."""
    m = torch.zeros(len(batch), width, dtype=torch.bool)
    for i, g in enumerate(batch):
        if crit in g:
            m[i, [shift[i] + j for j in keys(g[crit])]] = True
    return m


def _make_probe(crits: set[str], rows, batch: list[Group], width: int, shift: list[int], dev) -> RowProbe:
    """One probe for every criterion asked: the argmax (retrieval, insight), the mass on S (mass),
    the log masses on the gold and on all documents (query); the output score reads `row_outputs`."""
    key_masks = {}
    if "query" in crits:
        key_masks = {
            "gold": _key_mask(batch, "query", lambda e: e.span, width, shift).to(dev),
            "docs": _key_mask(batch, "query", lambda e: e.doc_tokens, width, shift).to(dev),
        }
    span = _key_mask(batch, "mass", lambda e: e.span, width, shift).to(dev) if "mass" in crits else None
    return RowProbe(rows=rows, span_mask=span, want_argmax=bool(crits & ARGMAX), key_masks=key_masks)


def _collect(probe: RowProbe, n_layers: int, crits: set[str]) -> dict[str, torch.Tensor]:
    """What one forward's probe recorded, each (L, b, h, r) on the CPU; the output score's row
    captures (per-layer dicts) are kept as they are, to be attributed once the targets are known."""
    parts = {}
    if probe.want_argmax:
        parts["argmax"] = _stack(probe, n_layers, "argmax")
    if probe.span_mask is not None:
        parts["mass"] = _stack(probe, n_layers, "mass")
    for name in probe.key_masks:
        parts[name] = _stack(probe, n_layers, name)
    if "output" in crits:
        parts["output"] = {"head_out": dict(probe.head_out), "attn_norm_in": dict(probe.attn_norm_in), "final_in": probe.final_in}
    return parts


def _attribute(model, caps: list[dict], targets: torch.Tensor, baseline) -> torch.Tensor:
    """(L, b, h, r) direct logit attribution of the captures of one or more forwards (their rows
    concatenated in order) onto `targets` (b, r)."""
    cat = lambda k, l: torch.cat([c[k][l] for c in caps], 1)  # noqa: E731  (rows are dim 1)
    head_out = {l: cat("head_out", l) for l in caps[0]["head_out"]}
    norm_in = {l: cat("attn_norm_in", l) for l in caps[0]["attn_norm_in"]}
    final_in = torch.cat([c["final_in"] for c in caps], 1)
    return logit_attribution(model, head_out, norm_in, final_in, targets.to(final_in.device), baseline).cpu()


def _score_one(cfg, part: dict, n_steps: int, span_row, key_canon, emit) -> tuple[np.ndarray, np.ndarray]:
    """(hits, score), each (L, h), of one example from its rows of the recorded parts (L, h, r)."""
    if cfg.score == "query":
        return query_tally(part["gold"], part["docs"], n_steps, cfg.query_norm)
    if cfg.score == "output":
        total = part["dla"][..., :n_steps].double().sum(-1)  # logits summed over the answer steps
        return total.numpy(), (total / max(n_steps, 1)).numpy()
    return _tally(cfg, part.get("argmax"), part.get("mass"), span_row, key_canon, emit, n_steps)


def _rows_of(parts: dict, i: int, start: int, n: int) -> dict:
    """Batch row i's probe rows start..start+n of every recorded part, each (L, h, n)."""
    return {k: v[:, i, :, start : start + n] for k, v in parts.items() if isinstance(v, torch.Tensor)}


@torch.no_grad()
def _teacher_batch(model, batch: list[Group], cfgs: dict[str, ScoreConfig], canon, pad_id, baseline=None) -> list[dict[str, dict]]:
    """One forward over prompt + gold answer, right-padded, for every criterion at once: each row
    probes the query rows p-1 of its answer positions p, then (query score) the question's rows.
    Returns per example {criterion: result} for the criteria that example has."""
    dev, L, crits = model_device(model), model_shape(model).n_layers, set(cfgs)
    first = [next(iter(g.values())) for g in batch]
    seqs = [e.prompt_ids + e.answer_ids for e in first]
    n = max(map(len, seqs))
    ids = torch.full((len(batch), n), pad_id, dtype=torch.long)
    mask = torch.zeros(len(batch), n, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    # the query at t predicts t+1; the query score's rows follow the answer rows
    ans = [list(range(len(e.prompt_ids) - 1, len(e.prompt_ids) - 1 + len(e.answer_ids))) if crits - {"query"} else [] for e in first]
    qrows = [g["query"].query_rows if "query" in g else [] for g in batch]
    probe = _make_probe(crits, _pad_rows([a + q for a, q in zip(ans, qrows)]).to(dev), batch, n, [0] * len(batch), dev)
    set_probe(model, probe)
    # no mask when nothing is padded: SDPA then takes its causal (flash / memory-efficient) path
    am = None if bool(mask.all()) else mask.to(dev)
    with row_outputs(model, probe) if "output" in crits else contextlib.nullcontext():
        _decoder(model)(input_ids=ids.to(dev), attention_mask=am, use_cache=False)
    set_probe(model, None)
    parts = _collect(probe, L, crits)
    if "output" in crits:
        targets = _pad_rows([e.answer_ids + [0] * len(q) for e, q in zip(first, qrows)], fill=0)
        parts["dla"] = _attribute(model, [parts.pop("output")], targets, baseline)
    out = []
    for i, g in enumerate(batch):
        key_canon = torch.tensor(canon(ids[i].tolist())) if "argmax" in parts else None
        res = {}
        for c, e in g.items():
            start, k = (len(ans[i]), len(qrows[i])) if c == "query" else (0, len(ans[i]))
            span_row = torch.zeros(n, dtype=torch.bool)
            span_row[e.span] = True
            emit = torch.tensor(canon(e.answer_ids))
            hits, score = _score_one(cfgs[c], _rows_of(parts, i, start, k), k, span_row, key_canon, emit)
            res[c] = dict(hits=hits, score=score, n_steps=k, success=None, answer=e.answer_text)
        out.append(res)
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
    prefill_rows: torch.Tensor | None = None,
) -> list[list[int]]:
    """Greedy decoding of left-padded prompts with a KV cache (`models.decode.decode_loop`);
    returns each row's emitted tokens up to (excluding) its stop token. With `probe`, the prefill
    probes only the last prompt row (or `prefill_rows`, (b, r) in left-padded coordinates) and each
    step its single row; `on_step(k)` runs after the forward that emits token k."""
    b, P = len(prompts), max(map(len, prompts))
    dev = model_device(model)
    cache = [None]

    def step(ids, mask, pos, k):
        if probe is not None:
            if k == 0:
                first = prefill_rows.to(dev) if prefill_rows is not None else torch.full((b, 1), P - 1, dtype=torch.long, device=dev)
                probe.rows, probe.seq_len = first, P
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


def _generate_batch(model, batch: list[Example], cfg, canon, pad_id, is_stop, decode, baseline=None) -> list[dict]:
    """Greedy decoding with probes: every step's row (retrieval, insight, mass, output), or the
    question's rows in the prefill only (query: the prompt's attention; decoding gives the gate)."""
    L, dev = model_shape(model).n_layers, model_device(model)
    P = max(len(e.prompt_ids) for e in batch)
    shift = [P - len(e.prompt_ids) for e in batch]
    span = torch.zeros(len(batch), P, dtype=torch.bool)  # padded coordinates; later keys are outside S
    for i, e in enumerate(batch):
        span[i, [shift[i] + j for j in e.span]] = True
    query, crits = cfg.score == "query", {cfg.score}
    prefill = _pad_rows([[s + j for j in e.query_rows] for e, s in zip(batch, shift)]) if query else None
    probe = _make_probe(crits, None, [{cfg.score: e} for e in batch], P, shift, dev)
    steps: list[dict] = []

    def on_step(k):
        if not query or k == 0:
            steps.append(_collect(probe, L, crits))
        if query:
            probe.layers = frozenset()  # the prefill's question rows only
        probe.clear()

    with row_outputs(model, probe) if cfg.score == "output" else contextlib.nullcontext():
        emitted = greedy_decode(model, [e.prompt_ids for e in batch], cfg.max_new_tokens, pad_id, is_stop, probe, on_step, prefill)
    if cfg.score == "output":  # one row per step
        parts = {"dla": _attribute(model, [st["output"] for st in steps], _pad_rows(emitted, fill=0, width=len(steps)), baseline)}
    else:
        parts = {name: torch.cat([st[name] for st in steps], -1) for name in steps[0]}  # L, b, h, steps
    out = []
    for i, e in enumerate(batch):
        seq = [pad_id] * shift[i] + e.prompt_ids + emitted[i]
        key_canon = torch.tensor(canon(seq)) if "argmax" in parts else None
        n = len(e.query_rows) if query else len(emitted[i])
        span_full = torch.nn.functional.pad(span[i], (0, len(seq) - P))
        emit = torch.tensor(canon(emitted[i]), dtype=torch.long)
        hits, score = _score_one(cfg, _rows_of(parts, i, 0, n), n, span_full, key_canon, emit)
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


def _output_baseline(model, crits: list[str], cfg: ScoreConfig) -> torch.Tensor | None:
    """The output score's path checked before any forward (a clear error for a model it cannot
    follow), and its baseline: the mean unembedding row (logit minus the mean logit), or None."""
    if "output" not in crits:
        return None
    check_output_path(model)
    return unembedding_mean(model) if cfg.output_baseline == "mean" else None


COLUMNS = [
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


def _frame(e: Example, r: dict, cfg: ScoreConfig, L: int, H: int) -> pd.DataFrame:
    """One example's rows of the per-example table (see ScoreResult)."""
    success = r["success"]
    kept = True if cfg.mode == "teacher" or cfg.keep_failed or success is None else bool(success)
    return pd.DataFrame(
        {
            "example_id": e.id,
            "layer": np.repeat(np.arange(L), H),
            "head": np.tile(np.arange(H), L),
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


def score_examples(
    model,
    examples: list[Example],
    cfg: ScoreConfig,
    *,
    pad_id: int = 0,
    decode: Callable[[list[int]], str] | None = None,
    is_stop: Callable[[int, int], bool] | None = None,
) -> pd.DataFrame:
    """Score token-level examples by `cfg.score` alone; the per-example long table (see ScoreResult)."""
    one = cfg.for_criterion(cfg.score)
    return score_groups(model, [{cfg.score: e} for e in examples], one, pad_id=pad_id, decode=decode, is_stop=is_stop)[cfg.score]


def score_groups(
    model,
    groups: list[Group],
    cfg: ScoreConfig,
    *,
    pad_id: int = 0,
    decode: Callable[[list[int]], str] | None = None,
    is_stop: Callable[[int, int], bool] | None = None,
) -> dict[str, pd.DataFrame]:
    """Score examples by every criterion of `cfg` (`all_criteria`); per criterion its per-example
    long table (see ScoreResult). `groups`: per record its Example for each criterion that can
    score it (same prompt and answer tokens).

    Teacher mode runs ONE forward per batch for all criteria; generate mode decodes once per
    criterion. Examples are batched in order of length (less padding), `cfg.batch_size` at a time
    (`auto`: sized to the GPU's memory, models.batching).
    """
    cfg.check()
    attention_modules(model)  # a clear error when attention cannot be instrumented
    crits = cfg.all_criteria()
    groups = [{c: e for c, e in g.items() if c in crits} for g in groups]  # the criteria asked for only
    if cfg.mode == "generate" and len(crits) > 1:
        kw = dict(pad_id=pad_id, decode=decode, is_stop=is_stop)
        return {c: score_groups(model, [{c: g[c]} for g in groups if c in g], cfg.for_criterion(c), **kw)[c] for c in crits}
    cfgs = {c: cfg.for_criterion(c) for c in crits}
    L, H = model_shape(model).n_layers, model_shape(model).n_heads
    canon = Canon(cfg.match or "id", decode)  # unresolved (None): the examples' rendering is unknown here
    is_stop = is_stop or (lambda t, n: False)
    size = lambda g: len(next(iter(g.values())).prompt_ids) + len(next(iter(g.values())).answer_ids)  # noqa: E731
    order = sorted((i for i, g in enumerate(groups) if g), key=lambda i: size(groups[i]))
    results: dict[int, dict[str, dict]] = {}
    was_training = model.training
    model.eval()
    baseline = _output_baseline(model, crits, cfg)

    def run(idx: list[int]) -> None:
        batch = [groups[i] for i in idx]
        if cfg.mode == "teacher":
            res = _teacher_batch(model, batch, cfgs, canon, pad_id, baseline)
        else:
            done = _generate_batch(model, [g[cfg.score] for g in batch], cfg, canon, pad_id, is_stop, decode, baseline)
            res = [{cfg.score: r} for r in done]
        results.update(zip(idx, res))

    what = cfg.score if len(crits) == 1 else "+".join(crits)
    bar = tqdm(total=len(order), desc=f"heads {cfg.mode} {what}", unit="ex", leave=True)
    with instrumented(model):
        for_batches(order, cfg.batch_size, run, model_device(model), bar)
    bar.close()
    model.train(was_training)
    out = {}
    for c in crits:
        frames = [_frame(g[c], results[i][c], cfgs[c], L, H) for i, g in enumerate(groups) if c in g]
        out[c] = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=COLUMNS)
    return out


def head_table(per_example: pd.DataFrame, shape=None) -> pd.DataFrame:
    """Per-head mean/std/n of the per-example scores over kept examples (all heads listed)."""
    kept = per_example[per_example["kept"].astype(bool)] if "kept" in per_example else per_example
    g = kept.groupby(["layer", "head"])["score"]
    t = pd.DataFrame({"mean": g.mean(), "std": g.std(ddof=0), "n": g.size()}).reset_index()
    if shape is not None:
        full = pd.DataFrame([asdict(h) for h in shape.all_heads()])
        t = full.merge(t, on=["layer", "head"], how="left").fillna({"n": 0})
    return t.astype({"layer": int, "head": int, "n": int})


def score_heads(model, tokenizer, records, cfg: ScoreConfig, rendered: dict | None = None) -> ScoreResult:
    """Score every attention head of `model` on `records` (SPEC §2), by `cfg.score` and by each of
    `cfg.criteria` (in `others`), on the same records.

    Args:
        model: a causal LM (any transformers Llama/Mistral/Qwen/Gemma-style model, or a peft wrap).
        tokenizer: its fast tokenizer (rendering, chat template, stop tokens, loose matching).
        records: needlework Records.
        cfg: mode, score, criteria, batching, matching options.
        rendered: a cache of the records' renderings by position, kept by a caller that scores the
            same records with the same options again (training's probes, at every fraction).
    Returns:
        ScoreResult of `cfg.score` with the per-example long table, the per-head table and the
        skipped ids; `others` holds one per further criterion.
    Raises:
        NeedleworkError: bad options, or a model whose attention cannot be instrumented.
    """
    cfg.check()
    cfg = cfg.resolved(tokenizer)  # chat and match decided once, for rendering and matching alike
    attention_modules(model)
    records = list(records)[: cfg.limit] if cfg.limit else list(records)
    crits = cfg.all_criteria()
    rendered = {} if rendered is None else rendered  # each record rendered once for every criterion (and call)
    prepared = {}
    for c in crits:
        located: dict[str, tuple[int, int]] = {}
        examples, skipped = prepare_examples(records, tokenizer, cfg.for_criterion(c), coverage=located, rendered=rendered)
        prepared[c] = ({e.id: e for e in examples}, skipped, located)
    groups = [{c: prepared[c][0][r.id] for c in crits if r.id in prepared[c][0]} for r in records]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    per = score_groups(model, groups, cfg, pad_id=pad_id, decode=tokenizer.decode, is_stop=stop_rule(tokenizer, cfg, model))
    shape = model_shape(model)
    res = {c: ScoreResult(per[c], head_table(per[c], shape), prepared[c][1], len(records), span_coverage(prepared[c][2])) for c in crits}
    res[cfg.score].others = {c: res[c] for c in crits[1:]}
    return res[cfg.score]
