"""Head criteria in the study (`score.criteria`, `heads.criterion`): config validation, the plan's
slices (unchanged for studies without criteria, so their cached stages stay valid), the compare
stage per criterion, and the analysis' best-predictor ranking and agreement matrix on cases whose
answers are known (the fake scores of study_helpers: CRITERIA_START, DEMOTE)."""

from __future__ import annotations

import copy
import hashlib
import io
import json
import math
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import yaml
from rich.console import Console

import study_helpers as H
from needlework.artifacts import Analysis, Comparison, HeadScores
from needlework.errors import NeedleworkError
from needlework.study.analysis import agreement, criteria_analysis, rank_predictors, reference_head_sets
from needlework.study.config import dump_config, from_dict, load_config
from needlework.study.engine import build_plan, run_study
from needlework.study.stages import _intervention_config

REPO = Path(__file__).resolve().parents[2]


def _bad(edit, match: str) -> NeedleworkError:
    raw = copy.deepcopy(H.fake_config())
    edit(raw)
    with pytest.raises(NeedleworkError, match=match) as e:
        from_dict(raw)
    return e.value


def _run(cfg: dict, out: Path):
    H.CALLS.clear()
    return run_study(from_dict(cfg), out, stages=H.fake_stages(), console=Console(file=io.StringIO(), width=200), report=False)


def _result(out: Path, nodes, stage: str, set_: str = "") -> dict:
    n = next(n for n in nodes if n.stage == stage and n.set == set_)
    return (Analysis if stage == "analysis" else Comparison).read(out / "stages" / stage / n.key).result


# ----------------------------------------------------------------------------------- config


def test_heads_criterion_must_be_scored_for_every_task():
    e = _bad(lambda c: c["heads"].update(criterion="query"), r"`heads.criterion`: 'query' is not scored for task mdqa")
    assert "add query to `score.criteria`" in e.fix and "its score stage scores retrieval" in e.problem
    _bad(lambda c: c["heads"].update(criterion="copy"), r"`heads.criterion`: 'copy' is not scored")
    _bad(lambda c: c["score"].update(criteria=["query", "qeury"]), r"config section `score`: unknown criterion 'qeury'")
    _bad(lambda c: c["knockout"].update(criterion="query"), r"`knockout.criterion`: is set by the study itself")
    _bad(lambda c: c["patch"].update(criterion="query"), r"`patch.criterion`: is set by the study itself")

    def two_tasks(c):  # the second task scores no further criterion: query is not there
        c.update(H.fake_criteria_config("query"))
        c["tasks"]["musique"] = copy.deepcopy(c["tasks"]["mdqa"])
        c["tasks"]["musique"]["score"] = {"criteria": []}

    e = _bad(two_tasks, r"'query' is not scored for task musique")
    assert "`tasks.musique.score`" in e.fix
    cfg = from_dict(H.fake_criteria_config("output"))
    assert cfg.task_criteria("mdqa") == ["retrieval", "query", "output"] and cfg.main_criterion("mdqa") == "output"
    assert from_dict(yaml.safe_load(dump_config(cfg))) == cfg
    assert from_dict(H.fake_config()).main_criterion("mdqa") == "retrieval"  # unset: the primary score


def test_gpu_mdqa_config_scores_query_and_output_and_demo_does_not():
    gpu = load_config(REPO / "configs" / "gpu-mdqa.yaml")
    assert gpu.task_criteria("mdqa") == ["retrieval", "query", "output"]
    assert load_config(REPO / "configs" / "demo.yaml").task_criteria("mdqa") == ["retrieval"]


# ----------------------------------------------------------------------------------- the plan


def _plan_digest(cfg) -> str:
    nodes = [
        {"stage": n.stage, "label": n.label, "slice": n.slice, "deps": {k: f"{d.stage}:{d.label}" for k, d in n.deps.items()}}
        for n in build_plan(cfg)
    ]
    return hashlib.sha256(json.dumps(nodes, sort_keys=True).encode()).hexdigest()[:16]


def _keys(obj) -> set[str]:
    if isinstance(obj, dict):
        return set(obj) | {k for v in obj.values() for k in _keys(v)}
    if isinstance(obj, list):
        return {k for v in obj for k in _keys(v)}
    return set()


def test_studies_without_criteria_keep_every_slice_hence_their_cached_stages():
    """Every node's slice and inputs, as before criteria existed: criteria add nothing to a study that
    does not ask for them. The digests were computed with this function at commit 8f732be (before
    `score.criteria` and `heads.criterion`) and changed once on purpose since: the data slices gained
    `chat` and `max_tokens` (records fitted as the model sees them, never beyond the task's length,
    evaluation prompts leaving room for the answer budget); and the early-prediction digest once more:
    its train nodes gained the probe that training scores on the model in memory (`probe`, `probe_data`),
    and its probes at the end of training read the final model's score node (`final_heads`); and all
    four once more: knockout and patching read their unablated conditions from evaluate nodes
    (`baseline`, `source_eval`, `target_eval`).
    A change here re-runs every cached stage of existing studies: change a digest only on purpose."""
    assert _plan_digest(from_dict(H.fake_config())) == "002aecd5ecc7dd72"
    assert _plan_digest(from_dict(H.fake_early_config(stop_early=True))) == "8f32970f78ef70b7"
    assert _plan_digest(from_dict(H.tiny_config("tiny-model"))) == "c37940b308ead276"
    assert _plan_digest(load_config(REPO / "configs" / "demo.yaml")) == "70a19c3ebb77b063"
    for n in build_plan(from_dict(H.fake_early_config())):
        assert not {"criteria", "criterion"} & _keys(n.slice), n.label
        assert n.stage != "analysis" or "ref_heads" not in n.deps  # it reads the reference's heads only for criteria


def test_the_plan_with_criteria():
    nodes = build_plan(from_dict(H.fake_criteria_config("output")))
    scores = [n for n in nodes if n.stage == "score"]
    assert scores and all(n.slice["score"]["criteria"] == ["query", "output"] for n in scores)
    an = next(n for n in nodes if n.stage == "analysis")
    assert an.slice["criteria"] == ["retrieval", "query", "output"] and an.slice["main"] == "output"
    assert an.slice["heads"] == {"rule": "top_k", "top": 3, "threshold": 0.1, "criterion": "output"}
    assert an.deps["ref_heads"].stage == "score" and an.deps["ref_heads"].set == "hh"  # the reference's head sets
    for n in nodes:
        if n.stage in ("compare", "knockout", "patch"):
            assert n.slice["heads"]["criterion"] == "output", n.label
    # knockout and patching rank heads by the main criterion
    ko = next(n for n in nodes if n.stage == "knockout")
    kcfg = _intervention_config(SimpleNamespace(node=ko), "knockout")
    assert kcfg.criterion == "output" and kcfg.top == 3 and kcfg.threshold is None
    pa = next(n for n in nodes if n.stage == "patch")
    assert _intervention_config(SimpleNamespace(node=pa), "patch").criterion == "output"
    # a probe scores only the main criterion (teacher mode), which it compares with the reference's
    early = H.fake_criteria_config("output") | {"early": {"fractions": [0.5, 1.0], "probe_n": 8}}
    probe = next(n for n in build_plan(from_dict(early)) if n.stage == "probe")
    assert probe.slice["score"]["score"] == "output" and "criteria" not in probe.slice["score"]
    assert probe.slice["score"]["mode"] == "teacher" and probe.slice["heads"]["criterion"] == "output"


def test_adding_criteria_reruns_scoring_onward_and_the_old_study_stays_cached(tmp_path):
    _run(H.fake_config(), tmp_path)
    nodes = _run(H.fake_criteria_config(), tmp_path)
    ran = {s for s, _ in H.CALLS}
    assert ran == {"score", "knockout", "patch"}  # fake stages; compare and analysis are not in CALLS
    assert all(n.status == "cached" for n in nodes if n.stage in ("data", "train", "evaluate"))
    assert {n.stage for n in nodes if n.status == "done"} == {"score", "compare", "knockout", "patch", "analysis"}
    nodes = _run(H.fake_config(), tmp_path)  # back to one criterion: everything is still there
    assert H.CALLS == [] and all(n.status == "cached" for n in nodes)


# ----------------------------------------------------------------------------------- compare and analysis


def test_compare_and_analysis_per_criterion(tmp_path):
    """Reference top-3: retrieval {0-0, 0-1, 0-2}, query {0-1, 0-2, 1-0}, output {1-0, 1-1, 1-2};
    set ll loses 2 of its retrieval heads, 1 query and 1 output head. Over hl, lh, ll, sym (scores
    .6 .5 .3 .1) recall is retrieval 1, 2/3, 1/3, 0 (Spearman 1), query 0, 1/3, 2/3, 1 (-1),
    output 1, 1/3, 2/3, 0 (0.8)."""
    nodes = _run(H.fake_criteria_config(), tmp_path)
    ll = _result(tmp_path, nodes, "compare", "ll")
    assert ll["recall"]["mean"] == pytest.approx(1 / 3)  # the main fields: the primary, retrieval
    got = {c: r["recall"]["mean"] for c, r in ll["criteria"].items()}
    assert got == pytest.approx({"retrieval": 1 / 3, "query": 2 / 3, "output": 2 / 3})
    assert ll["criteria"]["retrieval"] == {k: v for k, v in ll.items() if k != "criteria"}
    res = _result(tmp_path, nodes, "analysis")
    c = res["criteria"]
    assert c["main"] == "retrieval" and c["n"] == 4 and c["criteria"] == ["retrieval", "query", "output"]
    assert [p["criterion"] for p in c["predictors"]] == ["retrieval", "output", "query"]  # ranked by Spearman rho
    rho = {p["criterion"]: p["spearman"]["r"] for p in c["predictors"]}
    assert rho == pytest.approx({"retrieval": 1.0, "output": 0.8, "query": -1.0})
    assert rho["retrieval"] == pytest.approx(res["recall_vs_score"]["spearman"]["r"])  # the main row's correlation
    # retrieval is highest, but output's interval (4 sets) reaches it: no single best at this size
    assert c["best"] == "retrieval" and not c["clear"] and c["overlapping"] == ["output"]
    assert c["head_sets"] == {"retrieval": ["0-0", "0-1", "0-2"], "query": ["0-1", "0-2", "1-0"], "output": ["1-0", "1-1", "1-2"]}
    assert [x for row in c["agreement"]["jaccard"] for x in row] == pytest.approx([1, 0.5, 0, 0.5, 1, 0.2, 0, 0.2, 1])
    assert c["agreement"]["shared"] == [[3, 2, 0], [2, 3, 1], [0, 1, 3]]
    assert c["recall"]["sym"]["query"]["mean"] == 1.0 and c["recall"]["hh"]["output"]["mean"] == 1.0


def test_the_main_criterion_gives_the_main_rows(tmp_path):
    nodes = _run(H.fake_criteria_config("query"), tmp_path)
    ll = _result(tmp_path, nodes, "compare", "ll")
    assert ll["recall"]["mean"] == pytest.approx(2 / 3) and ll["criteria"]["query"]["recall"] == ll["recall"]
    res = _result(tmp_path, nodes, "analysis")
    assert res["criteria"]["main"] == "query"
    assert [r["recall"] for r in res["rows"] if r["set"] in res["sets"]] == pytest.approx([0, 1 / 3, 2 / 3, 1])
    assert res["recall_vs_score"]["spearman"]["r"] == pytest.approx(-1.0)


def test_one_criterion_writes_what_it_wrote_before(tmp_path):
    nodes = _run(H.fake_config(), tmp_path)
    assert "criteria" not in _result(tmp_path, nodes, "compare", "ll")
    assert "criteria" not in _result(tmp_path, nodes, "analysis")


# ----------------------------------------------------------------------------------- hand-built cases


def test_agreement_is_the_jaccard_of_head_sets():
    a = agreement({"x": ["0-0", "0-1"], "y": ["0-1", "1-0", "1-1"], "z": []})
    assert a["criteria"] == ["x", "y", "z"] and a["n_heads"] == [2, 3, 0]
    assert a["jaccard"][0][1] == a["jaccard"][1][0] == pytest.approx(1 / 4) and a["shared"][0][1] == 1
    assert a["jaccard"][0][2] == 0 and math.isnan(a["jaccard"][2][2])  # both empty: undefined


def test_rank_predictors_names_a_best_only_when_its_interval_clears_the_others():
    score = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]
    up = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]  # rank-identical to score
    down = up[::-1]
    r = rank_predictors({"down": down, "up": up, "flat": [0.5] * 8}, score, n_boot=200)
    assert r["best"] == "up" and r["clear"] and r["overlapping"] == []
    assert [p["criterion"] for p in r["predictors"]] == ["up", "down", "flat"]  # undefined rho last
    assert math.isnan(r["predictors"][2]["spearman"]["r"]) and not r["predictors"][2]["best"]
    near = [0.0, 0.1, 0.3, 0.2, 0.4, 0.6, 0.5, 0.7]  # two swaps: rho 0.95, interval reaching 1
    r = rank_predictors({"up": up, "near": near}, score, n_boot=200)
    assert r["best"] == "up" and not r["clear"] and r["overlapping"] == ["near"]
    assert rank_predictors({"a": [1.0, 2.0]}, [1.0, 2.0])["clear"] is False  # two sets: no interval


def _scores_with_criteria(means: dict[str, list[float]], n_heads: int = 2) -> HeadScores:
    """HeadScores of means only: the first criterion in the main tables, the others in the criteria table."""

    def table(v):
        return pd.DataFrame({"layer": [i // n_heads for i in range(len(v))], "head": [i % n_heads for i in range(len(v))], "mean": v})

    names = list(means)
    c_heads = pd.concat([table(means[c]).assign(criterion=c) for c in names[1:]], ignore_index=True)
    shape = {"n_layers": len(means[names[0]]) // n_heads, "n_heads": n_heads, "n_kv_heads": n_heads}
    meta = {"shape": shape, "options": {"score": names[0], "criteria": names[1:]}}
    return HeadScores(heads=table(means[names[0]]), criteria_heads=c_heads, meta=meta)


def test_reference_head_sets_follow_the_study_rule():
    ref = _scores_with_criteria({"retrieval": [0.9, 0.5, 0.05, 0.2], "query": [0.3, 0.05, 0.8, 0.6], "output": [2.0, -1.0, 0.5, 3.0]})
    top = reference_head_sets(ref, ["retrieval", "query", "output"], "top_k", 2, 0.1)
    assert top == {"retrieval": ["0-0", "0-1"], "query": ["1-0", "1-1"], "output": ["0-0", "1-1"]}
    above = reference_head_sets(ref, ["retrieval", "query"], "threshold", 2, 0.1)  # mean > 0.1
    assert above == {"retrieval": ["0-0", "0-1", "1-1"], "query": ["0-0", "1-0", "1-1"]}
    recall = {s: {"retrieval": {"mean": x}, "query": {"mean": 1 - x}} for s, x in zip("abc", [0.2, 0.4, 0.6])}
    recall["d"] = {"retrieval": {"mean": None}}  # no recall: left out of the correlations
    res = criteria_analysis(
        ["retrieval", "query"],
        recall,
        {"a": 0.1, "b": 0.2, "c": 0.3, "d": 0.4},
        ["a", "b", "c", "d"],
        above,
        n_boot=50,
    )
    assert res["agreement"]["jaccard"][0][1] == pytest.approx(2 / 4) and res["best"] == "retrieval"
    assert [p["n"] for p in res["predictors"]] == [3, 3]  # a set without a recall drops out of that correlation
