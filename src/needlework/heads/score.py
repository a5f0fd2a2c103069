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


def _make_probe(cfg, rows, span, batch: list[Example], width: int, shift: list[int], dev) -> RowProbe:
    """The probe a score needs. `span` (b, width) marks S; the query score's key sets (gold and all
    documents) are built at prompt position + shift[i] (left padding) in the same width."""
    if cfg.score == "query":
        keys = {name: torch.zeros(len(batch), width, dtype=torch.bool) for name in ("gold", "docs")}
        for i, e in enumerate(batch):
            keys["gold"][i, [shift[i] + j for j in e.span]] = True
            keys["docs"][i, [shift[i] + j for j in e.doc_tokens]] = True
        return RowProbe(rows=rows, want_argmax=False, key_masks={k: v.to(dev) for k, v in keys.items()})
    if cfg.score == "output":
        return RowProbe(rows=rows, want_argmax=False)  # nothing from attention: `row_outputs` does the work
    return RowProbe(rows=rows, span_mask=span.to(dev) if cfg.score == "mass" else None, want_argmax=cfg.score != "mass")


def _collect(probe: RowProbe, n_layers: int, cfg) -> dict[str, torch.Tensor]:
    """What one forward's probe recorded, each (L, b, h, r) on the CPU; the output score's row
    captures (per-layer dicts) are kept as they are, to be attributed once the targets are known."""
    if cfg.score == "query":
        return {name: _stack(probe, n_layers, name) for name in ("gold", "docs")}
    if cfg.score == "output":
        return {"head_out": dict(probe.head_out), "attn_norm_in": dict(probe.attn_norm_in), "final_in": probe.final_in}
    return {"argmax": _stack(probe, n_layers, "argmax")} if probe.want_argmax else {"mass": _stack(probe, n_layers, "mass")}


def _attribute(model, caps: list[dict], targets: torch.Tensor, baseline) -> torch.Tensor:
    """(L, b, h, r) direct logit attribution of the captures of one or more forwards (their rows
    concatenated in order) onto `targets` (b, r)."""
    cat = lambda k, l: torch.cat([c[k][l] for c in caps], 1)  # noqa: E731  (rows are dim 1)
    head_out = {l: cat("head_out", l) for l in caps[0]["head_out"]}
    norm_in = {l: cat("attn_norm_in", l) for l in caps[0]["attn_norm_in"]}
    final_in = torch.cat([c["final_in"] for c in caps], 1)
    return logit_attribution(model, head_out, norm_in, final_in, targets.to(final_in.device), baseline).cpu()


def _score_one(cfg, parts: dict, i: int, n_steps: int, span_row, key_canon, emit) -> tuple[np.ndarray, np.ndarray]:
    """(hits, score), each (L, h), of batch row i from the batch's recorded parts."""
    if cfg.score == "query":
        return query_tally(parts["gold"][:, i], parts["docs"][:, i], n_steps, cfg.query_norm)
    if cfg.score == "output":
        total = parts["dla"][:, i, :, :n_steps].double().sum(-1)  # logits summed over the answer steps
        return total.numpy(), (total / max(n_steps, 1)).numpy()
    am, ms = parts.get("argmax"), parts.get("mass")
    return _tally(cfg, am[:, i] if am is not None else None, ms[:, i] if ms is not None else None, span_row, key_canon, emit, n_steps)


@torch.no_grad()
def _teacher_batch(model, batch: list[Example], cfg, canon, pad_id, baseline=None) -> list[dict]:
    """One forward over prompt + gold answer, right-padded; probe rows p-1 for answer positions p
    (the query score: the question's rows, n_steps = their number)."""
    dev, L = model_device(model), model_shape(model).n_layers
    seqs = [e.prompt_ids + e.answer_ids for e in batch]
    n = max(map(len, seqs))
    ids = torch.full((len(batch), n), pad_id, dtype=torch.long)
    mask = torch.zeros(len(batch), n, dtype=torch.long)
    span = torch.zeros(len(batch), n, dtype=torch.bool)
    for i, (e, s) in enumerate(zip(batch, seqs)):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
        span[i, e.span] = True
    if cfg.score == "query":
        steps = [e.query_rows for e in batch]
    else:  # the query at t predicts t+1
        steps = [list(range(len(e.prompt_ids) - 1, len(e.prompt_ids) - 1 + len(e.answer_ids))) for e in batch]
    probe = _make_probe(cfg, _pad_rows(steps).to(dev), span, batch, n, [0] * len(batch), dev)
    set_probe(model, probe)
    # no mask when nothing is padded: SDPA then takes its causal (flash / memory-efficient) path
    am = None if bool(mask.all()) else mask.to(dev)
    with row_outputs(model, probe) if cfg.score == "output" else contextlib.nullcontext():
        _decoder(model)(input_ids=ids.to(dev), attention_mask=am, use_cache=False)
    set_probe(model, None)
    parts = _collect(probe, L, cfg)
    if cfg.score == "output":
        parts = {"dla": _attribute(model, [parts], _pad_rows([e.answer_ids for e in batch], fill=0), baseline)}
    out = []
    for i, e in enumerate(batch):
        key_canon = torch.tensor(canon(ids[i].tolist())) if parts.get("argmax") is not None else None
        hits, score = _score_one(cfg, parts, i, len(steps[i]), span[i], key_canon, torch.tensor(canon(e.answer_ids)))
        out.append(dict(hits=hits, score=score, n_steps=len(steps[i]), success=None, answer=e.answer_text))
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
    query = cfg.score == "query"
    prefill = _pad_rows([[s + j for j in e.query_rows] for e, s in zip(batch, shift)]) if query else None
    probe = _make_probe(cfg, None, span, batch, P, shift, dev)
    steps: list[dict] = []

    def on_step(k):
        if not query or k == 0:
            steps.append(_collect(probe, L, cfg))
        if query:
            probe.layers = frozenset()  # the prefill's question rows only
        probe.clear()

    with row_outputs(model, probe) if cfg.score == "output" else contextlib.nullcontext():
        emitted = greedy_decode(model, [e.prompt_ids for e in batch], cfg.max_new_tokens, pad_id, is_stop, probe, on_step, prefill)
    if cfg.score == "output":
        parts = {"dla": _attribute(model, steps, _pad_rows(emitted, fill=0, width=len(steps)), baseline)}  # one row per step
    else:
        parts = {name: torch.cat([st[name] for st in steps], -1) for name in steps[0]}  # L, b, h, steps
    out = []
    for i, e in enumerate(batch):
        seq = [pad_id] * shift[i] + e.prompt_ids + emitted[i]
        key_canon = torch.tensor(canon(seq)) if "argmax" in parts else None
        n = len(e.query_rows) if query else len(emitted[i])
        span_full = torch.nn.functional.pad(span[i], (0, len(seq) - P))
        hits, score = _score_one(cfg, parts, i, n, span_full, key_canon, torch.tensor(canon(emitted[i]), dtype=torch.long))
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


def _output_baseline(model, cfg: ScoreConfig) -> torch.Tensor | None:
    """The output score's path checked before any forward (a clear error for a model it cannot
    follow), and its baseline: the mean unembedding row (logit minus the mean logit), or None."""
    if cfg.score != "output":
        return None
    check_output_path(model)
    return unembedding_mean(model) if cfg.output_baseline == "mean" else None


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
    baseline = _output_baseline(model, cfg)

    def run(idx: list[int]) -> None:
        batch = [examples[i] for i in idx]
        if cfg.mode == "teacher":
            res = _teacher_batch(model, batch, cfg, canon, pad_id, baseline)
        else:
            res = _generate_batch(model, batch, cfg, canon, pad_id, is_stop, decode, baseline)
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
