"""Reading a study folder for the report, and nothing else: its index, the finished nodes, and per
(model, task, training set) the EvalResult, the evaluation records and the training log, found
through the inputs each stage recorded in its stage.json. Derived tables (results rows, depth bins,
examples, knockout and patching views) are computed here from what was read, never by running a
model, so `needlework report` stays fast.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from needlework.artifacts import MANIFEST, STAGE_DONE, STAGE_INFO, STUDY_INDEX, Artifact, DataSet, EvalResult, TrainRun
from needlework.errors import NeedleworkError

__all__ = ["SetRun", "depth_of", "done", "load_study", "read", "results_rows", "set_runs", "stage_inputs", "versions_of"]


def load_study(study_dir: Path) -> dict[str, Any]:
    p = study_dir / STUDY_INDEX
    if not p.exists():
        raise NeedleworkError(f"{study_dir} holds no {STUDY_INDEX}", "point at a folder written by `needlework study`")
    return json.loads(p.read_text())


def done(study_dir: Path, manifest: dict, stage: str) -> list[dict]:
    """The manifest's finished nodes of one stage."""
    return [n for n in manifest["nodes"] if n["stage"] == stage and n.get("dir") and (study_dir / n["dir"] / STAGE_DONE).exists()]


def read(study_dir: Path, node: dict, kind: type[Artifact]):
    """The artifact a finished node left, or None when its folder holds none (yet)."""
    d = study_dir / node["dir"]
    return kind.read(d) if kind.exists(d) else None


def stage_inputs(study_dir: Path, node: dict) -> dict[str, Path]:
    """Input name -> folder of the node's inputs, as its stage.json recorded them (empty when absent)."""
    p = study_dir / node["dir"] / STAGE_INFO
    info = json.loads(p.read_text()) if p.exists() else {}
    return {k: study_dir / v for k, v in info.get("inputs", {}).items()}


def _manifest_versions(study_dir: Path, nodes: list[dict]):
    for n in nodes:
        p = study_dir / n["dir"] / MANIFEST
        if p.exists():
            v = json.loads(p.read_text()).get("versions")
            if v:
                yield v


def versions_of(study_dir: Path, nodes: list[dict]) -> dict[str, Any]:
    """The library versions the first node with a manifest recorded (every artifact records them),
    without the device (`devices_of`)."""
    v = next(_manifest_versions(study_dir, nodes), {})
    return {k: x for k, x in v.items() if k != "device"}


def devices_of(study_dir: Path, nodes: list[dict]) -> list[str]:
    """The hardware the results came from: every device a manifest records, GPUs only when some
    stage used one (data stages run on the CPU of the same machine)."""
    devs = {v["device"] for v in _manifest_versions(study_dir, nodes) if v.get("device")}
    gpus = {d for d in devs if not d.startswith("cpu: ")}
    return sorted(gpus or devs)


# ----------------------------------------------------------------------------------- per training set


@dataclass
class SetRun:
    """What the report shows of one (model, task, training set): its evaluation and training."""

    model: str
    task: str
    set: str
    label: str
    kind: str
    reference: bool
    eval: EvalResult
    records: dict[str, Any] = field(default_factory=dict)  # evaluation records by id (empty: unreadable)
    log: list[dict] = field(default_factory=list)  # training log lines
    train_config: dict | None = None


def _records(d: Path | None, cache: dict) -> dict[str, Any]:
    """Evaluation records by id, read once per data folder; empty when the folder holds none that parse."""
    if d is None:
        return {}
    if d not in cache:
        try:
            cache[d] = {r.id: r for r in DataSet.read(d).records} if DataSet.exists(d) else {}
        except (NeedleworkError, KeyError, TypeError, ValueError, AttributeError):
            cache[d] = {}  # records of another shape: the views that need them are left out
    return cache[d]


def set_runs(study_dir: Path, manifest: dict) -> list[SetRun]:
    """One SetRun per finished evaluate node, in the manifest's order."""
    tasks, cache, out = manifest["config"]["tasks"], {}, []
    for n in done(study_dir, manifest, "evaluate"):
        ev = read(study_dir, n, EvalResult)
        if ev is None:
            continue
        spec = tasks.get(n["task"], {})
        info = spec.get("train_sets", {}).get(n["set"], {})
        inputs = stage_inputs(study_dir, n)
        run = TrainRun(inputs["train"]) if "train" in inputs else None
        cfg_path = run.path / TrainRun.CONFIG if run is not None else None
        out.append(
            SetRun(
                model=n["model"],
                task=n["task"],
                set=n["set"],
                label=info.get("label") or n["set"],
                kind=info.get("kind", ""),
                reference=n["set"] == spec.get("reference"),
                eval=ev,
                records=_records(inputs.get("eval_data"), cache),
                log=run.log() if run is not None else [],
                train_config=json.loads(cfg_path.read_text()) if cfg_path is not None and cfg_path.exists() else None,
            )
        )
    return out


def depth_of(record) -> float | None:
    """Where the gold document sits, 0 (first) to 1 (last): the answer needle's document (else the
    first gold document) over the documents; the generator's `depth_frac` when neither is there."""
    docs = [n.doc for n in record.needles if getattr(n, "role", "answer") == "answer"] or list(record.gold_docs)
    if docs and len(record.documents) > 1:
        return docs[0] / (len(record.documents) - 1)
    d = record.meta.get("depth_frac")
    return float(d) if d is not None else None


def examples(run: SetRun) -> list[dict]:
    """Per evaluation example: question, gold answer, prediction, primary score, correct, depth."""
    out = []
    for p in run.eval.predictions.to_dict("records"):
        rec = run.records.get(p["id"])
        out.append(
            {
                "id": p["id"],
                "question": rec.question if rec is not None else "",
                "gold": rec.answers[0] if rec is not None and rec.answers else "",
                "prediction": str(p.get("output", "")),
                "score": float(p["score"]) if p.get("score") is not None else float("nan"),
                "depth": depth_of(rec) if rec is not None else None,
            }
        )
    return out


# ----------------------------------------------------------------------------------- results.csv

HEAD_STATS = ("recall", "precision", "jaccard", "cosine", "spearman")


def results_rows(runs: list[SetRun], analyses: list[dict]) -> list[dict]:
    """One row per model x task x training set: every evaluation metric with its interval, the head
    statistics against the reference with theirs (when the analysis ran), with several head criteria
    the recall under each (`recall_<criterion>`, `_lo`, `_hi`), and the final loss."""
    by_key = {(an["model"], an["task"], r["set"]): r for an in analyses for r in an["rows"]}
    crit = {(an["model"], an["task"]): an["criteria"] for an in analyses if an.get("criteria")}
    rows = []
    for run in runs:
        t = run.eval.summary["tasks"][run.task]
        row: dict[str, Any] = {"model": run.model, "task": run.task, "set": run.set, "label": run.label, "kind": run.kind}
        row |= {"reference": run.reference, "n_eval": t["n"], "primary": t["primary"]}
        for m, v in t["metrics"].items():
            row |= {m: v["mean"], f"{m}_lo": v["lo"], f"{m}_hi": v["hi"]}
        a = by_key.get((run.model, run.task, run.set), {})
        for m in HEAD_STATS:
            row |= {m: a.get(m), f"{m}_lo": a.get(f"{m}_lo"), f"{m}_hi": a.get(f"{m}_hi")}
        row |= {"n_heads": a.get("n_heads"), "n_above_threshold": a.get("n_above_threshold"), "stopped_at": a.get("stopped_at")}
        c = crit.get((run.model, run.task))
        for name in c["criteria"] if c else []:
            m = c["recall"].get(run.set, {}).get(name) or {}
            row |= {f"recall_{name}": m.get("mean"), f"recall_{name}_lo": m.get("lo"), f"recall_{name}_hi": m.get("hi")}
        losses = [x["loss"] for x in run.log if "loss" in x]
        row["final_loss"] = losses[-1] if losses else None
        rows.append(row)
    return rows
