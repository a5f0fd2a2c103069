"""Engine behaviour with fake stages (seconds): caching by input hash, atomic publication, --only,
--dry-run, the study lock, and the manifest the report reads."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from rich.console import Console

import study_helpers as H
from needlework.artifacts import Analysis
from needlework.errors import NeedleworkError
from needlework.study.config import from_dict
from needlework.study.engine import STAGE_COST, build_plan, by_priority, critical_path, run_study
from needlework.study.nodes import Node


def _run(cfg_dict, out, **kw):
    H.CALLS.clear()
    buf = io.StringIO()
    nodes = run_study(from_dict(cfg_dict), out, stages=H.fake_stages(), console=Console(file=buf, width=200), report=False, **kw)
    return nodes, buf.getvalue()


def _status(nodes):
    return {(n.stage, n.label): n.status for n in nodes}


def test_plan_has_every_stage_per_set():
    nodes = build_plan(from_dict(H.fake_config()))
    stages = [(n.stage, n.set) for n in nodes]
    for s in ("hh", "hl", "lh", "ll", "sym"):
        assert ("data", s) in stages and ("train", s) in stages and ("evaluate", s) in stages and ("score", s) in stages
        assert ("compare", s) in stages
    assert ("train", "base") not in stages and ("evaluate", "base") in stages  # kind none: no fine-tuning
    assert [s for st, s in stages if st == "knockout"] == ["hh"]
    assert [s for st, s in stages if st == "patch"] == ["ll", "sym"]  # targets; the reference is the source
    assert [n.stage for n in nodes][-1] == "analysis"


def test_rerun_skips_everything_and_keeps_results(tmp_path):
    nodes, log = _run(H.fake_config(), tmp_path)
    assert all(n.status == "done" for n in nodes)
    assert log.count("✓ done") == len(nodes) and log.count("▶ run") == len(nodes)  # one status line per stage
    first = {(n.stage, n.label): (n.key, n.output_hash) for n in nodes}
    mtimes = {p: p.stat().st_mtime_ns for p in (tmp_path / "stages").glob("*/*/done.json")}
    nodes2, log = _run(H.fake_config(), tmp_path)
    assert H.CALLS == []  # nothing ran
    assert all(n.status == "cached" for n in nodes2)
    assert {(n.stage, n.label): (n.key, n.output_hash) for n in nodes2} == first
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes
    assert "cached" in log
    manifest = json.loads((tmp_path / "study.json").read_text())
    assert {r["dir"] for r in manifest["nodes"]} == {f"stages/{n.stage}/{n.key}" for n in nodes}
    assert not list((tmp_path / "stages").glob("*/.work-*"))  # every work dir was published


def test_changed_option_reruns_only_dependents(tmp_path):
    _run(H.fake_config(), tmp_path)
    cfg = H.fake_config()
    cfg["knockout"]["random_seeds"] = 3
    nodes, _ = _run(cfg, tmp_path)
    assert {s for s, _ in H.CALLS} == {"knockout"}
    cfg["eval"]["max_new_tokens"] = 5  # evaluation options feed evaluate, knockout, patch, then analysis;
    # the answer budget also refits the evaluation set (its prompts leave room for it), which scoring reads
    nodes, _ = _run(cfg, tmp_path)
    ran = sorted({s for s, _ in H.CALLS})
    # analysis stays cached: the fake evaluation writes the same numbers, and keys hash outputs
    assert ran == ["data", "evaluate", "knockout", "patch", "score"]
    assert {n.slice["role"] for n in nodes if n.stage == "data" and n.status != "cached"} == {"eval"}
    assert all(n.status == "cached" for n in nodes if n.stage == "train")


def test_upstream_output_change_propagates(tmp_path):
    """A new training set size changes that set's data and adapter, hence its evaluate/score/patch;
    compare and analysis stay cached because the fake scores they read come out the same."""
    _run(H.fake_config(), tmp_path)
    cfg = H.fake_config()
    cfg["tasks"]["mdqa"]["train_sets"]["ll"]["n"] = 7
    _run(cfg, tmp_path)
    assert sorted(H.CALLS) == sorted(
        [
            ("data", "tiny/mdqa/ll"),
            ("train", "tiny/mdqa/ll"),
            ("evaluate", "tiny/mdqa/ll"),
            ("score", "tiny/mdqa/ll"),
            ("patch", "tiny/mdqa/ll"),
        ]
    )


def test_dry_run_prints_plan_and_runs_nothing(tmp_path):
    _, log = _run(H.fake_config(), tmp_path, dry_run=True)
    assert H.CALLS == [] and not (tmp_path / "stages").exists()
    assert "to run" in log and "after inputs" in log and "0 cached" in log
    _run(H.fake_config(sets=("hh", "ll", "sym")), tmp_path)
    _, log = _run(H.fake_config(), tmp_path, dry_run=True)
    assert H.CALLS == []
    assert "cached" in log and "data      tiny/mdqa/hh" in log


def test_only_runs_named_stages_and_blocks_the_rest(tmp_path):
    nodes, log = _run(H.fake_config(), tmp_path, only={"data"})
    st = _status(nodes)
    assert {s for s, _ in H.CALLS} == {"data"}
    assert st[("train", "tiny/mdqa/hh")] == "skipped" and st[("evaluate", "tiny/mdqa/hh")] == "blocked"
    nodes, _ = _run(H.fake_config(), tmp_path, only={"train", "evaluate"})
    assert {s for s, _ in H.CALLS} == {"train", "evaluate"}
    with pytest.raises(NeedleworkError, match="unknown stage"):
        _run(H.fake_config(), tmp_path, only={"trian"})


def test_failed_stage_leaves_nothing_published_and_resumes(tmp_path):
    stages = H.fake_stages()

    def boom(ctx):
        (ctx.out / "partial.txt").write_text("half")
        raise RuntimeError("killed")

    cfg = from_dict(H.fake_config())
    with pytest.raises(RuntimeError):
        run_study(cfg, tmp_path, stages={**stages, "score": boom}, console=Console(file=io.StringIO()), report=False)
    assert list((tmp_path / "stages" / "score").glob(".work-*"))  # the crash left only a work dir
    assert not [p for p in (tmp_path / "stages" / "score").iterdir() if not p.name.startswith(".")]
    nodes, _ = _run(H.fake_config(), tmp_path)
    assert all(n.status in ("cached", "done") for n in nodes)
    assert ("score", "tiny/mdqa/hh") in H.CALLS
    assert ("data", "tiny/mdqa/hh") not in H.CALLS and ("train", "tiny/mdqa/hh") not in H.CALLS  # done before the crash
    assert not list((tmp_path / "stages").glob("*/.work-*"))


def test_two_processes_share_one_study_folder(tmp_path):
    """Two study processes on one folder (e.g. one per GPU) split the stages: each stage runs
    once in all, both end with every stage done, and the results equal a one-process run."""
    import subprocess
    import sys

    script = Path(__file__).with_name("fake_study_main.py")
    out = tmp_path / "shared"
    procs = [subprocess.Popen([sys.executable, str(script), str(out), str(tmp_path / f"calls{i}.tsv")]) for i in range(2)]
    assert [p.wait(timeout=240) for p in procs] == [0, 0]
    ran, final, per_proc = [], [], []
    for i in range(2):
        mine = []
        for line in (tmp_path / f"calls{i}.tsv").read_text().splitlines():
            parts = tuple(line.split("\t"))
            (final if parts[0] == "#" else mine).append(parts)
        ran += mine
        per_proc.append(len(mine))
    single, _ = _run(H.fake_config(), tmp_path / "single")
    # every stage ran exactly once in all (nodes with equal inputs share one run, as in one process)
    assert len(ran) == len(set(ran)) == sum(n.status == "done" for n in single)
    assert min(per_proc) > 0  # and the work was split
    assert all(f[3] in ("done", "cached") for f in final)
    hashes = {(n.stage, n.label): n.output_hash for n in single}
    assert {(f[1], f[2]): f[4] for f in final} == hashes  # same results as one process


def test_analysis_correlates_recall_with_score(tmp_path):
    nodes, _ = _run(H.fake_config(), tmp_path)
    an = next(n for n in nodes if n.stage == "analysis")
    res = Analysis.read(tmp_path / "stages" / "analysis" / an.key).result
    assert res["n"] == 4 and res["sets"] == ["hl", "lh", "ll", "sym"]  # reference and base left out
    rows = {r["set"]: r for r in res["rows"]}
    assert rows["hh"]["recall"] == 1.0 and rows["hh"]["reference"]
    assert res["loo"]["rows"][0]["set"] == "hl" and len(res["loo"]["rows"]) == 4
    assert res["recall_vs_score"]["n"] == 4
    assert "spearman" in res["recall_vs_score"] and "pearson" in res["cosine_vs_score"]


def test_worker_processes_share_a_study_with_the_same_results(tmp_path):
    one, _ = _run(H.fake_config(), tmp_path / "one")
    buf = io.StringIO()
    cfg = from_dict(H.fake_config())
    two = run_study(
        cfg, tmp_path / "two", stages=H.slow_stages(), console=Console(file=buf, width=200), report=False, workers=2, poll_s=0.05
    )
    assert {(n.stage, n.label): n.output_hash for n in two} == {(n.stage, n.label): n.output_hash for n in one}
    log = (tmp_path / "two" / "logs" / "worker-1.log").read_text()
    by_worker = [n for n in two if n.status == "cached"]  # finished by the other process while this one ran
    assert by_worker and "done" in log and "1 more worker process(es) share the stages" in buf.getvalue()
    with pytest.raises(NeedleworkError, match="workers must be >= 1"):
        run_study(cfg, tmp_path / "three", stages=H.fake_stages(), console=Console(file=io.StringIO()), workers=0)


def test_ready_knockout_and_patch_run_before_the_rest_and_change_nothing(tmp_path):
    """Knockout and patching (long stages at the end of the critical path) start as soon as their
    inputs exist, ahead of the evaluations still waiting in plan order; the results are those of
    plan order."""
    nodes, _ = _run(H.fake_config(), tmp_path / "a")
    order = [stage for stage, _ in H.CALLS]
    first_ko = order.index("knockout")
    assert "evaluate" in order[first_ko:]  # it did not wait for every evaluation
    assert all(n.status == "done" for n in nodes)  # none blocked by an input resolved later in the sweep
    plain = {(n.stage, n.label): n.output_hash for n in nodes}
    again, _ = _run(H.fake_config(), tmp_path / "b")
    assert {(n.stage, n.label): n.output_hash for n in again} == plain


def _node(stage: str, label: str, **deps) -> Node:
    return Node(stage, label, {}, dict(deps))


def test_critical_path_ranks_a_node_by_the_longest_chain_of_work_that_needs_it():
    """Hand-built plan, costs from STAGE_COST: the reference's evaluation heads evaluate -> knockout,
    another set's evaluation only feeds the analysis; a set's data heads data -> train -> evaluate
    -> analysis."""
    data_a, data_b = _node("data", "a"), _node("data", "b")
    train_a, train_b = _node("train", "a", data=data_a), _node("train", "b", data=data_b)
    ev_a, ev_b = _node("evaluate", "a", train=train_a), _node("evaluate", "b", train=train_b)
    ko = _node("knockout", "a", baseline=ev_a, train=train_a)
    an = _node("analysis", "t", a=ev_a, b=ev_b)
    nodes = [data_a, train_a, data_b, train_b, ev_b, ev_a, ko, an]  # dependency order, ev_b before ev_a
    rank = critical_path(nodes)
    c = STAGE_COST
    assert rank[id(an)] == c["analysis"] and rank[id(ko)] == c["knockout"]
    assert rank[id(ev_b)] == c["evaluate"] + c["analysis"]
    assert rank[id(ev_a)] == c["evaluate"] + c["knockout"]  # the longer of its two chains
    assert rank[id(train_a)] == c["train"] + c["evaluate"] + c["knockout"]
    assert rank[id(data_a)] == c["data"] + rank[id(train_a)] and rank[id(data_b)] == c["data"] + c["train"] + rank[id(ev_b)]
    order = by_priority(nodes)
    assert order.index(ev_a) < order.index(ev_b)  # the reference's evaluation first, though later in plan order
    assert order.index(train_a) < order.index(train_b) and order[0] is data_a


def test_a_free_process_takes_the_ready_node_heading_the_critical_path(tmp_path):
    """In a real plan the reference's evaluation (knockout's and patching's baseline) comes after
    the other sets' stages in plan order; with one process it still runs right after the
    reference's training and scoring, before any other set's evaluation."""
    cfg = H.fake_config()
    task = cfg["tasks"]["mdqa"]
    task["train_sets"] = {"base": task["train_sets"].pop("base"), **task["train_sets"]}  # listed first, as configs/gpu-mdqa.yaml
    ref = task["reference"]
    plan = build_plan(from_dict(cfg))
    evals = [n.set for n in plan if n.stage == "evaluate"]
    assert evals.index(ref) > 0  # plan order alone would evaluate another set first
    _run(cfg, tmp_path)
    ran = [(stage, label.rsplit("/", 1)[-1]) for stage, label in H.CALLS]
    first_eval = next(s for st, s in ran if st == "evaluate")
    assert first_eval == ref


def test_interventions_read_their_unablated_conditions_from_evaluate_nodes_that_cover_their_records():
    from needlework.study.plan import build_plan

    def first(cfg: dict, stage: str):
        return next(n for n in build_plan(from_dict(cfg)) if n.stage == stage)

    ko, pa = first(H.fake_config(), "knockout"), first(H.fake_config(), "patch")
    assert ko.deps["baseline"].stage == "evaluate" and ko.deps["baseline"].set == ko.set
    assert ko.deps["baseline"].deps["train"] is ko.deps["train"]  # the same model
    assert pa.deps["source_eval"].deps["train"] is pa.deps["source_train"]
    assert pa.deps["target_eval"].deps["train"] is pa.deps["target_train"]
    cfg = H.fake_config()
    cfg["eval"] = {"limit": 3}
    cfg["knockout"] = {"limit": 2}
    cfg["patch"] |= {"limit": 3}
    assert "baseline" in first(cfg, "knockout").deps and "target_eval" in first(cfg, "patch").deps  # within the 3 evaluated
    cfg["knockout"] = {"limit": 5}
    cfg["patch"] |= {"limit": None}  # patching then takes eval.limit: still covered
    assert "baseline" not in first(cfg, "knockout").deps and "source_eval" in first(cfg, "patch").deps
    cfg["patch"] |= {"limit": 4}  # more records than the evaluate nodes have: evaluated here
    assert not {"source_eval", "target_eval"} & set(first(cfg, "patch").deps)
