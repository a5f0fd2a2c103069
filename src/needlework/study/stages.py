"""The study's stage functions: thin adapters from a `StageContext` to each package's one public
function (generate / load_real, train, evaluate, score_result, run_knockout, run_patch), plus the
study's own `compare` and `analysis` stages. Each writes only into `ctx.out`, and only artifacts
(`needlework.artifacts`): data DataSet, train a TrainRun folder, evaluate EvalResult, score
HeadScores, compare Comparison, knockout KnockoutResult, patch PatchResult, analysis Analysis.
Later stages and the report read them back through the same classes.
"""

from __future__ import annotations

import dataclasses
import os
import shutil

from needlework.artifacts import Analysis, Comparison, DataSet, EvalResult, HeadScores, TrainRun
from needlework.errors import NeedleworkError
from needlework.evaluate.config import EvalConfig
from needlework.interventions.config import KnockoutConfig, PatchConfig
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
        run = TrainRun(d)
        if run.adapter is not None:
            mc = dataclasses.replace(mc, adapter=str(run.adapter))
        elif run.model is not None:
            mc = dataclasses.replace(mc, name=str(run.model))
    return mc


def records_of(ctx: StageContext, dep: str = "eval_data"):
    return DataSet.read(ctx.inputs[dep]).records


# ----------------------------------------------------------------------------------- data


def data_stage(ctx: StageContext) -> None:
    """Generate, load or copy a data set at the task's length for the model's tokenizer."""
    from needlework.data.records import read_jsonl

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
    DataSet(records=records, info={"n": len(records), "kind": s["kind"], "task": s["task"], "length": s["length"]}).write(ctx.out)


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
    shutil.rmtree(ctx.out / TrainRun.CHECKPOINTS, ignore_errors=True)  # only needed to resume a killed run


def evaluate_stage(ctx: StageContext) -> None:
    _scaled("evaluate", ctx)


def score_stage(ctx: StageContext) -> None:
    """The HeadScores `heads score` writes (heads.run.score_result), for this node's model."""
    from needlework.heads.config import ScoreConfig
    from needlework.heads.run import score_result

    score_result(model_config(ctx), records_of(ctx), ScoreConfig.from_dict(ctx.node.slice["score"])).write(ctx.out)


def compare_stage(ctx: StageContext) -> None:
    """Head-set comparison of this model with the reference model (both scored on the eval set)."""
    from needlework.study.analysis import compare_heads

    h, a = ctx.node.slice["heads"], ctx.node.slice["analysis"]
    res = compare_heads(
        HeadScores.read(ctx.inputs["heads"]),
        HeadScores.read(ctx.inputs["ref_heads"]),
        rule=h["rule"],
        k=h["top"],
        threshold=h["threshold"],
        n_boot=a["n_boot"],
        alpha=a["alpha"],
        seed=a["seed"],
    )
    Comparison(result=res).write(ctx.out)


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
    run_knockout(model_config(ctx), records_of(ctx), HeadScores.read(ctx.inputs["heads"]), cfg, ctx.out)


def patch_stage(ctx: StageContext) -> None:
    """Patch the reference (source) model's head outputs into this (target) model for every head
    set kind in one run (source and target are scored once)."""
    from needlework.interventions.patch import run_patch

    run_patch(
        model_config(ctx, "source_train"),
        model_config(ctx, "target_train"),
        records_of(ctx),
        HeadScores.read(ctx.inputs["source_heads"]),
        HeadScores.read(ctx.inputs["target_heads"]),
        _intervention_config(ctx, "patch"),
        ctx.out,
    )


# ----------------------------------------------------------------------------------- analysis


def analysis_stage(ctx: StageContext) -> None:
    """Per task and model: a row per training set and the correlations across sets."""
    from needlework.study.analysis import analyze

    s = ctx.node.slice
    rows = []
    for name, info in s["sets"].items():
        cmp = Comparison.read(ctx.inputs[f"compare:{name}"]).result
        row = {
            "set": name,
            "label": info["label"],
            "kind": info["kind"],
            "reference": name == s["reference"],
            **EvalResult.read(ctx.inputs[f"evaluate:{name}"]).primary(ctx.node.task),
        }
        for m in ("recall", "precision", "jaccard", "cosine", "spearman"):
            row[m], row[f"{m}_lo"], row[f"{m}_hi"] = cmp[m]["mean"], cmp[m]["lo"], cmp[m]["hi"]
        row["n_heads"] = cmp["n_heads"]
        row["n_above_threshold"] = cmp["n_above_threshold"]
        rows.append(row)
    a = s["analysis"]
    res = analyze(rows, s["reference"], a["include_reference"], a["n_boot"], a["alpha"], a["seed"])
    Analysis(result={"model": ctx.node.model, "task": ctx.node.task, "reference": s["reference"], "rows": rows, **res}).write(ctx.out)


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
