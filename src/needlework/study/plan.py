"""The study's plan: which stage nodes a config makes, per (model, task, training set), with each
node's config slice (what determines its output) and its inputs. The engine (`study.engine`) runs
them in the order `build_plan` gives, every node after its inputs.

Per training set: data -> train -> evaluate, score -> compare; knockout and patching for the
selected sets; per task an analysis over the sets. With early prediction (`early.fractions`)
training saves snapshots at those fractions, and a probe node per (set, fraction) scores a
snapshot's heads against the reference model's final heads; with `early.stop_early` every set but
the reference trains in segments, one train node per segment, and a gate node after each gate
fraction decides which sets go on (the next segment of a stopped set carries its weights forward).
With several head criteria (`score.criteria`) the analysis also reads the reference's head scores
(the criteria's agreement). Keys that a feature adds to a slice are left out while it is off, so
that studies without it keep their cached stages.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from needlework.data.tasks import answer_budget
from needlework.heads.config import ScoreConfig
from needlework.io import hash_file
from needlework.study.config import StudyConfig, section_dict
from needlework.study.nodes import Node

__all__ = ["build_plan", "heads_slice", "score_slice", "selected"]


def score_slice(score: ScoreConfig) -> dict[str, Any]:
    """A score config as a slice: `criteria` only when there are some (so that studies scoring one
    criterion keep the keys they had before criteria existed)."""
    d = asdict(score)
    if not d["criteria"]:
        del d["criteria"]
    return d


def heads_slice(cfg: StudyConfig) -> dict[str, Any]:
    """The `heads:` rule as a slice: `criterion` only when it is set (as `score_slice`)."""
    d = asdict(cfg.heads)
    if d["criterion"] is None:
        del d["criterion"]
    return d


def _set_slice(cfg: StudyConfig, task: str, sname: str | None, m: str) -> dict[str, Any]:
    t = cfg.tasks[task]
    s = t.eval_set if sname is None else t.train_sets[sname]
    d = asdict(s)
    d.pop("label", None)
    d["n"] = s.n or (cfg.sizes.n_eval if sname is None else cfg.sizes.n_train)
    d["seed"] = s.seed if s.seed is not None else (cfg.seed + 1000 if sname is None else cfg.seed)
    if s.file:
        d["file_hash"] = hash_file(s.file) if Path(s.file).exists() else "missing"
    if s.load and Path(str(s.load.get("path", ""))).is_file():
        d["load_hash"] = hash_file(s.load["path"])
    # Records are fitted as the model sees them: with the chat setting of the stage that reads them,
    # and never longer than the task's length (an evaluation record, prompt + answer + EOS, at most
    # length - budget + 1, so that its prompt and answer budget fit), so a task at the model's
    # context fits it.
    if sname is None:
        fit = {"chat": cfg.eval.chat, "max_tokens": t.length - answer_budget(task, cfg.eval.max_new_tokens) + 1}
    else:
        fit = {"chat": cfg.train.chat, "max_tokens": t.length}
    role = "eval" if sname is None else "train"
    return {"task": task, "length": t.length, "tokenizer": cfg.models[m].name, "role": role, **fit, **d}


def _first_covers(have: int | None, want: int | None) -> bool:
    """Whether a stage that took the first `have` evaluation records (None: all) holds the first
    `want` (None: all) of them: what a later stage may then read instead of running again."""
    return have is None or (want is not None and want <= have)


def selected(cfg: StudyConfig, section: str, task: str) -> list[str]:
    """Training sets that knockout (`knockout.train_sets`) or patching (`patch.targets`) runs on for a task."""
    sec = getattr(cfg, section)
    t = cfg.tasks[task]
    if not sec.enabled:
        return []
    choice = sec.train_sets if section == "knockout" else sec.targets
    names = [n for n, s in t.train_sets.items() if s.kind != "none"]
    if choice == "all":
        out = names
    elif choice == "reference":
        out = [t.reference]
    elif choice == "none":
        out = []
    else:
        out = [t.reference if c == "reference" else c for c in choice]
    if section == "patch":
        out = [n for n in out if n != t.reference]  # the reference is the source
    return [n for n in names if n in out]


@dataclass
class _TaskPlan:
    """The nodes of one (model, task) as they are made (`add`), with the slices they share. Every
    slice holds the resolved options (defaults included), so a changed default re-runs."""

    cfg: StudyConfig
    model: str
    task: str
    nodes: list[Node] = field(default_factory=list)

    def add(self, stage: str, slice_: dict[str, Any], deps: dict[str, Node] | None = None, set_: str = "", suffix: str = "") -> Node:
        label = "/".join(x for x in (self.model, self.task, set_) if x) + suffix
        node = Node(stage, label, slice_, deps or {}, model=self.model, task=self.task, set=set_)
        self.nodes.append(node)
        return node

    @property
    def model_slice(self) -> dict[str, Any]:
        return asdict(self.cfg.models[self.model])

    def train(self, sname: str, data: Node, evalset: Node, stop_at: float | None = None, **deps: Node) -> Node:
        """A train node: the training options, with the early-prediction fractions as snapshots
        (the key is left out when there are none, so that studies without them keep their cached
        training) and then the probe that training scores at each of them on the model in memory
        (`probe`: the probe stage's score options; `probe_data`: the evaluation set). `stop_at`:
        a stop_early segment, trained up to that fraction."""
        opts = self.cfg.train.to_dict()
        snapshots = sorted(set(opts.pop("snapshots")) | set(self.cfg.early.fractions))
        slice_ = {"model": self.model_slice, "train": {**opts, "snapshots": snapshots} if snapshots else opts}
        ups = {"data": data, **deps}
        in_training = sorted(f for f in self.cfg.early.fractions if not (f == 1 and self.final_probe_reuses_score()))
        if in_training:
            slice_["probe"] = {"score": score_slice(self.probe_score()), "fractions": in_training}
            ups["probe_data"] = evalset
        if stop_at is not None:
            slice_["stop_at"] = stop_at
        return self.add("train", slice_, ups, sname, "" if stop_at in (None, 1) else f"@{stop_at:g}")

    def probe_score(self) -> ScoreConfig:
        """What a probe scores: the main criterion only, in teacher mode, on the first `probe_n`
        evaluation examples."""
        task_score = self.cfg.task_score(self.task)
        score = task_score.for_criterion(self.cfg.main_criterion(self.task))
        return dataclasses.replace(score, mode="teacher", limit=self.cfg.early.probe_n or task_score.limit)

    def scored(self, stage: str, sname: str, evalset: Node, train: dict[str, Node]) -> Node:
        """The evaluate or score node of a training set's final model (the base model for kind none)."""
        up = {"train": train[sname]} if sname in train else {}
        opts = {"eval": asdict(self.cfg.eval)} if stage == "evaluate" else {"score": score_slice(self.cfg.task_score(self.task))}
        return self.add(stage, {"model": self.model_slice, **opts}, {"eval_data": evalset, **up}, sname)

    def final_probe_reuses_score(self) -> bool:
        """Whether the probe at the end of training (fraction 1) reads the final model's own score
        stage instead of scoring it again: that stage scores the same model in teacher mode on the
        same first evaluation examples (at least the probe's), so the probe takes their rows."""
        s = self.cfg.task_score(self.task)
        return s.mode == "teacher" and _first_covers(s.limit, self.probe_score().limit)

    def probe(self, sname: str, fraction: float, train: Node, evalset: Node, ref_heads: Node, final: Node | None = None) -> Node:
        """Heads of the snapshot at `fraction` (`probe_score`, scored by training when it could; at
        fraction 1 read from the final model's score node `final` when given) against the reference
        model's final heads, by the main criterion only (the one it scores)."""
        return self.add(
            "probe",
            {
                "model": self.model_slice,
                "score": score_slice(self.probe_score()),
                "heads": heads_slice(self.cfg),
                "analysis": {k: v for k, v in asdict(self.cfg.analysis).items() if k != "include_reference"},
                "fraction": fraction,
            },
            {"eval_data": evalset, "train": train, "ref_heads": ref_heads} | ({"final_heads": final} if final else {}),
            sname,
            f"@{fraction:g}",
        )


def _segmented_training(
    p: _TaskPlan, data: dict[str, Node], evalset: Node, sets: list[str], probe_of: Callable[[str, float, Node], Node]
) -> tuple[dict[str, list[tuple[float, Node]]], list[Node]]:
    """stop_early: each of `sets` trains in segments that end at each gate fraction and at 1, each
    resuming from the one before; after each gate fraction a gate over the sets' probes decides
    which of them go on (a stopped set's later segments carry its weights at the stop forward).
    Returns each set's segments as (end fraction, node) and the gates."""
    segments: dict[str, list[tuple[float, Node]]] = {n: [] for n in sets}
    gates: list[Node] = []
    for stop in [*p.cfg.early.gates(), 1.0]:
        for n in sets:
            deps = {"previous": segments[n][-1][1]} if segments[n] else {}
            if gates:
                deps["gate"] = gates[-1]
            segments[n].append((stop, p.train(n, data[n], evalset, stop, **deps)))
        if stop < 1:
            deps = {f"probe:{n}": probe_of(n, stop, segments[n][-1][1]) for n in sets} | ({"previous": gates[-1]} if gates else {})
            gates.append(p.add("gate", {"fraction": stop, "margin": p.cfg.early.margin, "sets": sets}, deps, suffix=f"@{stop:g}"))
    return segments, gates


def _task_nodes(cfg: StudyConfig, m: str, task: str) -> list[Node]:
    """The plan of one (model, task): data, training (in segments under stop_early), probes and
    gates (early prediction), evaluation, head scores, comparison, interventions, analysis."""
    p, t = _TaskPlan(cfg, m, task), cfg.tasks[task]
    ref, early = t.reference, cfg.early
    evalset = p.add("data", _set_slice(cfg, task, None, m), set_="eval")
    tuned = [n for n, s in t.train_sets.items() if s.kind != "none"]
    chained = [n for n in tuned if n != ref] if early.stop_early else []
    data: dict[str, Node] = {}
    train: dict[str, Node] = {}
    for n in tuned:
        data[n] = p.add("data", _set_slice(cfg, task, n, m), set_=n)
        if n not in chained:
            train[n] = p.train(n, data[n], evalset)
    score = {ref: p.scored("score", ref, evalset, train)}
    probes: dict[tuple[str, float], Node] = {}

    def probe_of(n: str, f: float, provider: Node) -> Node:
        if (n, f) not in probes:
            final = score[n] if f == 1 and p.final_probe_reuses_score() else None
            probes[n, f] = p.probe(n, f, provider, evalset, score[ref], final)
        return probes[n, f]

    segments, gates = _segmented_training(p, data, evalset, chained, probe_of)
    segments |= {n: [(1.0, train[n])] for n in train}
    train |= {n: segs[-1][1] for n, segs in segments.items()}
    ev: dict[str, Node] = {}
    for n in t.train_sets:
        ev[n] = p.scored("evaluate", n, evalset, train)
        score[n] = score[n] if n == ref else p.scored("score", n, evalset, train)
    for n in tuned:
        for f in early.fractions:
            probe_of(n, f, next(node for stop, node in segments[n] if stop >= f))
    heads, analysis = heads_slice(cfg), asdict(cfg.analysis)
    cmp = {
        n: p.add("compare", {"heads": heads, "analysis": analysis}, {"heads": score[n], "ref_heads": score[ref]}, n) for n in t.train_sets
    }
    _interventions(p, evalset, train, score, ev)
    sets = {n: {"kind": s.kind, "label": s.label or n} for n, s in t.train_sets.items()}
    deps = {f"evaluate:{n}": ev[n] for n in t.train_sets} | {f"compare:{n}": cmp[n] for n in t.train_sets}
    a_slice: dict[str, Any] = {"analysis": analysis, "sets": sets, "reference": ref}
    if early.fractions:  # only then, so that studies without early prediction keep their cached analyses
        a_slice["early"] = asdict(early)
        deps |= {f"probe:{n}@{f:g}": node for (n, f), node in probes.items()} | {f"train:{n}": train[n] for n in tuned}
        deps |= {f"gate:{g.slice['fraction']:g}": g for g in gates}
    criteria = cfg.task_criteria(task)
    if len(criteria) > 1:  # only then, as early: the criteria's agreement reads the reference's head sets
        a_slice |= {"criteria": criteria, "main": cfg.main_criterion(task), "heads": heads}
        deps["ref_heads"] = score[ref]
    p.add("analysis", a_slice, deps)
    return p.nodes


def _interventions(p: _TaskPlan, evalset: Node, train: dict[str, Node], score: dict[str, Node], ev: dict[str, Node]) -> None:
    """Knockout of the selected sets' models, and patching of the reference into the selected
    targets. Their unablated conditions are read from evaluate nodes (knockout's `baseline`,
    patching's `source_eval` and `target_eval`: the same models, records and decoding options)
    when those evaluated at least the intervention's records (`limit`)."""
    cfg, ref = p.cfg, p.cfg.tasks[p.task].reference
    heads, eval_opts = heads_slice(cfg), asdict(cfg.eval)

    def covered(limit: int | None) -> bool:  # the intervention's records: its own limit, else the evaluation's
        return _first_covers(cfg.eval.limit, cfg.eval.limit if limit is None else limit)

    for n in selected(cfg, "knockout", p.task):
        p.add(
            "knockout",
            {"model": p.model_slice, "knockout": section_dict(cfg.knockout), "heads": heads, "eval": eval_opts},
            {"eval_data": evalset, "heads": score[n], "train": train[n]} | ({"baseline": ev[n]} if covered(cfg.knockout.limit) else {}),
            n,
        )
    for n in selected(cfg, "patch", p.task):
        p.add(
            "patch",
            {"model": p.model_slice, "patch": section_dict(cfg.patch), "heads": heads, "eval": eval_opts},
            {
                "eval_data": evalset,
                "source_train": train[ref],
                "target_train": train[n],
                "source_heads": score[ref],
                "target_heads": score[n],
            }
            | ({"source_eval": ev[ref], "target_eval": ev[n]} if covered(cfg.patch.limit) else {}),
            n,
        )


def _in_dependency_order(nodes: list[Node]) -> list[Node]:
    """The nodes with each one after its inputs (the engine resolves them in list order), else as made."""
    out: list[Node] = []
    seen: set[int] = set()

    def visit(node: Node) -> None:
        if id(node) in seen:
            return
        seen.add(id(node))
        for dep in node.deps.values():
            visit(dep)
        out.append(node)

    for node in nodes:
        visit(node)
    return out


def build_plan(cfg: StudyConfig) -> list[Node]:
    """Every node of the study in an order that respects dependencies."""
    return _in_dependency_order([node for m in cfg.models for task in cfg.tasks for node in _task_nodes(cfg, m, task)])
