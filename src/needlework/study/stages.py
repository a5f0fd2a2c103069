"""The study's stage functions: thin adapters from a `StageContext` to each package's one public
function (generate / load_real, train, evaluate, score_heads, run_knockout, run_patch), plus the
study's own `compare` and `analysis` stages. Each writes only into `ctx.out`.

Files each stage leaves (read by later stages and by the report):
  data: records.jsonl, data.json            train: adapter/ (LoRA) or model/, log.jsonl
  evaluate: summary.json, predictions.jsonl  score: heads.parquet, per_example.parquet, meta.json
  compare: compare.json                      knockout: summary.json (+ per_example.parquet, knockout.png)
  patch: summary.json                        analysis: analysis.json
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from typing import Any

from needlework.errors import NeedleworkError
from needlework.evaluate.evaluate import EvalConfig
from needlework.interventions.knockout import KnockoutConfig
from needlework.interventions.patch import PatchConfig
from needlework.io import write_json
from needlework.schema import build
from needlework.study.config import HeadsSpec, KnockoutSection, PatchSection, stage_config
from needlework.study.launch import run_in_processes, stage_processes
from needlework.study.nodes import StageContext


def model_config(ctx: StageContext, train_dep: str | None = "train"):
    """The ModelConfig of this node: the base model, plus what its train input produced."""
    from needlework.models.load import ModelConfig

    mc = ModelConfig(**ctx.node.slice["model"])
    d = ctx.inputs.get(train_dep) if train_dep else None
    if d is not None:
        if (d / "adapter").exists():
            mc = dataclasses.replace(mc, adapter=str(d / "adapter"))
        elif (d / "model").exists():
            mc = dataclasses.replace(mc, name=str(d / "model"))
    return mc


def records_of(ctx: StageContext, dep: str = "eval_data"):
    from needlework.data.records import read_jsonl

    return read_jsonl(ctx.inputs[dep] / "records.jsonl")


# ----------------------------------------------------------------------------------- data


def data_stage(ctx: StageContext) -> None:
    """Generate, load or copy a data set at the task's length for the model's tokenizer."""
    from needlework.data.records import read_jsonl, write_jsonl

    s = ctx.node.slice
    n, seed = s["n"], s["seed"]
    if s.get("generate") is not None:
        from needlework.data.generate import GenerateConfig, generate

        gcfg = GenerateConfig(
            **{**s["generate"], "task": s["task"], "n": n, "length": s["length"], "tokenizer": s["tokenizer"], "seed": seed}
        )
        records = generate(gcfg)
    elif s.get("load") is not None:
        from needlework.data.loaders import LoadConfig, load_real

        opts = dict(s["load"])
        fmt, path = opts.pop("format"), opts.pop("path")
        if "limited" in opts and isinstance(opts["limited"], list):
            opts["limited"] = tuple(opts["limited"])
        records = load_real(fmt, path, LoadConfig(**{**opts, "length": s["length"], "tokenizer": s["tokenizer"], "limit": n, "seed": seed}))
    else:
        records = read_jsonl(s["file"])[:n]
    if not records:
        raise NeedleworkError(f"data set {ctx.node.label} came out empty", "check its source and options")
    wrong = sorted({r.task for r in records} - {s["task"]})
    if wrong:
        raise NeedleworkError(f"data set {ctx.node.label} holds task(s) {wrong}, not {s['task']}", "use data of the task")
    write_jsonl(ctx.out / "records.jsonl", records)
    write_json(ctx.out / "data.json", {"n": len(records), "kind": s["kind"], "task": s["task"], "length": s["length"]})


# ----------------------------------------------------------------------------------- train / evaluate / score


def _train_here(ctx: StageContext) -> None:
    from needlework.train.config import TrainConfig
    from needlework.train.sft import train

    cfg = TrainConfig.from_dict({**ctx.node.slice["train"], "resume": "auto"})
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:  # launched processes split the configured global batch (launch.stage_processes)
        cfg = dataclasses.replace(cfg, grad_accum=cfg.grad_accum // world)
    train(model_config(ctx, None), records_of(ctx, "data"), cfg, ctx.out)


def _evaluate_here(ctx: StageContext) -> None:
    from needlework.evaluate.evaluate import evaluate

    evaluate(model_config(ctx), records_of(ctx), EvalConfig.from_dict(ctx.node.slice["eval"]), ctx.out)


IN_PROCESS = {"train": _train_here, "evaluate": _evaluate_here}  # what one launched process runs


def _scaled(stage: str, ctx: StageContext) -> None:
    """Run the stage here, or in one process per GPU when several are available (study.launch)."""
    n = stage_processes(stage, ctx)
    if n > 1:
        run_in_processes(stage, ctx, n)
    else:
        IN_PROCESS[stage](ctx)


def train_stage(ctx: StageContext) -> None:
    _scaled("train", ctx)
    shutil.rmtree(ctx.out / "checkpoints", ignore_errors=True)  # only needed to resume a killed run


def evaluate_stage(ctx: StageContext) -> None:
    _scaled("evaluate", ctx)


def score_stage(ctx: StageContext) -> None:
    from needlework.heads.score import ScoreConfig, score_heads
    from needlework.io import write_parquet
    from needlework.models.load import check_rendering, load_model, resolve_model_config

    cfg = ScoreConfig.from_dict(ctx.node.slice["score"])
    mc = resolve_model_config(model_config(ctx))  # the adapter's saved RoPE settings applied (and recorded)
    model, tok = load_model(mc)
    used = cfg.resolved(tok)  # chat and match as score_heads resolves them
    trained_chat = check_rendering(mc, used.chat, "scored")
    res = score_heads(model, tok, records_of(ctx), cfg)
    write_parquet(ctx.out / "heads.parquet", res.heads)
    write_parquet(ctx.out / "per_example.parquet", res.per_example)
    write_json(
        ctx.out / "meta.json",
        {
            "options": dataclasses.asdict(used),
            "model_config": dataclasses.asdict(mc),
            "trained_chat": trained_chat,
            "n_examples": res.n_examples,
            "skipped": res.skipped,
            "span_coverage": res.coverage,
        },
    )


def compare_stage(ctx: StageContext) -> None:
    """Head-set comparison of this model with the reference model (both scored on the eval set)."""
    import pandas as pd

    from needlework.study.analysis import compare_heads

    h, a = ctx.node.slice["heads"], ctx.node.slice["analysis"]

    def load(dep):
        d = ctx.inputs[dep]
        per = pd.read_parquet(d / "per_example.parquet") if (d / "per_example.parquet").exists() else None
        return pd.read_parquet(d / "heads.parquet"), per

    (ha, pa), (hr, pr) = load("heads"), load("ref_heads")
    res = compare_heads(
        ha, hr, pa, pr, rule=h["rule"], k=h["top"], threshold=h["threshold"], n_boot=a["n_boot"], alpha=a["alpha"], seed=a["seed"]
    )
    write_json(ctx.out / "compare.json", res)


# ----------------------------------------------------------------------------------- interventions


def _intervention_config(ctx: StageContext, name: str) -> KnockoutConfig | PatchConfig:
    """The stage config of this node's `knockout`/`patch` slice: the section's own fields, the
    head-set rule of `heads:`, and the study's `eval:` options (no log-probs; `limit` applied)."""
    s = ctx.node.slice
    sec = build(KnockoutSection if name == "knockout" else PatchSection, s[name], name)
    ev = build(EvalConfig, s["eval"], "eval")
    ev = dataclasses.replace(ev, logprob=False, limit=ev.limit if sec.limit is None else sec.limit)
    heads = build(HeadsSpec, s["heads"], "heads").selection()
    if isinstance(sec, PatchSection):
        return stage_config(PatchConfig, sec, **heads, eval=ev, set=",".join(sec.kinds))
    return stage_config(KnockoutConfig, sec, **heads, eval=ev, heads=None)


def knockout_stage(ctx: StageContext) -> None:
    from needlework.interventions.knockout import run_knockout

    cfg = _intervention_config(ctx, "knockout")
    run_knockout(model_config(ctx), records_of(ctx), str(ctx.inputs["heads"] / "heads.parquet"), cfg, ctx.out)


def patch_stage(ctx: StageContext) -> None:
    """Patch the reference (source) model's head outputs into this (target) model for every head
    set kind in one run (source and target are scored once); `patch.json` gathers the rows."""
    from needlework.interventions.patch import run_patch

    cfg = _intervention_config(ctx, "patch")
    records = records_of(ctx)
    summ = run_patch(
        model_config(ctx, "source_train"),
        model_config(ctx, "target_train"),
        records,
        str(ctx.inputs["source_heads"] / "heads.parquet"),
        str(ctx.inputs["target_heads"] / "heads.parquet"),
        cfg,
        ctx.out,
    )
    rows = [{**r, "kind": "random" if r["condition"].startswith("random_") else r["condition"]} for r in summ["table"]]
    n = len(records[: cfg.eval.limit] if cfg.eval.limit else records)
    write_json(ctx.out / "patch.json", {"rows": rows, "sets": summ["sets"], "n": n})


# ----------------------------------------------------------------------------------- analysis


def primary_score(summary: dict[str, Any], task: str) -> dict[str, Any]:
    t = summary["tasks"][task]
    m = t["metrics"][t["primary"]]
    return {"metric": t["primary"], "score": m["mean"], "score_lo": m["lo"], "score_hi": m["hi"], "n_eval": t["n"]}


def analysis_stage(ctx: StageContext) -> None:
    """Per task and model: a row per training set and the correlations across sets."""
    from needlework.study.analysis import analyze

    s = ctx.node.slice
    rows = []
    for name, info in s["sets"].items():
        summ = json.loads((ctx.inputs[f"evaluate:{name}"] / "summary.json").read_text())
        cmp = json.loads((ctx.inputs[f"compare:{name}"] / "compare.json").read_text())
        row = {
            "set": name,
            "label": info["label"],
            "kind": info["kind"],
            "reference": name == s["reference"],
            **primary_score(summ, ctx.node.task),
        }
        for m in ("recall", "precision", "jaccard", "cosine", "spearman"):
            row[m], row[f"{m}_lo"], row[f"{m}_hi"] = cmp[m]["mean"], cmp[m]["lo"], cmp[m]["hi"]
        row["n_heads"] = cmp["n_heads"]
        row["n_above_threshold"] = cmp["n_above_threshold"]
        rows.append(row)
    a = s["analysis"]
    res = analyze(rows, s["reference"], a["include_reference"], a["n_boot"], a["alpha"], a["seed"])
    write_json(
        ctx.out / "analysis.json", {"model": ctx.node.model, "task": ctx.node.task, "reference": s["reference"], "rows": rows, **res}
    )


REAL_STAGES = {
    "data": data_stage,
    "train": train_stage,
    "evaluate": evaluate_stage,
    "score": score_stage,
    "compare": compare_stage,
    "knockout": knockout_stage,
    "patch": patch_stage,
    "analysis": analysis_stage,
}
