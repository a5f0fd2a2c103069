"""The evaluate stage: greedy answers, task metrics, gold-answer log-probability and bootstrap
intervals, returned and written as a `needlework.artifacts.EvalResult` (`predictions`, one row
per example, and `summary`).

`evaluate_loaded` works on a model that is already loaded, and calls it as is, so knockout and
patching can run it with their hooks installed; `evaluate` loads the model, runs it and writes.
Launched as several processes (`accelerate launch` / `torchrun`), `evaluate` gives each process every
N-th example on its own device and rank 0 writes all rows in order (the summary adds `processes`).

Columns of the per-example table: `id, task, output, score` (the task's primary metric), every
metric of the example's task (other tasks' metrics are NaN), `n_prompt_tokens`, and with
`logprob=True` `gold_logprob` (sum over answer tokens) and `gold_logprob_per_token`.

Summary keys: `model` (name), `adapter` (the adapter folder), `model_config` (as loaded:
the adapter's saved `rope_theta` / `max_position_embeddings` applied), `shape` (layers, heads,
kv heads, head dim), `data` (path or null),
`data_hash`, `trained_chat` (the rendering the adapter was trained with, or null), `n`, `options`
(the EvalConfig, with `chat` resolved; a warning is raised when it differs from `trained_chat`), `elapsed_s`,
`examples_per_s`, and `tasks` -> task -> {`n`, `primary`, `metrics` -> metric -> {`mean`, `lo`,
`hi`}} where lo/hi bound a (1 - alpha) percentile bootstrap interval over examples; values that
are undefined (NaN) are written as null.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import numpy as np

from needlework.artifacts import EvalResult
from needlework.data.records import Record, read_jsonl
from needlework.data.tasks import answer_budget
from needlework.errors import NeedleworkError
from needlework.evaluate.bootstrap import bootstrap_ci
from needlework.evaluate.config import EvalConfig, config_with_eval
from needlework.evaluate.generate import generate_answers
from needlework.evaluate.logprob import gold_logprobs
from needlework.evaluate.metrics import METRICS, PRIMARY, score_example
from needlework.io import hash_file, hash_obj
from needlework.models.decode import render_prompts, resolve_chat

__all__ = ["EvalConfig", "check_records", "config_with_eval", "evaluate", "evaluate_loaded", "predictions_for", "summarise"]


def check_records(records: Sequence[Record]) -> None:
    """Raise NeedleworkError for input evaluation cannot score: no records, unknown tasks, no gold."""
    if not records:
        raise NeedleworkError("no records to evaluate", "check the data file (it is empty) or --limit")
    bad_task = sorted({r.task for r in records if r.task not in PRIMARY})
    if bad_task:
        raise NeedleworkError(f"no metrics for task(s) {', '.join(bad_task)}", f"tasks must be one of {', '.join(PRIMARY)}")
    no_gold = [r.id for r in records if (not r.citations if r.task == "summhay" else not any(a.strip() for a in r.answers))]
    if no_gold:
        raise NeedleworkError(
            f"{len(no_gold)} record(s) have no gold answer (summhay: no citations), e.g. {', '.join(no_gold[:3])}",
            "evaluate data with answers; `needlework validate` lists every problem",
        )


def summarise(df, cfg: EvalConfig) -> dict[str, Any]:
    """Per task: n, the primary metric's name, and every metric's mean with its bootstrap interval."""
    tasks: dict[str, Any] = {}
    for task, g in df.groupby("task", sort=True):
        metrics = list(METRICS[task]) + (["gold_logprob", "gold_logprob_per_token"] if "gold_logprob" in g else [])
        out = {}
        for m in metrics:
            v = g[m].to_numpy(dtype=float)
            lo, hi = bootstrap_ci(v, n_boot=cfg.n_boot, alpha=cfg.alpha, seed=cfg.seed)
            mean = float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")
            out[m] = {"mean": mean, "lo": lo, "hi": hi}
        tasks[task] = {"n": int(len(g)), "primary": PRIMARY[task], "metrics": out}
    return tasks


def predictions_for(predictions, records: Sequence[Record]):
    """The rows of an evaluation already made (`evaluate`'s predictions) for `records`, in their
    order, without the log-probability columns: what `evaluate_loaded` would return for them with
    the same model and decoding options. Knockout and patching read their unablated conditions so.

    Raises:
        NeedleworkError: a record the evaluation does not hold.
    """
    by_id = predictions.drop(columns=[c for c in predictions if c.startswith("gold_logprob")]).set_index("id", drop=False)
    missing = [r.id for r in records if r.id not in by_id.index]
    if missing:
        raise NeedleworkError(
            f"the given evaluation lacks {len(missing)} of the {len(records)} records (e.g. {missing[0]})",
            "pass an evaluation of the same records, or none (it is then evaluated here)",
        )
    return by_id.loc[[r.id for r in records]].reset_index(drop=True)


def evaluate_loaded(model, tokenizer, records: Sequence[Record], cfg: EvalConfig | None = None, progress: bool = True):
    """Evaluate an already-loaded model (called as is: hooks and adapters stay in place).

    Args:
        model: causal LM in eval mode.
        tokenizer: its fast tokenizer.
        records: examples (any mix of tasks); `cfg.limit` keeps the first ones.
        cfg: options (defaults: EvalConfig()).
    Returns:
        (per-example DataFrame, summary dict with keys `n`, `options`, `elapsed_s`,
        `examples_per_s`, `tasks`; see the module docstring).
    Raises:
        NeedleworkError: no records, unknown task, records without gold, prompts too long.
    """
    import pandas as pd

    cfg = cfg or EvalConfig()
    records = list(records)[: cfg.limit] if cfg.limit is not None else list(records)
    check_records(records)
    chat = resolve_chat(cfg.chat, tokenizer)
    run_cfg = EvalConfig(**{**asdict(cfg), "chat": chat})
    t0 = time.perf_counter()
    outputs = generate_answers(model, tokenizer, records, run_cfg, progress=progress)
    rows = []
    for r, out in zip(records, outputs):
        m = score_example(r, out)
        rows.append({"id": r.id, "task": r.task, "output": out, "score": m[PRIMARY[r.task]], **m})
    df = pd.DataFrame(rows)
    df["n_prompt_tokens"] = [len(p) for p in render_prompts(records, tokenizer, chat)]
    if cfg.logprob:
        lps = gold_logprobs(model, tokenizer, records, chat=chat, batch_size=cfg.batch_size, progress=progress)
        df["gold_logprob"] = [lp.logprob for lp in lps]
        df["gold_logprob_per_token"] = [lp.per_token for lp in lps]
    return df, _summary(df, cfg, run_cfg, time.perf_counter() - t0)


def _summary(df, cfg: EvalConfig, run_cfg: EvalConfig, elapsed: float) -> dict[str, Any]:
    return {
        "n": len(df),
        "options": asdict(run_cfg),
        "max_new_tokens_by_task": {t: answer_budget(t, cfg.max_new_tokens) for t in sorted(set(df["task"]))},
        "elapsed_s": elapsed,
        "examples_per_s": len(df) / elapsed if elapsed > 0 else float("nan"),
        "tasks": summarise(df, cfg),
    }


def _processes(model_cfg):
    """accelerate's PartialState when this process is one of several (launched by `accelerate
    launch` or `torchrun`), else None."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    from accelerate import PartialState

    return PartialState(cpu=model_cfg.device == "cpu")


def _evaluate_sharded(state, model_cfg, records: list[Record], cfg: EvalConfig, progress: bool):
    """Each process evaluates every world-th example on its own device; rank 0 gets all rows back
    in the original order and summarises them (intervals over the whole set)."""
    import dataclasses

    import pandas as pd
    from accelerate.utils import gather_object

    from needlework.models.load import load_model

    t0 = time.perf_counter()
    rank, world = state.process_index, state.num_processes
    mine = records[rank::world]
    model, tokenizer = load_model(dataclasses.replace(model_cfg, device=str(state.device)))
    rows = []
    if mine:
        df, _ = evaluate_loaded(model, tokenizer, mine, dataclasses.replace(cfg, limit=None), progress=progress and state.is_main_process)
        rows = [{"_index": rank + i * world, **r} for i, r in enumerate(df.to_dict(orient="records"))]
    every = sorted(gather_object(rows), key=lambda r: r["_index"])
    df = pd.DataFrame(every).drop(columns="_index")
    run_cfg = EvalConfig(**{**asdict(cfg), "chat": resolve_chat(cfg.chat, tokenizer)})
    from needlework.models.sites import model_shape

    return df, {**_summary(df, cfg, run_cfg, time.perf_counter() - t0), "processes": world, "shape": model_shape(model).to_dict()}


def evaluate(
    model_cfg, records: Sequence[Record] | str | os.PathLike, cfg: EvalConfig | None, out_dir: str | os.PathLike, progress: bool = True
):
    """Load a model, evaluate it on records, and write the EvalResult to `out_dir`.

    Args:
        model_cfg: a `needlework.models.load.ModelConfig` (name, adapter, device, dtype, ...).
        records: Record objects or a JSONL path.
        cfg: evaluation options (defaults: EvalConfig()).
        out_dir: created if needed; the artifact is written atomically.
    Returns:
        the EvalResult (`predictions` DataFrame, `summary` dict); the summary adds `model`,
        `adapter`, `model_config`, `shape`, `data`, `data_hash` to `evaluate_loaded`'s. Every
        launched process returns it; rank 0 alone writes it.
    Raises:
        NeedleworkError: bad data, unknown model, adapter mismatch, prompts too long.
    """
    from needlework.models.load import check_rendering, load_model, resolve_model_config
    from needlework.models.sites import model_shape

    cfg = cfg or EvalConfig()
    model_cfg = resolve_model_config(model_cfg)  # the adapter checked and its saved settings applied, before loading
    data_path = None
    if isinstance(records, (str, os.PathLike)):
        data_path = str(records)
        data_hash = hash_file(records)
        records = read_jsonl(records)
    else:
        records = list(records)
        data_hash = hash_obj([r.to_dict() for r in records])
    check_records(records[: cfg.limit] if cfg.limit is not None else records)  # fail before loading a model
    state = _processes(model_cfg)
    if state is not None:
        df, summary = _evaluate_sharded(state, model_cfg, records[: cfg.limit] if cfg.limit is not None else records, cfg, progress)
        if not state.is_main_process:
            return EvalResult(predictions=df, summary=summary)  # rank 0 writes
        trained_chat = check_rendering(model_cfg, summary["options"]["chat"])
    else:
        model, tokenizer = load_model(model_cfg)
        trained_chat = check_rendering(model_cfg, resolve_chat(cfg.chat, tokenizer))
        df, summary = evaluate_loaded(model, tokenizer, records, cfg, progress=progress)
        summary["shape"] = model_shape(model).to_dict()
    summary = {
        "model": model_cfg.name,
        "adapter": model_cfg.adapter,
        "model_config": asdict(model_cfg),
        "data": data_path,
        "data_hash": data_hash,
        "trained_chat": trained_chat,
        **summary,
    }
    result = EvalResult(predictions=df, summary=summary)
    result.write(out_dir)
    return result
