"""Helpers shared by the study and report tests (importable: tests/study is on sys.path via conftest)."""

from __future__ import annotations


def save_tiny_model(path) -> str:
    """A 2-layer, width-64 random Llama whose vocabulary is SmolLM2's tokenizer, saved with it."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from needlework.models.load import load_tokenizer

    tok = load_tokenizer("smollm2")
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        max_position_embeddings=1024,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        bos_token_id=None,
        tie_word_embeddings=True,
    )
    LlamaForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def tiny_config(model_dir: str, sets: tuple[str, ...] = ("hh", "ll")) -> dict:
    """A study config dict: MDQA at 640 tokens, a few examples, one LoRA epoch, top-3 heads."""
    variants = {
        "hh": {"concept": "high", "context": "high"},
        "ll": {"concept": "low", "context": "low"},
        "hl": {"concept": "high", "context": "low"},
        "lh": {"concept": "low", "context": "high"},
        "sym": {"concept": "symbolic", "context": "low"},
    }
    return {
        "name": "tiny",
        "seed": 0,
        "sizes": {"n_train": 4, "n_eval": 3},
        "models": {"tiny": {"name": model_dir, "device": "cpu"}},
        "tasks": {
            "mdqa": {
                "length": 640,
                "reference": sets[0],
                "eval_set": {"kind": "synthetic", "generate": {"concept": "high", "context": "high"}},
                "train_sets": {s: {"kind": "synthetic", "generate": dict(variants[s])} for s in sets},
            }
        },
        "train": {"epochs": 1, "lr": 1e-3, "lora_r": 4, "lora_alpha": 8, "gradient_checkpointing": False, "progress": False},
        "eval": {"batch_size": 4, "max_new_tokens": 4, "n_boot": 50},
        "score": {"mode": "teacher"},
        "heads": {"rule": "top_k", "top": 3},
        "knockout": {"train_sets": "reference", "random_seeds": 1},
        "patch": {"targets": "all", "kinds": ["intersection", "random"], "random_seeds": 1, "limit": 2},
        "analysis": {"n_boot": 50},
    }


# ----------------------------------------------------------------------------------- fake stages
# Tiny stand-ins that write the real stages' artifacts from a deterministic function of their
# inputs, so engine and report tests run in seconds. `CALLS` records every stage that really ran.

MODEL = {"name": "fake", "adapter": None}
SHAPE = {"n_layers": 4, "n_heads": 3, "n_kv_heads": 3, "head_dim": 8}

CALLS: list[tuple[str, str]] = []


def fake_data(ctx):
    from needlework.artifacts import DataSet

    CALLS.append(("data", ctx.node.label))
    s = ctx.node.slice
    info = {"n": s["n"], "kind": s["kind"], "task": s["task"], "length": s["length"]}
    DataSet(records=[{"i": i} for i in range(s["n"])], info=info).write(ctx.out)


def _fake_fit(ctx):
    """What training writes, from its inputs: a snapshot per fraction up to `stop_at` (the slice's
    segment end), the adapter at the end, and log lines with training and snapshot seconds."""
    import json

    from needlework.artifacts import DataSet, TrainRun
    from needlework.io import write_json

    CALLS.append(("train", ctx.node.label))
    s, run = ctx.node.slice, TrainRun(ctx.out)
    stop = s.get("stop_at", 1.0)
    data = (ctx.inputs["data"] / DataSet.FILES["records"].name).read_bytes()
    weights = f"{ctx.node.set}:{s['train']}".encode() + data  # what a run of these options on this data learns
    with open(ctx.out / TrainRun.LOG, "a") as log:
        for f in s["train"].get("snapshots", []):
            if f <= stop and f not in run.snapshots():
                run.snapshot_dir(f).mkdir(parents=True, exist_ok=True)
                (run.snapshot_dir(f) / "weights.bin").write_bytes(f"{f}".encode() + weights)
                write_json(
                    run.snapshot_dir(f) / TrainRun.SNAPSHOT_INFO,
                    {"fraction": f, "step": round(100 * f), "total_steps": 100, "save_seconds": 0.01},
                )
                log.write(json.dumps({"step": round(100 * f), "snapshot": [f], "snapshot_seconds": 0.01}) + "\n")
        log.write(json.dumps({"step": round(100 * stop), "loss": 1.0, "train_seconds": 10.0 * stop}) + "\n")
    if stop == 1:
        (ctx.out / TrainRun.ADAPTER).mkdir(exist_ok=True)  # a rerun after a kill finds it
        (ctx.out / TrainRun.ADAPTER / "weights.bin").write_bytes(weights)


def fake_train(ctx):
    from needlework.study.stages import train_stage

    train_stage(ctx, fit=_fake_fit)


def fake_evaluate(ctx):
    import pandas as pd

    from needlework.artifacts import EvalResult

    CALLS.append(("evaluate", ctx.node.label))
    order = {"hh": 0.8, "hl": 0.6, "lh": 0.5, "ll": 0.3, "sym": 0.1, "base": 0.2}
    s = order.get(ctx.node.set, 0.4)
    m = {"mean": s, "lo": s - 0.1, "hi": s + 0.1}
    tasks = {ctx.node.task: {"n": 4, "primary": "subspan_acc", "metrics": {"subspan_acc": m, "f1": m}}}
    summ = {"n": 4, "elapsed_s": 0.1, "model_config": MODEL, "shape": SHAPE, "options": {}, "tasks": tasks}
    preds = pd.DataFrame({"id": [f"e{i}" for i in range(4)], "task": ctx.node.task, "output": "x", "score": s})
    EvalResult(predictions=preds, summary=summ).write(ctx.out)


# Per criterion of a fake study scored with several (`score.criteria`): where the criterion's
# ranking starts (its best head is flat head `start`, then start + 1, ...: the reference's top-3
# are retrieval {0-0, 0-1, 0-2}, query {0-1, 0-2, 1-0}, output {1-0, 1-1, 1-2}) and how many of
# their top heads each set loses. Query recall falls as the score rises (Spearman -1 over hl, lh,
# ll, sym), output recall (1, 1/3, 2/3, 0) follows it roughly (Spearman 0.8), retrieval exactly (1).
CRITERIA_START = {"retrieval": 0, "query": 1, "output": 3, "insight": 6, "mass": 9}
DEMOTE = {
    "retrieval": {"hh": 0, "hl": 0, "lh": 1, "ll": 2, "sym": 3, "base": 2},
    "query": {"hh": 0, "hl": 3, "lh": 2, "ll": 1, "sym": 0, "base": 2},
    "output": {"hh": 0, "hl": 0, "lh": 2, "ll": 1, "sym": 3, "base": 2},
}


def _heads(set_name: str, n_layers: int = 4, n_heads: int = 3, criterion: str = "retrieval"):
    """Per-head and per-example tables; less realistic sets lose more of the reference's top-3
    heads (hl none, lh 1, ll 2, sym 3), so head recall falls with realism as the fake scores do.
    Another `criterion` ranks the heads from its own start and loses its own (CRITERIA_START, DEMOTE)."""
    import numpy as np
    import pandas as pd

    base = np.linspace(0.05, 0.9, n_layers * n_heads)[::-1].copy()  # head 0 is the best
    start = CRITERIA_START.get(criterion, 0)
    demote = DEMOTE.get(criterion, DEMOTE["retrieval"]).get(set_name, 1)
    v = np.roll(base, start)  # the criterion's best head is `start`
    v[start : start + demote] = 0.01  # lost top heads
    rows = []
    for ex in range(4):
        for i, x in enumerate(v):
            rows.append(
                {
                    "example_id": f"e{ex}",
                    "layer": i // n_heads,
                    "head": i % n_heads,
                    "score": float(x + 0.01 * ((ex + i) % 3)),
                    "kept": True,
                }
            )
    per = pd.DataFrame(rows)
    g = per.groupby(["layer", "head"])["score"]
    heads = pd.DataFrame({"mean": g.mean(), "std": g.std(ddof=0), "n": g.size()}).reset_index()
    return heads, per


def fake_score(ctx):
    """The fake heads of this set (`_heads`) under the slice's primary score; with `criteria` in the
    slice, the other criteria's in the criteria tables and the options that name them."""
    import pandas as pd

    from needlework.artifacts import HeadScores

    CALLS.append(("score", ctx.node.label))
    score = ctx.node.slice["score"]
    crits = [c for c in score.get("criteria", []) if c != score["score"]]
    heads, per = _heads(ctx.node.set, SHAPE["n_layers"], SHAPE["n_heads"], score["score"] if crits else "retrieval")
    meta: dict = {"model_config": MODEL, "shape": SHAPE}
    if not crits:  # one criterion: what fake studies wrote before criteria existed
        HeadScores(heads=heads, per_example=per, meta=meta).write(ctx.out)
        return
    tables = [(c, *_heads(ctx.node.set, SHAPE["n_layers"], SHAPE["n_heads"], c)) for c in crits]
    c_heads = pd.concat([h.assign(criterion=c) for c, h, _ in tables], ignore_index=True)
    c_per = pd.concat([p.assign(criterion=c) for c, _, p in tables], ignore_index=True)
    meta["options"] = {"score": score["score"], "criteria": crits}
    HeadScores(heads=heads, per_example=per, criteria_heads=c_heads, criteria_per_example=c_per, meta=meta).write(ctx.out)


# How well each fake set learns the reference's top heads early on: its probe recall rises with
# this times (0.6 + 0.4 * fraction of training). hl > lh > ll > sym, as their fake final scores.
QUALITY = {"hh": 0.95, "hl": 0.8, "lh": 0.66, "ll": 0.6, "sym": 0.3}


def fake_snapshot_scores(ctx, weights):
    """Head scores of a fake snapshot on 8 examples: the reference's top-3 heads (0, 1, 2) score
    base x q per example (q rising with the set's quality and the fraction, plus a fixed per-example
    wobble), the other heads 0.6 x base, so the top-3 and its recall follow q, with bootstrap intervals."""
    import math

    import pandas as pd

    from needlework.artifacts import HeadScores

    base = [0.9 - 0.85 * i / 11 for i in range(12)]  # the reference's head order (_heads)
    q = QUALITY.get(ctx.node.set, 0.5) * (0.6 + 0.4 * ctx.node.slice["fraction"])
    rows = []
    for ex in range(8):
        for i, b in enumerate(base):
            x = b * min(1.0, q + 0.15 * math.sin(7 * ex + 3 * i)) if i < 3 else 0.6 * b
            rows.append({"example_id": f"p{ex}", "layer": i // 3, "head": i % 3, "score": x, "kept": True})
    per = pd.DataFrame(rows)
    g = per.groupby(["layer", "head"])["score"]
    heads = pd.DataFrame({"mean": g.mean(), "std": g.std(ddof=0), "n": g.size()}).reset_index()
    return HeadScores(heads=heads, per_example=per, meta={"model_config": {**MODEL, "adapter": str(weights)}, "shape": SHAPE})


def fake_probe(ctx):
    from needlework.study.stages import probe_stage

    CALLS.append(("probe", ctx.node.label))
    probe_stage(ctx, score=fake_snapshot_scores)


def fake_knockout(ctx):
    import pandas as pd

    from needlework.artifacts import KnockoutResult

    CALLS.append(("knockout", ctx.node.label))
    t = ctx.node.task

    def cond(v, n_heads):
        return {
            "n_heads": n_heads,
            "tasks": {t: {"n": 4, "primary": "subspan_acc", "metrics": {"subspan_acc": {"mean": v, "lo": v - 0.1, "hi": v + 0.1}}}},
        }

    seeds = ctx.node.slice["knockout"].get("random_seeds", 2)
    conds = {"baseline": cond(0.8, 0), "top": cond(0.2, 3), **{f"random_{i}": cond(0.75 - 0.01 * i, 3) for i in range(seeds)}}
    summ = {"model_config": MODEL, "shape": SHAPE, "n": 4, "conditions": conds, "random_mean": {t: 0.75}}
    KnockoutResult(per_example=pd.DataFrame({"condition": list(conds)}), summary=summ).write(ctx.out)


def fake_patch(ctx):
    import pandas as pd

    from needlework.artifacts import PatchResult

    CALLS.append(("patch", ctx.node.label))
    rows = []
    for cond, v, rec in (("source", 0.8, None), ("target", 0.3, None), ("intersection", 0.5, 0.4), ("random_0", 0.32, 0.04)):
        rows.append(
            {
                "task": ctx.node.task,
                "condition": cond,
                "n_heads": None if rec is None else 3,
                "score": v,
                "lo": v - 0.1,
                "hi": v + 0.1,
                "delta": v - 0.3,
                "delta_lo": v - 0.4,
                "delta_hi": v - 0.2,
                "recovered": rec,
            }
        )
    summ = {"model_config": MODEL, "source": MODEL, "target": MODEL, "shape": SHAPE, "n": 4, "sets": {}, "table": rows}
    PatchResult(per_example=pd.DataFrame({"condition": [r["condition"] for r in rows]}), summary=summ).write(ctx.out)


def fake_stages() -> dict:
    from needlework.study.stages import analysis_stage, compare_stage, gate_stage

    return {
        "data": fake_data,
        "train": fake_train,
        "probe": fake_probe,
        "gate": gate_stage,
        "evaluate": fake_evaluate,
        "score": fake_score,
        "compare": compare_stage,
        "knockout": fake_knockout,
        "patch": fake_patch,
        "analysis": analysis_stage,
    }


def fake_config(sets=("hh", "hl", "lh", "ll", "sym")) -> dict:
    """A config for fake stages: five training sets plus the base model, knockout and patching on."""
    cfg = tiny_config("unused-model", sets=sets)
    cfg["tasks"]["mdqa"]["train_sets"]["base"] = {"kind": "none", "label": "no fine-tuning"}
    cfg["patch"] = {"targets": ["ll", "sym"], "kinds": ["intersection", "random"]}
    cfg["analysis"] = {"n_boot": 200}
    return cfg


def fake_early_config(stop_early: bool = False) -> dict:
    """The fake study with early prediction at 25%, 50% and 100% of training (and stop_early)."""
    cfg = fake_config()
    cfg["early"] = {"fractions": [0.25, 0.5, 1.0], "probe_n": 8, "stop_early": stop_early, "margin": 0.34}
    return cfg


def slow_train(ctx):
    import time

    time.sleep(0.4)  # long enough that a second worker process takes other stages meanwhile
    fake_train(ctx)


def slow_evaluate(ctx):
    import time

    time.sleep(0.4)
    fake_evaluate(ctx)


def slow_stages() -> dict:
    return {**fake_stages(), "train": slow_train, "evaluate": slow_evaluate}


def fake_criteria_config(criterion: str | None = None) -> dict:
    """The fake study scoring retrieval, query and output heads (`score.criteria`), the main
    criterion `criterion` (None: retrieval, the primary)."""
    cfg = fake_config()
    cfg["score"]["criteria"] = ["query", "output"]
    if criterion is not None:
        cfg["heads"]["criterion"] = criterion
    return cfg
