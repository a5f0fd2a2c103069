"""The study's stage functions: thin adapters from a `StageContext` to each package's one public
function (generate / load_real, train, evaluate, score_result, run_knockout, run_patch), plus the
study's own `compare`, `probe`, `gate` and `analysis` stages. Each writes only into `ctx.out`, and
only artifacts (`needlework.artifacts`): data DataSet, train a TrainRun folder, evaluate
EvalResult, score HeadScores, compare Comparison, probe Probe, gate Gate, knockout KnockoutResult,
patch PatchResult, analysis Analysis. Later stages and the report read them back through the same
classes.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from needlework.artifacts import Analysis, Comparison, DataSet, EvalResult, Gate, HeadScores, Probe, TrainRun
from needlework.errors import NeedleworkError
from needlework.evaluate.config import EvalConfig
from needlework.interventions.config import KnockoutConfig, PatchConfig
from needlework.schema import build
from needlework.study.config import HeadsSpec, KnockoutSection, PatchSection, stage_config
from needlework.study.launch import run_in_processes, stage_processes
from needlework.study.nodes import StageContext


def model_config(ctx: StageContext, train_dep: str | None = "train", weights: Path | None = None):
    """The ModelConfig of this node: the base model, plus what its train input produced (or the
    `weights` folder given: a snapshot, an adapter or a full model as the final save writes it)."""
    from needlework.models.load import ModelConfig

    mc = ModelConfig(**ctx.node.slice["model"])
    d = ctx.inputs.get(train_dep) if train_dep else None
    if weights is None and d is not None:
        run = TrainRun(d)
        weights = run.adapter or run.model
    if weights is not None:
        lora = (weights / "adapter_config.json").exists()  # peft's file: an adapter, else a full model folder
        mc = dataclasses.replace(mc, **({"adapter": str(weights)} if lora else {"name": str(weights)}))
    return mc


def records_of(ctx: StageContext, dep: str = "eval_data"):
    return DataSet.read(ctx.inputs[dep]).records


# ----------------------------------------------------------------------------------- data


def _fit(s: dict) -> dict:
    """How a data stage fits its records (`plan._set_slice`): to at most `max_tokens` tokens (the
    task's length; less for an evaluation set, which leaves room for the answer budget), measured
    with the chat setting of the stage that reads them."""
    return {"length": s["max_tokens"], "max_tokens": s["max_tokens"], "chat": s["chat"]}


def data_stage(ctx: StageContext) -> None:
    """Generate, load or copy a data set at the task's length for the model's tokenizer."""
    from needlework.data.records import read_jsonl

    s = ctx.node.slice
    n, seed = s["n"], s["seed"]
    if s.get("generate") is not None:
        from needlework.data.generate import GenerateConfig, generate

        gcfg = GenerateConfig(**{**_fit(s), **s["generate"], "task": s["task"], "n": n, "tokenizer": s["tokenizer"], "seed": seed})
        records = generate(gcfg)
    elif s.get("load") is not None:
        from needlework.data.loaders import LoadConfig, load_real

        opts = dict(s["load"])
        fmt, path = opts.pop("format"), opts.pop("path")
        if "limited" in opts and isinstance(opts["limited"], list):
            opts["limited"] = tuple(opts["limited"])
        records = load_real(fmt, path, LoadConfig(**{**_fit(s), **opts, "tokenizer": s["tokenizer"], "limit": n, "seed": seed}))
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
    probe = _probe_in_training(ctx) if world == 1 and "probe" in ctx.node.slice else None
    train(model_config(ctx, None), records_of(ctx, "data"), cfg, ctx.out, stop_at=ctx.node.slice.get("stop_at", 1.0), on_snapshot=probe)


def _probe_in_training(ctx: StageContext):
    """Early prediction's probes, scored by the training process on the model in memory at each
    probed snapshot (`train(on_snapshot=...)`) and written beside the snapshot's weights, so that
    the probe stage need not load the model again (its dominant cost on small models). The scores
    and their meta are what scoring the saved snapshot gives (`heads.run.score_loaded`)."""
    from needlework.heads.config import ScoreConfig
    from needlework.heads.run import score_loaded
    from needlework.io import hash_obj
    from needlework.models.load import resolve_model_config

    s = ctx.node.slice["probe"]
    records, cfg = records_of(ctx, "probe_data"), ScoreConfig.from_dict(s["score"])
    data_hash, rendered = hash_obj([r.to_dict() for r in records]), {}  # the same records at every fraction: hashed and rendered once

    def on_snapshot(model, tok, fraction: float, folder: Path) -> None:
        if fraction not in s["fractions"]:
            return
        t0 = time.perf_counter()
        mc = resolve_model_config(model_config(ctx, None, weights=folder))
        scores = score_loaded(model, tok, mc, records, cfg, data_hash, rendered)
        scores.meta["in_training_seconds"] = time.perf_counter() - t0  # a timing: the monitoring cost
        scores.write(folder / TrainRun.SNAPSHOT_HEADS)

    return on_snapshot


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


def _carry_over(previous: Path, out: Path, checkpoint: bool) -> None:
    """A training segment starts from the one before: its log and snapshots (kept where a killed
    attempt of this segment already wrote them) and, to resume from, its last checkpoint. Each is
    copied whole or not at all (`copy_atomic`): the attempt is killed as likely here as anywhere."""
    from needlework.io import copy_atomic
    from needlework.train.checkpoint import list_checkpoints

    prev, run = TrainRun(previous), TrainRun(out)
    for f, src in prev.snapshots().items():
        if not (run.snapshot_dir(f) / TrainRun.SNAPSHOT_INFO).exists():
            shutil.rmtree(run.snapshot_dir(f), ignore_errors=True)
            copy_atomic(src, run.snapshot_dir(f))
    if (previous / TrainRun.LOG).exists() and not (out / TrainRun.LOG).exists():
        copy_atomic(previous / TrainRun.LOG, out / TrainRun.LOG)
    last = list_checkpoints(previous / TrainRun.CHECKPOINTS)[-1:]
    if checkpoint and last and not (out / TrainRun.CHECKPOINTS / last[0].name).exists():
        copy_atomic(last[0], out / TrainRun.CHECKPOINTS / last[0].name)


def _stop_here(ctx: StageContext, stopped_at: float) -> None:
    """A set its gate stopped: mark the run, and (last segment) its model is the snapshot at the stop."""
    from needlework.io import write_json

    run = TrainRun(ctx.out)
    write_json(ctx.out / TrainRun.STOPPED, {"fraction": stopped_at, "step": run.snapshot_info(stopped_at)["step"]})
    if ctx.node.slice["stop_at"] == 1:
        dest = ctx.out / (TrainRun.ADAPTER if ctx.node.slice["train"]["method"] == "lora" else TrainRun.MODEL)
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(run.snapshot_dir(stopped_at), dest, ignore=shutil.ignore_patterns(TrainRun.SNAPSHOT_INFO, TrainRun.SNAPSHOT_HEADS))


def train_stage(ctx: StageContext, fit: Callable[[StageContext], None] | None = None) -> None:
    """Train this node's model: the whole run or, under stop_early, one segment of it (up to the
    slice's `stop_at`), which goes on from the previous segment, unless the gate before it stopped
    the set. `fit` trains (default: `needlework.train.sft.train`, on every GPU; tests pass a fake)."""
    stop_at = ctx.node.slice.get("stop_at", 1.0)
    stopped = Gate.read(ctx.inputs["gate"]).result["stopped"].get(ctx.node.set) if "gate" in ctx.inputs else None
    if "previous" in ctx.inputs:
        _carry_over(ctx.inputs["previous"], ctx.out, checkpoint=stopped is None)
    if stopped is not None:
        _stop_here(ctx, stopped)
        return
    (fit or (lambda c: _scaled("train", c)))(ctx)
    if stop_at == 1:
        shutil.rmtree(ctx.out / TrainRun.CHECKPOINTS, ignore_errors=True)  # only needed to resume a killed run


def evaluate_stage(ctx: StageContext) -> None:
    _scaled("evaluate", ctx)


def score_stage(ctx: StageContext) -> None:
    """The HeadScores `heads score` writes (heads.run.score_result), for this node's model."""
    from needlework.heads.config import ScoreConfig
    from needlework.heads.run import score_result

    score_result(model_config(ctx), records_of(ctx), ScoreConfig.from_dict(ctx.node.slice["score"])).write(ctx.out)


def compare_stage(ctx: StageContext) -> None:
    """Head-set comparison of this model with the reference model (both scored on the eval set), by
    the main criterion (`heads.criterion`, else the scores' primary); when the scores hold several
    criteria, each criterion both hold is compared the same way under `criteria`."""
    from needlework.study.analysis import compare_heads

    h, a = ctx.node.slice["heads"], ctx.node.slice["analysis"]
    mine, ref = HeadScores.read(ctx.inputs["heads"]), HeadScores.read(ctx.inputs["ref_heads"])

    def one(criterion: str | None) -> dict:
        return compare_heads(
            mine.criterion(criterion),
            ref.criterion(criterion),
            rule=h["rule"],
            k=h["top"],
            threshold=h["threshold"],
            n_boot=a["n_boot"],
            alpha=a["alpha"],
            seed=a["seed"],
        )

    main = h.get("criterion") or ref.primary
    res = one(main)
    both = [c for c in ref.criteria() if c in mine.criteria()]
    if len(both) > 1:  # only then, so that comparisons of one criterion keep their output
        res["criteria"] = {c: dict(res) if c == main else one(c) for c in both}
    Comparison(result=res).write(ctx.out)


# ----------------------------------------------------------------------------------- early prediction


def _score_snapshot(ctx: StageContext, weights: Path) -> HeadScores:
    """The snapshot's heads on the probe examples: the score stage's own `score_result`."""
    from needlework.heads.config import ScoreConfig
    from needlework.heads.run import score_result

    return score_result(model_config(ctx, weights=weights), records_of(ctx), ScoreConfig.from_dict(ctx.node.slice["score"]))


def _scored_in_training(ctx: StageContext, snapshot: Path) -> HeadScores | None:
    """The snapshot's heads as training scored them (`_probe_in_training`: the train node's slice
    holds this probe's score options and its input the same evaluation set, so they are this
    probe's scores by construction), or None when training did not score them (several processes,
    or a resume past this snapshot): the probe stage then loads the snapshot."""
    from needlework.models.load import resolve_model_config

    try:
        scores = HeadScores.read(snapshot / TrainRun.SNAPSHOT_HEADS)
    except NeedleworkError:  # absent or unfinished
        return None
    # written inside the snapshot (from training's work folder), its model config says "."; as scoring it here would
    scores.meta["model_config"] = dataclasses.asdict(resolve_model_config(model_config(ctx, weights=snapshot)))
    return scores


def _final_on_probe_examples(ctx: StageContext) -> HeadScores:
    """The probe at the end of training without scoring again: the final model's scores (its score
    stage, same mode and options) by the probe's criterion, on the probe's examples (the first
    `limit` evaluation records), with the per-head table recomputed over them."""
    from needlework.heads.config import ScoreConfig
    from needlework.heads.score import head_table
    from needlework.models.sites import ModelShape

    cfg = ScoreConfig.from_dict(ctx.node.slice["score"])
    full = HeadScores.read(ctx.inputs["final_heads"]).criterion(cfg.score)
    ids = [r.id for r in records_of(ctx)[: cfg.limit or None]]
    per = full.per_example[full.per_example["example_id"].isin(ids)].reset_index(drop=True)
    meta = {**full.meta, "n_probe_examples": len(ids)}
    return HeadScores(heads=head_table(per, ModelShape(**full.shape)), per_example=per, meta=meta)


def probe_stage(ctx: StageContext, score: Callable[[StageContext, Path], HeadScores] | None = None) -> None:
    """Heads of the training snapshot at this node's fraction against the reference model's final
    heads, by the compare stage's rule and statistics; the seconds it took (loading, scoring,
    comparing) and those of saving the snapshot are the monitoring cost. A set that a stop_early
    gate stopped before this fraction has no snapshot here: a Probe with `stopped_at` and no
    statistics. `score`, when given, scores every probe from its snapshot (tests pass a fake)."""
    from needlework.study.analysis import METRICS, compare_heads

    t0 = time.perf_counter()
    s, run = ctx.node.slice, TrainRun(ctx.inputs["train"])
    f = s["fraction"]
    base = {"set": ctx.node.set, "fraction": f, "stopped_at": None}
    if f not in run.snapshots():
        stopped = run.stopped()
        if stopped is None or stopped["fraction"] >= f:
            raise NeedleworkError(
                f"training run {run.path} holds no snapshot at fraction {f}", "rerun its train stage (delete its folder under stages/train)"
            )
        Probe(result={**base, "stopped_at": stopped["fraction"], **dict.fromkeys(METRICS)}).write(ctx.out)
        return
    # where the scores come from: the final model's score stage (fraction 1), training (the model in
    # memory), or else the saved snapshot, scored here (a test's fake `score` stands for all three)
    scores, probed = None, "snapshot"
    if score is None and "final_heads" in ctx.inputs:
        scores, probed = _final_on_probe_examples(ctx), "final score"
    elif score is None:
        scores, probed = _scored_in_training(ctx, run.snapshot_dir(f)), "training"
    in_training = float(scores.meta.get("in_training_seconds") or 0.0) if probed == "training" and scores is not None else 0.0
    if scores is None:
        scores, probed = (score or _score_snapshot)(ctx, run.snapshot_dir(f)), "snapshot"  # the main criterion only (plan: `probe`)
    h, a = s["heads"], s["analysis"]
    ref = HeadScores.read(ctx.inputs["ref_heads"]).criterion(h.get("criterion"))
    res = compare_heads(scores, ref, h["rule"], h["top"], h["threshold"], a["n_boot"], a["alpha"], a["seed"])
    info = run.snapshot_info(f)
    result = {**base, **res, "step": info["step"], "total_steps": info["total_steps"], "snapshot_seconds": info["save_seconds"]}
    result |= {"model_config": scores.model_config, "shape": scores.shape, "probed": probed}
    result["probe_seconds"] = in_training + time.perf_counter() - t0  # scoring (in training or here) and comparing
    Probe(result=result).write(ctx.out)


def gate_stage(ctx: StageContext) -> None:
    """stop_early: which training sets stop at this fraction (`analysis.stop_decisions`), with the
    sets earlier gates stopped carried on."""
    from needlework.study.analysis import stop_decisions

    s = ctx.node.slice
    stopped = dict(Gate.read(ctx.inputs["previous"]).result["stopped"]) if "previous" in ctx.inputs else {}
    probes = [Probe.read(ctx.inputs[f"probe:{n}"]).result for n in s["sets"]]
    rows = [
        {"set": p["set"], **({"recall": None, "lo": None, "hi": None} if p["recall"] is None else _interval(p["recall"]))} for p in probes
    ]
    res = stop_decisions(rows, stopped, s["fraction"], s["margin"])
    Gate(result={"fraction": s["fraction"], "margin": s["margin"], **res}).write(ctx.out)


def _interval(m: dict) -> dict:
    return {"recall": m["mean"], "lo": m["lo"], "hi": m["hi"]}


# ----------------------------------------------------------------------------------- interventions


def _intervention_config(ctx: StageContext, name: str) -> KnockoutConfig | PatchConfig:
    """The stage config of this node's `knockout`/`patch` slice: the section's own fields, the
    head-set rule of `heads:`, and the study's `eval:` options (no log-probs; `limit` applied)."""
    s = ctx.node.slice
    sec = build(KnockoutSection if name == "knockout" else PatchSection, s[name], name)
    ev = build(EvalConfig, s["eval"], "eval")
    ev = dataclasses.replace(ev, logprob=False, limit=ev.limit if sec.limit is None else sec.limit)
    spec = build(HeadsSpec, s["heads"], "heads")
    heads = {**spec.selection(), "criterion": spec.criterion}
    if isinstance(sec, PatchSection):
        return stage_config(PatchConfig, sec, **heads, eval=ev, set=",".join(sec.kinds))
    return stage_config(KnockoutConfig, sec, **heads, eval=ev, heads=None)


def knockout_stage(ctx: StageContext) -> None:
    from needlework.interventions.knockout import run_knockout

    cfg = _intervention_config(ctx, "knockout")
    baseline = EvalResult.read(ctx.inputs["baseline"]).predictions if "baseline" in ctx.inputs else None  # plan: `_interventions`
    run_knockout(model_config(ctx), records_of(ctx), HeadScores.read(ctx.inputs["heads"]), cfg, ctx.out, baseline=baseline)


def patch_stage(ctx: StageContext) -> None:
    """Patch the reference (source) model's head outputs into this (target) model for every head
    set kind in one run (source and target are scored once, or read from their evaluate stages:
    plan `_interventions`)."""
    from needlework.interventions.patch import run_patch

    given = {r: EvalResult.read(ctx.inputs[f"{r}_eval"]).predictions for r in ("source", "target") if f"{r}_eval" in ctx.inputs}
    run_patch(
        model_config(ctx, "source_train"),
        model_config(ctx, "target_train"),
        records_of(ctx),
        HeadScores.read(ctx.inputs["source_heads"]),
        HeadScores.read(ctx.inputs["target_heads"]),
        _intervention_config(ctx, "patch"),
        ctx.out,
        given=given,
    )


# ----------------------------------------------------------------------------------- analysis


def _gates(ctx: StageContext) -> list[dict]:
    """The stop_early gates' results (inputs `gate:<fraction>`), in order of fraction."""
    keys = sorted((k for k in ctx.inputs if k.startswith("gate:")), key=lambda k: float(k.split(":", 1)[1]))
    return [Gate.read(ctx.inputs[k]).result for k in keys]


def _early(ctx: StageContext, rows: list[dict], used: list[str], gates: list[dict]) -> dict:
    """Early prediction: recall per set and fraction (the curves), each used set's final score
    predicted from its recall at each fraction, the gates' decisions, and the measured monitoring
    cost (every timing under `monitor_seconds`, which the stage hash leaves out)."""
    from needlework.study.analysis import early_prediction

    e, sets = ctx.node.slice["early"], ctx.node.slice["sets"]
    tuned = [n for n, info in sets.items() if info["kind"] != "none"]
    probes = {(n, f): Probe.read(ctx.inputs[f"probe:{n}@{f:g}"]).result for n in tuned for f in e["fractions"]}
    curves = []
    for (n, f), pr in sorted(probes.items(), key=lambda kv: (tuned.index(kv[0][0]), kv[0][1])):
        rec = pr["recall"] or {}
        curves.append({"set": n, "label": sets[n]["label"], "fraction": f, "step": pr.get("step"), "stopped_at": pr["stopped_at"]})
        curves[-1] |= {"recall": rec.get("mean"), "recall_lo": rec.get("lo"), "recall_hi": rec.get("hi")}
    recall_at = {f: {c["set"]: c["recall"] for c in curves if c["fraction"] == f} for f in e["fractions"]}
    pred = early_prediction(used, {r["set"]: r["score"] for r in rows}, recall_at, e["agreement"])
    per_set = []
    for n in tuned:
        sec = TrainRun(ctx.inputs[f"train:{n}"]).seconds()
        probe_s = sum(pr.get("probe_seconds") or 0.0 for (m, _), pr in probes.items() if m == n)
        per_set.append({"set": n, "train": sec["train"], "snapshots": sec["snapshots"], "probes": probe_s})
    total = {k: sum(r[k] for r in per_set) for k in ("train", "snapshots", "probes")}
    share = (total["snapshots"] + total["probes"]) / total["train"] if total["train"] > 0 else None
    monitor = {**total, "share": share, "budget": e["cost_budget"], "per_set": per_set}
    keep = ("fractions", "probe_n", "stop_early", "min_fraction", "margin")
    stopped = gates[-1]["stopped"] if gates else {}
    return {**{k: e[k] for k in keep}, **pred, "curves": curves, "gates": gates, "stopped": stopped, "monitor_seconds": monitor}


def _criteria(ctx: StageContext, rows: list[dict], used: list[str], compared: dict[str, dict]) -> dict:
    """Every head criterion: each set's recall of the reference's heads under it (its compare
    stage's), how well that recall predicts the score across the used sets (`criteria_analysis`),
    and the agreement of the reference model's head sets between criteria (the study's head rule)."""
    from needlework.study.analysis import criteria_analysis, reference_head_sets

    s = ctx.node.slice
    h, a = s["heads"], s["analysis"]
    recall = {}
    for r in rows:
        held = compared[r["set"]].get("criteria") or {}
        recall[r["set"]] = {c: held[c]["recall"] for c in s["criteria"] if c in held}
    ref_sets = reference_head_sets(HeadScores.read(ctx.inputs["ref_heads"]), s["criteria"], h["rule"], h["top"], h["threshold"])
    score = {r["set"]: r["score"] for r in rows}
    out = criteria_analysis(s["criteria"], recall, score, used, ref_sets, a["n_boot"], a["alpha"], a["seed"])
    return {"main": s["main"], "rule": {k: h[k] for k in ("rule", "top", "threshold")}, **out}


def analysis_stage(ctx: StageContext) -> None:
    """Per task and model: a row per training set and the correlations across sets; with early
    prediction (`early` in the slice) also its curves, predictions, gates and cost; with several
    head criteria (`criteria` in the slice) each criterion's recall, prediction and agreement."""
    from needlework.study.analysis import analyze

    s = ctx.node.slice
    gates = _gates(ctx)
    stopped = gates[-1]["stopped"] if gates else {}
    rows, compared = [], {}
    for name, info in s["sets"].items():
        cmp = compared[name] = Comparison.read(ctx.inputs[f"compare:{name}"]).result
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
        if "early" in s:  # only then, so that analyses without early prediction keep their hash
            row["stopped_at"] = stopped.get(name)
        rows.append(row)
    a = s["analysis"]
    res = analyze(rows, s["reference"], a["include_reference"], a["n_boot"], a["alpha"], a["seed"])
    if "early" in s:
        res["early"] = _early(ctx, rows, res["sets"], gates)
    if "criteria" in s:  # only then, so that analyses of one criterion keep their hash
        res["criteria"] = _criteria(ctx, rows, res["sets"], compared)
    Analysis(result={"model": ctx.node.model, "task": ctx.node.task, "reference": s["reference"], "rows": rows, **res}).write(ctx.out)


REAL_STAGES = {
    "data": data_stage,
    "train": train_stage,
    "evaluate": evaluate_stage,
    "score": score_stage,
    "compare": compare_stage,
    "probe": probe_stage,
    "gate": gate_stage,
    "knockout": knockout_stage,
    "patch": patch_stage,
    "analysis": analysis_stage,
}
