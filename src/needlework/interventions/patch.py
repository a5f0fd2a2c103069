"""Cross-model activation patching (SPEC §2, Prakash et al. 2024): run a source and a target model
on the same input and replace the target's per-head outputs (the input of the output projection)
for a head set by the source's, at every prompt position and every generated position.

Both models advance in lockstep on the TARGET's greedy tokens, each with its own KV cache; the
source is never patched. When source and target are one base model with different LoRA adapters,
the base is loaded once and each forward switches the active adapter (peft multi-adapter).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch

from needlework.artifacts import PatchResult
from needlework.data.records import Record, read_jsonl
from needlework.errors import NeedleworkError
from needlework.evaluate.config import EvalConfig
from needlework.heads.compare import load_scores
from needlework.interventions.config import PatchConfig
from needlework.interventions.heads import check_scores, describe, patch_sets
from needlework.io import hash_obj
from needlework.models.decode import Step, StopRules, decode_loop, greedy_answers, plan_answers
from needlework.models.instrument import Collect, Patch, SiteCall, intervened
from needlework.models.sites import HeadSet, cache_of, heads_by_layer, model_device, model_shape, with_cache

# --- two roles on one or two models ---------------------------------------------------------------


@dataclass
class Role:
    """A model as seen by one role: the module to call and, for a shared peft base, its adapter
    (None = the base with adapters disabled)."""

    model: Any
    adapter: str | None = None
    shared: bool = False  # True when the other role calls the same module

    @contextlib.contextmanager
    def active(self):
        if not self.shared or not hasattr(self.model, "peft_config"):
            yield
        elif self.adapter is None:
            with self.model.disable_adapter():
                yield
        else:
            self.model.set_adapter(self.adapter)
            yield


def check_same_tokenizer(tok_a, tok_b) -> None:
    """Raise NeedleworkError unless both tokenizers map the same strings to the same ids (and agree
    on the special tokens): patching feeds the target's tokens to the source."""
    va, vb = tok_a.get_vocab(), tok_b.get_vocab()
    if va != vb:
        diff = len(set(va.items()) ^ set(vb.items()))
        raise NeedleworkError(
            f"source and target tokenizers differ ({len(va)} vs {len(vb)} entries, {diff} (token, id) pairs differ)",
            "patch between models of one family that share a tokenizer (e.g. two fine-tunes of one base)",
        )
    for attr in ("eos_token_id", "bos_token_id", "pad_token_id"):
        a, b = getattr(tok_a, attr, None), getattr(tok_b, attr, None)
        if a != b and attr != "pad_token_id":
            raise NeedleworkError(f"source and target tokenizers disagree on {attr} ({a} vs {b})", "use tokenizers of one base model")


def _attach(base, adapters: dict[str, str]):
    from needlework.models.load import apply_adapter

    model = base
    for name, d in adapters.items():  # the first wraps the base (PeftModel), the next ones join it
        model = apply_adapter(model, d, adapter_name=name)
    return model.eval()


def resolve_pair(source_cfg, target_cfg):
    """Both ModelConfigs with their adapters checked and saved settings applied (nothing is loaded).

    On one base model, a setting one side leaves unset (None) takes the base's own value, so two
    configs that load the same model compare equal and the base is loaded once.

    Raises:
        NeedleworkError: an adapter problem (`models.load.resolve_model_config`), or two adapters
            of one base trained with different RoPE settings (they cannot share the base).
    """
    from needlework.models.load import CONTEXT_KEYS, base_context, resolve_model_config, same_model

    src, tgt = resolve_model_config(source_cfg), resolve_model_config(target_cfg)
    if not same_model(src.name, tgt.name):
        return src, tgt
    for key in CONTEXT_KEYS:
        a, b = getattr(src, key), getattr(tgt, key)
        if a is not None and b is not None and a != b and src.adapter and tgt.adapter:
            raise NeedleworkError(
                f"the source adapter {src.adapter} was trained with {key} {a} and the target adapter {tgt.adapter} "
                f"with {key} {b}: patching runs both adapters on one base model, so their settings must agree",
                "patch between adapters trained with the same --rope-theta / --max-position-embeddings",
            )
    if any((getattr(src, k) is None) != (getattr(tgt, k) is None) for k in CONTEXT_KEYS):
        own = base_context(src.name, src.trust_remote_code)
        src, tgt = (replace(c, **{k: own[k] for k in CONTEXT_KEYS if getattr(c, k) is None and own[k] is not None}) for c in (src, tgt))
    return src, tgt


def load_pair(source_cfg, target_cfg):
    """(source Role, target Role, tokenizer). One base is loaded when the two configs differ only in
    their adapter; otherwise two models, whose tokenizers and shapes must match.

    Raises:
        NeedleworkError: different tokenizers or model shapes, adapters that do not fit or disagree
            on the base model's settings (`resolve_pair`).
    """
    from needlework.models.load import load_model, resolve_device

    source_cfg, target_cfg = resolve_pair(source_cfg, target_cfg)  # before any model is loaded
    same_base = replace(source_cfg, adapter=None) == replace(target_cfg, adapter=None)
    if same_base:
        base, tok = load_model(replace(source_cfg, adapter=None))
        adapters = {k: v for k, v in (("source", source_cfg.adapter), ("target", target_cfg.adapter)) if v}
        if source_cfg.adapter and source_cfg.adapter == target_cfg.adapter:
            adapters = {"source": source_cfg.adapter}
        model = _attach(base, adapters).to(resolve_device(source_cfg.device)) if adapters else base
        src = Role(model, "source" if source_cfg.adapter else None, shared=True)
        tgt = Role(model, ("target" if "target" in adapters else "source") if target_cfg.adapter else None, shared=True)
        return src, tgt, tok
    from needlework.models.load import load_tokenizer

    check_same_tokenizer(load_tokenizer(source_cfg.name), load_tokenizer(target_cfg.name))  # before loading weights
    ms, tok = load_model(source_cfg)
    mt, _ = load_model(target_cfg)
    if model_shape(ms) != model_shape(mt):
        raise NeedleworkError(
            f"source and target shapes differ ({model_shape(ms)} vs {model_shape(mt)})", "patch between models of one architecture and size"
        )
    return Role(ms), Role(mt), tok


# --- lockstep greedy generation -------------------------------------------------------------------


@dataclass
class _PatchState:
    """The one intervention installed for lockstep patching: by `phase`, a `Collect` (the source's
    forward) or a `Patch` reading what it collected (the target's). One object, because a shared
    peft base is one module that both roles call."""

    by_layer: dict[int, list[int]]
    phase: str = "off"  # source (record head outputs) | target (replace them) | off
    collect: Collect = field(default_factory=Collect)
    site = "head_output"

    def __post_init__(self) -> None:
        self.patch = Patch(self.collect.store)

    def __call__(self, x: torch.Tensor, heads: Sequence[int], call: SiteCall) -> torch.Tensor | None:
        if self.phase == "source":
            return self.collect(x, heads, call)  # the source is never modified in place, so no copy is needed
        if self.phase == "target":
            return self.patch(x, heads, call)
        return None


@contextlib.contextmanager
def patching(source: Role, target: Role, heads):
    """Install the capture/replace intervention on both models (once when they are one module);
    yields the state whose `phase` each forward sets."""
    st = _PatchState(heads_by_layer(heads))
    with contextlib.ExitStack() as stack:
        for m in {id(source.model): source.model, id(target.model): target.model}.values():
            stack.enter_context(intervened(m, st, heads))
        yield st


def _call(role: Role, st: _PatchState, phase: str, **kw):
    st.phase = phase
    try:
        with role.active():
            return role.model(**kw, logits_to_keep=1)
    finally:
        st.phase = "off"


def lockstep_step(source: Role, target: Role, st: _PatchState, logits: list[torch.Tensor] | None = None) -> Step:
    """The decoding layer's step function of lockstep patching: the source runs first on the
    target's tokens (its head outputs are what the patched target's forward reads), each model with
    its own KV cache; returns the target's logits, also appended (float) to `logits` when given."""
    skip_source = not st.by_layer  # nothing to patch: the source is not needed
    caches: dict[str, object] = {"source": None, "target": None}

    def step(ids: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor, _k: int) -> torch.Tensor:
        kw = dict(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True)
        if not skip_source:
            caches["source"] = cache_of(_call(source, st, "source", **with_cache(source.model, caches["source"]), **kw))
        out = _call(target, st, "target", **with_cache(target.model, caches["target"]), **kw)
        caches["target"] = cache_of(out)
        if logits is not None:
            logits.append(out.logits[:, -1].float())
        return out.logits[:, -1]

    return step


def lockstep_batch(
    source: Role,
    target: Role,
    st: _PatchState,
    prompts,
    max_new,
    stops,
    pad_id,
    eos_ids,
    newline_ids,
    blank_ids,
    return_logits: bool = False,
):
    """Greedy generation of one left-padded batch by the patched target (`models.decode.decode_loop`
    with `lockstep_step`, stop rules as `evaluate`). Returns (generated ids per row, per-step target
    logits (b, vocab) when `return_logits`)."""
    logits: list[torch.Tensor] = []
    rules = StopRules(max_new, stops, eos_ids, newline_ids, blank_ids)
    step = lockstep_step(source, target, st, logits if return_logits else None)
    return decode_loop(step, prompts, pad_id, model_device(target.model), rules), logits


def patched_answers(
    source: Role, target: Role, tokenizer, records: Sequence[Record], heads, cfg: EvalConfig, progress: bool = True
) -> list[str]:
    """The patched target's greedy answers: `evaluate`'s answer plan (rendering, budgets, stop
    rules) decoded with the lockstep step function."""
    plan = plan_answers(target.model, tokenizer, records, cfg.chat, cfg.max_new_tokens)
    with torch.inference_mode(), patching(source, target, heads) as st:
        gen = greedy_answers(plan, lambda: lockstep_step(source, target, st), model_device(target.model), cfg.batch_size, progress, "patch")
    return plan.texts(tokenizer, gen)


# --- the patch stage ------------------------------------------------------------------------------


def _scores(records, outputs, condition: str):
    from needlework.evaluate.metrics import PRIMARY, score_example

    rows = []
    for r, o in zip(records, outputs):
        m = score_example(r, o)
        rows.append({"condition": condition, "id": r.id, "task": r.task, "output": o, "score": m[PRIMARY[r.task]], **m})
    return rows


def control_for(cond: str, sets: dict, random_like: str) -> str | None:
    """The head set a random condition controls for: `random_<kind>_<seed>` names it; a plain
    `random_<seed>` matches the `random_like` set; None for other conditions."""
    if not cond.startswith("random_"):
        return None
    kind = cond[len("random_") :].rsplit("_", 1)[0]
    return kind if kind in sets else (random_like if random_like != "each" else None)


def _table(per_example, sets: dict, cfg: EvalConfig, random_like: str = "each") -> tuple[list[dict], str]:
    from needlework.evaluate.bootstrap import bootstrap_ci, paired_diff_ci
    from needlework.interventions.stats import recovered_ci

    rows = []
    for task, g in per_example.groupby("task"):
        by = {c: x.set_index("id")["score"] for c, x in g.groupby("condition")}
        before, source = by["target"], by["source"].loc[by["target"].index]
        for cond in ["source", "target", *sets]:
            v = by[cond].loc[before.index].to_numpy(float)
            lo, hi = bootstrap_ci(v, cfg.n_boot, cfg.alpha, cfg.seed)
            d, dlo, dhi = paired_diff_ci(v, before.to_numpy(float), cfg.n_boot, cfg.alpha, cfg.seed)
            rec = recovered_ci(v, before.to_numpy(float), source.to_numpy(float), cfg.n_boot, cfg.alpha, cfg.seed) if cond in sets else None
            rows.append(
                {
                    "task": task,
                    "condition": cond,
                    "control_for": control_for(cond, sets, random_like),
                    "n_heads": len(sets[cond]) if cond in sets else None,
                    "score": float(v.mean()),
                    "lo": lo,
                    "hi": hi,
                    "delta": d,
                    "delta_lo": dlo,
                    "delta_hi": dhi,
                    "recovered": rec[0] if rec else None,
                    "recovered_lo": rec[1] if rec else None,
                    "recovered_hi": rec[2] if rec else None,
                }
            )
    lines = ["| task | condition | heads | score [95% CI] | delta vs target [95% CI] | recovered [95% CI] |", "|---|---|---|---|---|---|"]
    for r in rows:
        rec = "" if r["recovered"] is None else f"{r['recovered']:.2f}"
        if r["recovered_lo"] is not None:
            rec += f" [{r['recovered_lo']:.2f}, {r['recovered_hi']:.2f}]"
        lines.append(
            f"| {r['task']} | {r['condition']} | {'' if r['n_heads'] is None else r['n_heads']} | "
            f"{r['score']:.3f} [{r['lo']:.3f}, {r['hi']:.3f}] | {r['delta']:+.3f} [{r['delta_lo']:+.3f}, {r['delta_hi']:+.3f}] | {rec} |"
        )
    return rows, "\n".join(lines) + "\n"


def _choose_sets(cfg: PatchConfig, tables, shape) -> tuple[list[HeadSet], dict[str, HeadSet]]:
    """Select each model's heads from its score table (empty when absent); returns (chosen, patch sets)."""
    chosen = []
    for t in tables:
        if t is None:
            chosen.append(HeadSet())
            continue
        check_scores(t, shape)
        chosen.append(t.select(top=cfg.top, threshold=cfg.threshold))  # `sites.select_heads`, as knockout and compare
    sets = patch_sets(cfg.set, chosen[0], chosen[1], shape, seeds=range(cfg.random_seeds), random_like=cfg.random_like)
    return chosen, sets


def _score_conditions(source, target, tok, records, sets: dict[str, HeadSet], ecfg, progress: bool, given=None) -> list[dict]:
    """Per-example rows for the source, the target (each read from `given[role]` when there, an
    evaluation already made), and the target patched with each head set."""
    from needlework.evaluate.evaluate import evaluate_loaded, predictions_for

    rows = []
    for name, role in (("source", source), ("target", target)):
        if (given or {}).get(name) is not None:
            df = predictions_for(given[name], records)
        else:
            with role.active():
                df, _ = evaluate_loaded(role.model, tok, records, ecfg, progress=progress)
        rows += [{"condition": name, **r} for r in df.drop(columns=["n_prompt_tokens"], errors="ignore").to_dict("records")]
    for name, heads in sets.items():
        rows += _scores(records, patched_answers(source, target, tok, records, heads, ecfg, progress), name)
    return rows


def run_patch(
    source_cfg,
    target_cfg,
    records: Sequence[Record] | str | os.PathLike,
    heads_source,
    heads_target,
    cfg: PatchConfig | None,
    out_dir: str | os.PathLike,
    progress: bool = True,
    given: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Score the source, the target, and the target patched with the source's head outputs per head
    set; write the PatchResult (with its table as CSV and Markdown) to `out_dir`.

    Args:
        source_cfg, target_cfg: ModelConfigs (same base + different adapters loads the base once).
        records: Record objects or a JSONL path.
        heads_source, heads_target: score tables (DataFrame, folder, parquet, Wu et al. JSON) of
            each model; may be None when `cfg.set` is `all` or an explicit list.
        cfg: options (PatchConfig()).
        out_dir: output folder (created).
        given: `{"source": predictions, "target": predictions}` (either may be left out): those
            models' evaluations of these records with these decoding options, already made (an
            `evaluate` result's predictions); the unpatched conditions are read from them instead
            of evaluated again (the study passes its evaluate stages').
    Returns:
        the PatchResult; its summary: `model_config` (the target's), `source`/`target` (the
        ModelConfigs as loaded: adapters' saved RoPE settings applied), `chat` (the rendering
        used) and `trained_chat` (each adapter's, or null), `sets` -> name -> head description, `table` rows (task, condition, score with
        interval, paired delta vs the unpatched target, fraction of the source-target gap recovered with
        its paired bootstrap interval, and for random sets `control_for`: the set they match).
    Raises:
        NeedleworkError: different tokenizers or shapes, score tables of another shape, bad heads.
    """
    import pandas as pd

    from needlework.evaluate.evaluate import check_records
    from needlework.models.decode import resolve_chat
    from needlework.models.load import check_rendering

    cfg = cfg or PatchConfig()
    source_cfg, target_cfg = resolve_pair(source_cfg, target_cfg)  # adapters checked, settings applied, before loading
    data_path = str(records) if isinstance(records, (str, os.PathLike)) else None
    records = read_jsonl(records) if data_path else list(records)
    records = records[: cfg.eval.limit] if cfg.eval.limit is not None else records
    check_records(records)
    explicit = cfg.set == "all" or "-" in cfg.set
    tables = [load_scores(t, cfg.criterion) if t is not None else None for t in (heads_source, heads_target)]
    if not explicit and any(t is None for t in tables):
        raise NeedleworkError(f"--set {cfg.set} needs the head scores of both models", "pass --heads-source and --heads-target")
    source, target, tok = load_pair(source_cfg, target_cfg)
    chat = resolve_chat(cfg.eval.chat, tok)  # one rendering for both models
    trained_chat = {role: check_rendering(c, chat, "patched") for role, c in (("source", source_cfg), ("target", target_cfg))}
    shape = model_shape(target.model)
    chosen, sets = _choose_sets(cfg, tables, shape)
    ecfg = replace(cfg.eval, limit=None, logprob=False)
    per_example = pd.DataFrame(_score_conditions(source, target, tok, records, sets, ecfg, progress, given))
    table, md = _table(per_example, sets, ecfg, cfg.random_like)
    summary = {
        "model_config": asdict(target_cfg),
        "source": asdict(source_cfg),
        "target": asdict(target_cfg),
        "chat": chat,
        "trained_chat": trained_chat,
        "data": data_path,
        "data_hash": hash_obj([r.to_dict() for r in records]),
        "n": len(records),
        "config": asdict(cfg),
        "shape": shape.to_dict(),
        "heads_source": describe(chosen[0]),
        "heads_target": describe(chosen[1]),
        "sets": {k: describe(v) for k, v in sets.items()},
        "given": sorted(k for k, v in (given or {}).items() if v is not None),  # conditions read from evaluations already made
        "table": table,
    }
    result = PatchResult(per_example=per_example, summary=summary, csv=pd.DataFrame(table).to_csv(index=False), markdown=md)
    result.write(out_dir)
    return result
