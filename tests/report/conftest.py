"""Fixtures for the report tests: complete studies written by fake stages, a plain one, one with
early prediction (and stop_early) and one scoring several head criteria. The fakes here extend
tests/study's: real evaluation records (gold documents at known depths), per-example predictions,
a falling training loss, and knockout and patching results with per-example rows, so that every
section of the report has its input."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "study"))

N_EVAL = 20
N_DOCS = 5
# Per set: the share of examples answered right (fixed examples, the same ids for every set).
QUALITY = {"hh": 0.85, "hl": 0.6, "lh": 0.5, "ll": 0.3, "sym": 0.1, "base": 0.35}


def _record(i: int, kind: str):
    from needlework.data.records import Document, Needle, Record

    gold = i % N_DOCS  # depths 0, .25, .5, .75, 1 in turn
    answer = f"Answer{i}"
    docs = [
        Document(f"d{j}", f"Title {j}", f"Filler text {j}." + (f" The answer is {answer}." if j == gold else "")) for j in range(N_DOCS)
    ]
    start = docs[gold].text.index(answer)
    return Record(
        id=f"e{i}",
        task="mdqa",
        concept="high",
        context="high",
        documents=docs,
        question=f"What is the answer of item {i} ({kind})?",
        answers=[answer],
        needles=[Needle(gold, start, start + len(answer))],
        gold_docs=[gold],
    )


def fake_data(ctx):
    from needlework.artifacts import DataSet

    s = ctx.node.slice
    recs = [_record(i, s["kind"]) for i in range(s["n"])]
    DataSet(records=recs, info={"n": s["n"], "kind": s["kind"], "task": s["task"], "length": s["length"]}).write(ctx.out)


def _correct(set_name: str, i: int) -> float:
    """Right on a fixed share of examples; the middle depth loses one more for every set."""
    q = QUALITY.get(set_name, 0.4)
    return float((i * 7) % N_EVAL < round(q * N_EVAL) and not (i % N_DOCS == 2 and i % 4 == 2))


def _metric(v):
    import numpy as np

    from needlework.evaluate.bootstrap import bootstrap_ci

    lo, hi = bootstrap_ci(np.asarray(v, float), 500)
    return {"mean": float(np.mean(v)), "lo": lo, "hi": hi}


def fake_evaluate(ctx):
    import pandas as pd

    import study_helpers as H
    from needlework.artifacts import DataSet, EvalResult

    recs = DataSet.read(ctx.inputs["eval_data"]).records
    rows = []
    for i, r in enumerate(recs):
        ok = _correct(ctx.node.set, i)
        rows.append({"id": r.id, "task": "mdqa", "output": r.answers[0] if ok else "wrong", "score": ok, "subspan_acc": ok, "f1": ok})
    df = pd.DataFrame(rows)
    m = {"subspan_acc": _metric(df["score"]), "f1": _metric(df["f1"])}
    summ = {
        "n": len(df),
        "model_config": H.MODEL,
        "shape": H.SHAPE,
        "options": {},
        "tasks": {"mdqa": {"n": len(df), "primary": "subspan_acc", "metrics": m}},
    }
    EvalResult(predictions=df, summary=summ).write(ctx.out)


def _fit(ctx):
    """tests/study's fake training, after a falling loss logged at ten steps."""
    import study_helpers as H
    from needlework.artifacts import TrainRun

    with open(ctx.out / TrainRun.LOG, "a") as log:
        for step in range(10, 100, 10):
            log.write(json.dumps({"step": step, "loss": 1.0 + 2.0 * 0.7 ** (step / 10)}) + "\n")
    H._fake_fit(ctx)


def fake_train(ctx):
    from needlework.study.stages import train_stage

    train_stage(ctx, fit=_fit)


def _limit(ctx, name: str) -> int:
    return ctx.node.slice[name].get("limit") or N_EVAL


def fake_knockout(ctx):
    """Top-3 knocked out loses most answers; random sets of 3 lose one or none."""
    import pandas as pd

    import study_helpers as H
    from needlework.artifacts import KnockoutResult
    from needlework.evaluate.bootstrap import paired_diff_ci

    n, seeds = _limit(ctx, "knockout"), ctx.node.slice["knockout"].get("random_seeds", 2)
    base = [1.0 if i % 5 else 0.0 for i in range(n)]
    conds = {"baseline": base, "top": [1.0 if i % 6 == 1 else 0.0 for i in range(n)]}
    conds |= {f"random_{s}": [0.0 if i == s else v for i, v in enumerate(base)] for s in range(seeds)}
    per = pd.DataFrame([{"condition": c, "id": f"e{i}", "task": "mdqa", "score": v} for c, vs in conds.items() for i, v in enumerate(vs)])
    summ_c = {}
    for c, vs in conds.items():
        d, lo, hi = paired_diff_ci(vs, base, 500)
        m = {"subspan_acc": _metric(vs)}
        summ_c[c] = {"n_heads": 0 if c == "baseline" else 3, "tasks": {"mdqa": {"n": n, "primary": "subspan_acc", "metrics": m}}}
        summ_c[c]["delta_vs_baseline"] = {"mdqa": {"mean": d, "lo": lo, "hi": hi}}
    summ = {"model_config": H.MODEL, "shape": H.SHAPE, "n": n, "conditions": summ_c, "random_mean": {}}
    KnockoutResult(per_example=per, summary=summ).write(ctx.out)


def fake_patch(ctx):
    """Source right on all, target on none; the 3-head intersection brings back 3 in 4, the 1-head
    complement 1 in 4; their size-matched random controls (2 seeds each) almost nothing."""
    import pandas as pd

    import study_helpers as H
    from needlework.artifacts import PatchResult
    from needlework.evaluate.config import EvalConfig
    from needlework.interventions.patch import _table

    n = _limit(ctx, "patch")
    sets = {"intersection": {1, 2, 3}, "complement": {4}}
    sets |= {f"random_{k}_{s}": set(range(10 * s, 10 * s + len(sets[k]))) for k in ("intersection", "complement") for s in range(2)}
    scores = {"source": [1.0] * n, "target": [0.0] * n, "intersection": [float(i % 4 != 0) for i in range(n)]}
    scores |= {"complement": [float(i % 4 == 0) for i in range(n)]}
    scores |= {k: [float(i == 0) for i in range(n)] for k in sets if k.startswith("random_")}
    per = pd.DataFrame([{"condition": c, "id": f"e{i}", "task": "mdqa", "score": v} for c, vs in scores.items() for i, v in enumerate(vs)])
    table, md = _table(per, sets, EvalConfig(n_boot=300), "each")
    summ = {"model_config": H.MODEL, "source": H.MODEL, "target": H.MODEL, "shape": H.SHAPE, "n": n, "sets": {}, "table": table}
    summ["config"] = {"random_like": "each"}
    PatchResult(per_example=per, summary=summ, markdown=md).write(ctx.out)


def report_stages() -> dict:
    import study_helpers as H

    return {
        **H.fake_stages(),
        "data": fake_data,
        "evaluate": fake_evaluate,
        "train": fake_train,
        "knockout": fake_knockout,
        "patch": fake_patch,
    }


def report_config(early: bool = False, criteria: bool = False) -> dict:
    """The fake study of the report tests (with early prediction and stop_early, or with the query and
    output criteria scored beside retrieval)."""
    import study_helpers as H

    cfg = H.fake_early_config(stop_early=True) if early else H.fake_criteria_config() if criteria else H.fake_config()
    cfg["sizes"]["n_eval"] = N_EVAL
    cfg["knockout"]["limit"] = 12
    cfg["patch"]["limit"] = 12
    cfg["patch"]["kinds"] = ["intersection", "complement", "random"]
    return cfg


def _fake_study(out: Path, cfg: dict) -> Path:
    from rich.console import Console

    from needlework.study.config import from_dict
    from needlework.study.engine import run_study

    run_study(from_dict(cfg), out, stages=report_stages(), console=Console(file=io.StringIO()), report=False)
    return out


@pytest.fixture(scope="module")
def fake_study(tmp_path_factory) -> Path:
    return _fake_study(tmp_path_factory.mktemp("study"), report_config())


@pytest.fixture(scope="module")
def fake_early_study(tmp_path_factory) -> Path:
    return _fake_study(tmp_path_factory.mktemp("early"), report_config(early=True))


@pytest.fixture(scope="module")
def fake_criteria_study(tmp_path_factory) -> Path:
    return _fake_study(tmp_path_factory.mktemp("criteria"), report_config(criteria=True))
