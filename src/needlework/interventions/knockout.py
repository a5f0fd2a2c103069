"""Head knockout (SPEC §2): ablate a head set during evaluation, in prefill and decoding alike, and
compare the top retrieval heads against layer-matched random heads and the unablated baseline.

The ablations are `models.instrument` interventions (`Zero`, `Mean`, `Uniform`: one call
signature, one site each); `knocked_out` maps a mode to one and installs it with
`instrument.intervened`, which removes it in `finally`. The ablated set is chosen by
`models.sites.select_heads`, the rule `heads compare` uses.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from needlework.artifacts import KnockoutResult
from needlework.data.records import Record, read_jsonl
from needlework.errors import NeedleworkError
from needlework.heads.compare import Scores, load_scores
from needlework.interventions.config import KnockoutConfig
from needlework.interventions.heads import check_scores, describe, random_layer_matched
from needlework.io import hash_file, hash_obj
from needlework.models.instrument import Intervention, Mean, SiteCall, Uniform, Zero, intervened
from needlework.models.sites import HeadSet, model_device, model_shape, select_heads

MODES = ("zero", "mean", "uniform")


@contextlib.contextmanager
def knocked_out(model, heads, mode: str = "zero", means: torch.Tensor | None = None) -> Iterator[None]:
    """Ablate `heads` of `model` for the duration of the block (every forward: prefill and decoding).

    Args:
        model: a transformers causal LM (peft-wrapped is fine).
        heads: iterable of HeadId; empty means no change.
        mode: `zero`, `mean` (needs `means`) or `uniform` (the head attends uniformly over its
            visible causal prefix).
        means: (n_layers, n_heads, head_dim) mean head outputs, from `head_means`.
    Raises:
        NeedleworkError: unknown mode, heads outside the model, mean mode without means.
    """
    if mode not in MODES:
        raise NeedleworkError(f"unknown knockout mode {mode!r}", f"use one of {', '.join(MODES)}")
    heads = HeadSet(heads)
    shape = model_shape(model)
    shape.check(heads)
    if not heads:
        yield
        return
    iv: Intervention
    if mode == "mean":
        want = (shape.n_layers, shape.n_heads, shape.head_dim)
        if means is None or tuple(means.shape) != want:
            raise NeedleworkError(
                f"mean knockout needs head means shaped {want}, got {None if means is None else tuple(means.shape)}",
                "compute them with head_means()",
            )
        iv = Mean(means)
    else:
        iv = Zero() if mode == "zero" else Uniform()
    with intervened(model, iv, heads):
        yield


# --- mean head outputs over a reference set, cached on disk ---------------------------------------


def head_means(model, prompts: Sequence[Sequence[int]], batch_size: int | str = 4, progress: bool = True) -> torch.Tensor:
    """Mean head output (before the output projection) of every head over all prompt positions of
    the reference prompts, (n_layers, n_heads, head_dim) float32. Padding is excluded."""
    from tqdm.auto import tqdm

    from needlework.models.batching import for_batches
    from needlework.models.decode import left_pad

    shape = model_shape(model)
    zeros = lambda: torch.zeros(shape.n_layers, shape.n_heads, shape.head_dim, dtype=torch.float64)  # noqa: E731
    total, acc, count = zeros(), _SumHeads(zeros()), 0
    device = model_device(model)

    def run(idx: list[int]) -> None:
        nonlocal total, count
        ids, mask, pos = left_pad([prompts[i] for i in idx], 0, device)  # left padding, as in generation
        acc.sums, acc.mask = zeros(), mask.to(torch.float64)
        model(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=1)
        total, count = total + acc.sums, count + int(mask.sum())  # only a finished batch counts

    bar = tqdm(total=len(prompts), desc="head means", disable=not progress, leave=False)
    with torch.inference_mode(), intervened(model, acc, shape.all_heads()):
        for_batches(range(len(prompts)), batch_size, run, device, bar)
    bar.close()
    return (total / max(count, 1)).float()


@dataclass
class _SumHeads:
    """A collecting intervention that keeps only a running sum of every head's output over the
    unpadded positions (`mask` (b, q), set per batch), not the layer tensors themselves."""

    sums: torch.Tensor  # (n_layers, n_heads, head_dim) float64
    mask: torch.Tensor | None = None
    site = "head_output"

    def __call__(self, x: torch.Tensor, heads: Sequence[int], call: SiteCall) -> None:
        self.sums[call.layer] += (x.double() * self.mask[:, :, None, None]).sum((0, 1)).cpu()  # h, d
        return None


def model_key(model_cfg) -> str:
    """A hash naming a loaded model: its config, plus the adapter weights' hash when there is one."""
    d = asdict(model_cfg)
    if model_cfg.adapter:
        p = Path(model_cfg.adapter)
        files = sorted(p.glob("adapter_model.*"))
        d["adapter_hash"] = [hash_file(f) for f in files]
    return hash_obj(d)


def cached_head_means(model, prompts, key: str, cache_root: str | os.PathLike | None = None, **kw) -> torch.Tensor:
    """`head_means`, read from / written to `<cache>/head_means/<hash(key, prompts)>.pt`."""
    from needlework.io import atomic_path
    from needlework.models.load import cache_dir

    root = Path(cache_root) if cache_root is not None else cache_dir() / "head_means"
    path = root / f"{hash_obj({'model': key, 'prompts': [list(p) for p in prompts]})[:32]}.pt"
    if path.exists():
        return torch.load(path, weights_only=True)
    means = head_means(model, prompts, **kw)
    with atomic_path(path) as tmp:
        torch.save(means, tmp)
    return means


# --- the knockout stage ---------------------------------------------------------------------------


def choose_heads(scores: Scores | None, shape, cfg: KnockoutConfig) -> HeadSet:
    """The ablated set from the config (`sites.select_heads`: explicit list, else threshold, else
    top-k), checked on `shape`."""
    if cfg.heads:
        heads = select_heads(heads=cfg.heads)
    else:
        if scores is None:
            raise NeedleworkError("no head scores given", "pass --heads SCORES, or an explicit --list L-H,...")
        check_scores(scores, shape)
        heads = scores.select(top=cfg.top, threshold=cfg.threshold)
    shape.check(heads)
    if not heads:
        raise NeedleworkError("the head selection is empty", "lower --threshold or raise --top")
    return heads


def _bar_plot(path: Path, conditions: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted({t for c in conditions.values() for t in c["tasks"]})
    fig, axes = plt.subplots(1, len(tasks), figsize=(1.2 + 0.7 * len(conditions) * len(tasks), 3.2), squeeze=False)
    names = list(conditions)
    colors = ["#777777" if n == "baseline" else "#c0392b" if n == "top" else "#5d8aa8" for n in names]
    for ax, task in zip(axes[0], tasks):
        t = [conditions[n]["tasks"].get(task) for n in names]
        prim = next(x["primary"] for x in t if x)
        m = [x["metrics"][prim] if x else {"mean": np.nan, "lo": np.nan, "hi": np.nan} for x in t]
        mean = np.array([v["mean"] for v in m])
        err = np.array([[v["mean"] - v["lo"] for v in m], [v["hi"] - v["mean"] for v in m]])
        ax.bar(range(len(names)), mean, yerr=np.nan_to_num(err), color=colors, capsize=3)
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
        ax.set_ylabel(prim)
        ax.set_title(task)
    fig.tight_layout()
    from needlework.io import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def _paired_delta(df, cond: str, n_boot: int, alpha: float, seed: int) -> dict[str, Any]:
    from needlework.evaluate.bootstrap import paired_diff_ci

    out = {}
    base = df[df["condition"] == "baseline"].set_index("id")
    cur = df[df["condition"] == cond].set_index("id").loc[base.index]
    for task, g in base.groupby("task"):
        d, lo, hi = paired_diff_ci(cur.loc[g.index, "score"].to_numpy(float), g["score"].to_numpy(float), n_boot, alpha, seed)
        out[task] = {"mean": d, "lo": lo, "hi": hi}
    return out


def _given_baseline(baseline, records, cfg: KnockoutConfig):
    """The unablated condition from an evaluation already made (the study's evaluate stage, same
    model and decoding options): its rows of `records`, summarised as here."""
    from needlework.evaluate.evaluate import predictions_for, summarise

    df = predictions_for(baseline, records)
    return df, {"tasks": summarise(df, cfg.eval), "elapsed_s": 0.0, "from": "given evaluation"}


def _evaluate_conditions(model, tok, records, sets: dict[str, HeadSet], cfg: KnockoutConfig, means, progress: bool, baseline=None):
    """Evaluate every head set knocked out in turn (the unablated one taken from `baseline` when
    given); returns (per-example frame, conditions dict)."""
    import pandas as pd

    from needlework.evaluate.evaluate import evaluate_loaded

    frames, conditions = [], {}
    for name, heads in sets.items():
        if name == "baseline" and baseline is not None:
            df, summ = _given_baseline(baseline, records, cfg)
        else:
            with knocked_out(model, heads, cfg.mode, means):
                df, summ = evaluate_loaded(model, tok, records, replace(cfg.eval, limit=None), progress=progress)
        frames.append(df.assign(condition=name))
        conditions[name] = {**describe(heads), "tasks": summ["tasks"], "elapsed_s": summ["elapsed_s"]}
        if "from" in summ:
            conditions[name]["from"] = summ["from"]
    per_example = pd.concat(frames, ignore_index=True)
    for name in conditions:
        conditions[name]["delta_vs_baseline"] = _paired_delta(per_example, name, cfg.eval.n_boot, cfg.eval.alpha, cfg.eval.seed)
    return per_example, conditions


def _random_mean(conditions: dict[str, Any]) -> dict[str, Any]:
    """Per task: the primary metric averaged (with min, max) over the random-set conditions."""
    random_mean = {}
    for task in conditions["baseline"]["tasks"]:
        prim = conditions["baseline"]["tasks"][task]["primary"]
        vals = [c["tasks"][task]["metrics"][prim]["mean"] for n, c in conditions.items() if n.startswith("random_")]
        if vals:
            random_mean[task] = {
                "metric": prim,
                "mean": float(np.mean(vals)),
                "min": float(np.min(vals)),
                "max": float(np.max(vals)),
                "n_seeds": len(vals),
            }
    return random_mean


def run_knockout(
    model_cfg,
    records: Sequence[Record] | str | os.PathLike,
    heads_table,
    cfg: KnockoutConfig | None,
    out_dir: str | os.PathLike,
    progress: bool = True,
    baseline=None,
) -> dict[str, Any]:
    """Evaluate a model unablated, with the chosen head set knocked out, and with layer-matched
    random sets (one per seed); write the KnockoutResult and its bar chart to `out_dir`.

    Args:
        model_cfg: `needlework.models.load.ModelConfig` (adapter included).
        records: Record objects or a JSONL path.
        heads_table: score table (DataFrame, heads-score folder, parquet, Wu et al. JSON) or None
            when `cfg.heads` lists the heads.
        cfg: options (KnockoutConfig()).
        out_dir: output folder (created).
        baseline: per-example predictions of this model on these records with these decoding
            options, already made (an `evaluate` result's predictions): the unablated condition is
            read from them instead of evaluated again (the study passes its evaluate stage's).
    Returns:
        the KnockoutResult; its summary: `conditions` -> name (`baseline`, `top`, `random_<seed>`) -> {`heads`,
        `tasks` (metrics with bootstrap intervals, as `evaluate`), `delta_vs_baseline` (paired
        primary-metric difference with interval), `elapsed_s`}; and `random_mean` per task;
        `model_config` as loaded (the adapter's saved RoPE settings applied), `chat` (the rendering
        used) and `trained_chat` (the adapter's, or null; a warning when they differ).
    Raises:
        NeedleworkError: heads outside the model, a score table of another shape, bad data.
    """
    from needlework.evaluate.evaluate import check_records
    from needlework.models.decode import render_prompts, resolve_chat
    from needlework.models.load import check_rendering, load_model, resolve_model_config

    cfg = cfg or KnockoutConfig()
    model_cfg = resolve_model_config(model_cfg)  # the adapter checked and its saved settings applied, before loading
    if cfg.mode not in MODES:
        raise NeedleworkError(f"unknown knockout mode {cfg.mode!r}", f"use one of {', '.join(MODES)}")
    data_path = str(records) if isinstance(records, (str, os.PathLike)) else None
    records = read_jsonl(records) if data_path else list(records)
    records = records[: cfg.eval.limit] if cfg.eval.limit is not None else records
    check_records(records)
    table = load_scores(heads_table, cfg.criterion) if heads_table is not None else None
    model, tok = load_model(model_cfg)
    chat = resolve_chat(cfg.eval.chat, tok)
    trained_chat = check_rendering(model_cfg, chat)
    shape = model_shape(model)
    top = choose_heads(table, shape, cfg)
    sets: dict[str, HeadSet] = {"baseline": HeadSet(), "top": top}
    for s in range(cfg.random_seeds):
        sets[f"random_{s}"] = random_layer_matched(top, shape, seed=s)
    means = None
    if cfg.mode == "mean":
        ref = read_jsonl(cfg.mean_reference) if cfg.mean_reference else records
        prompts = render_prompts(ref, tok, chat)
        means = cached_head_means(model, prompts, model_key(model_cfg), batch_size=cfg.eval.batch_size, progress=progress)
    per_example, conditions = _evaluate_conditions(model, tok, records, sets, cfg, means, progress, baseline)
    random_mean = _random_mean(conditions)
    summary = {
        "model": model_cfg.name,
        "adapter": model_cfg.adapter,
        "model_config": asdict(model_cfg),
        "shape": shape.to_dict(),
        "data": data_path,
        "data_hash": hash_obj([r.to_dict() for r in records]),
        "n": len(records),
        "config": asdict(cfg),
        "chat": chat,
        "trained_chat": trained_chat,
        "conditions": conditions,
        "random_mean": random_mean,
    }
    result = KnockoutResult(per_example=per_example, summary=summary)
    out = result.write(out_dir)
    _bar_plot(out / KnockoutResult.FIGURE, conditions)
    return result
