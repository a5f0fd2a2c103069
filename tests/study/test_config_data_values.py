"""Every value of a set's `generate:` / `load:` options that the generator or the loader would
reject fails when the study config loads (and so in `needlework study --dry-run`), named by its key
path, instead of when that data stage runs after other sets have trained."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import study_helpers as H
from needlework.errors import NeedleworkError
from needlework.study.config import from_dict, load_config

SYM = "tasks.mdqa.train_sets.sym.generate"


def _cfg(**generate) -> dict:
    cfg = copy.deepcopy(H.fake_config())
    cfg["tasks"]["mdqa"]["train_sets"]["sym"]["generate"].update(generate)
    return cfg


def _loaded(**load) -> dict:
    cfg = copy.deepcopy(H.fake_config())
    cfg["tasks"]["mdqa"]["train_sets"]["ll"] = {"kind": "limited", "load": {"format": "mdqa", "path": "data/train.jsonl.gz", **load}}
    return cfg


def _fails(cfg: dict, match: str) -> NeedleworkError:
    with pytest.raises(NeedleworkError, match=match) as e:
        from_dict(cfg)
    assert e.value.fix  # every error says what to do
    return e.value


@pytest.mark.parametrize(
    "opts, key, match",
    [
        ({"concept": "symbolik"}, "concept", r"'symbolik' \(not one of high, low, symbolic\)"),
        ({"context": "medium"}, "context", r"'medium' \(not one of high, low\)"),
        ({"depth": 150}, "depth", "150 is not a percentage in 0..100"),
        ({"depth": "middle"}, "depth", "'middle' is not a percentage"),
        ({"relations": ["spouse", "rival"]}, "relations", "unknown relation.*rival"),
        ({"relations": "spouse"}, "relations", "expected a list, got str"),
        ({"hops": "0-9"}, "hops", "not N or LO-HI within 1..6"),
        ({"insight_docs": "3-40"}, "insight_docs", "not N or LO-HI within 1..32"),
        ({"hard_negatives": -1}, "hard_negatives", "must be at least 0"),
        ({"hard_negatives": "3"}, "hard_negatives", "expected int, got str"),
        ({"kv_pairs": 0}, "kv_pairs", "must be at least 1"),
        ({"kv_dicts": 0}, "kv_dicts", "must be at least 1"),
        ({"insights": -2}, "insights", "must be at least 0"),
        ({"chat": "yes"}, "chat", "expected bool"),
        ({"context": "high", "haystack": "no/such/folder"}, "haystack", "haystack no/such/folder does not exist"),
    ],
)
def test_bad_generator_value_fails_on_load_with_its_key_path(opts, key, match):
    _fails(_cfg(**opts), rf"config key `{SYM}.{key}`: .*{match}")


def test_bad_value_of_the_evaluation_set_is_named_too():
    cfg = copy.deepcopy(H.fake_config())
    cfg["tasks"]["mdqa"]["eval_set"]["generate"]["depth"] = -5
    _fails(cfg, r"`tasks.mdqa.eval_set.generate.depth`: --depth -5")


def test_values_the_study_fills_in_are_checked_where_the_config_sets_them():
    cfg = copy.deepcopy(H.fake_config())
    cfg["tasks"]["mdqa_long"] = cfg["tasks"].pop("mdqa")  # a generated set's task is the name under tasks:
    e = _fails(cfg, r"config key `tasks.mdqa_long`: unknown task 'mdqa_long' \(not one of mdqa, musique, summhay, kv\)")
    assert "under `tasks:`" in e.fix
    cfg = copy.deepcopy(H.fake_config())
    cfg["tasks"]["kv"] = cfg["tasks"].pop("mdqa")
    _fails(cfg, r"`tasks.kv.eval_set.generate.concept`: the kv task is symbolic only")


def test_relations_that_cannot_chain_fail_for_musique():
    cfg = copy.deepcopy(H.fake_config())
    cfg["tasks"]["musique"] = cfg["tasks"].pop("mdqa")
    cfg["tasks"]["musique"]["train_sets"]["sym"]["generate"]["relations"] = ["birth_date"]
    _fails(cfg, r"`tasks.musique.train_sets.sym.generate.relations`: cannot build \d-hop chains")
    cfg["tasks"]["musique"]["train_sets"]["sym"]["generate"].update(relations=["spouse", "employer"], hops=2)
    from_dict(cfg)  # spouse then employer: 2 hops chain


@pytest.mark.parametrize(
    "opts, key, match",
    [
        ({"format": "mdqaa"}, "format", r"unknown format 'mdqaa' \(not one of mdqa, musique, summhay"),
        ({"format": "musique"}, "format", "format 'musique' reads musique examples, but this set belongs to task 'mdqa'"),
        ({"format": 3}, "format", "expected str"),
        ({"depth": 101}, "depth", "--depth 101 is not 0-100 or random"),
        ({"depth": [50]}, "depth", r"expected float or str or null, got list \[50\]"),
        ({"limited": ["who", "whoo"]}, "limited", "'whoo': no example can have that type"),
        ({"limited": "who"}, "limited", "expected a list, got str"),
        ({"insight_threshold": 1.5}, "insight_threshold", r"1.5 is not in \(0, 1\]"),
        ({"tolerance_tokens": -1}, "tolerance_tokens", "negative"),
    ],
)
def test_bad_loader_value_fails_on_load_with_its_key_path(opts, key, match):
    _fails(_loaded(**opts), rf"config key `tasks.mdqa.train_sets.ll.load.{key}`: .*{match}")


def test_good_values_pass():
    from_dict(_cfg(depth=50, hops=3, relations=["spouse", "employer"], insight_docs="2-4", hard_negatives=0))
    from_dict(_cfg(depth="random", haystack="no/such/folder"))  # low context: the haystack is not used
    from_dict(_loaded(limited=["who", "when"], depth="random"))
    from_dict(_loaded(format="hf:someone/mdqa:train", limited=["anything"]))  # hf rows: types known once read
    cfg = _loaded()
    cfg["tasks"]["musique"] = cfg["tasks"].pop("mdqa")
    cfg["tasks"]["musique"]["train_sets"]["ll"]["load"].update(format="musique", limited=["2hop", "3hop1", "4hop"])
    from_dict(cfg)


def test_relative_haystack_resolves_against_the_config_folder(tmp_path, monkeypatch):
    (tmp_path / "hay").mkdir()
    (tmp_path / "hay" / "a.txt").write_text("Some prose.\n")
    p = tmp_path / "study.yaml"
    p.write_text(yaml.safe_dump(_cfg(context="high", haystack="hay")))
    monkeypatch.chdir(tmp_path.parent)  # not where the haystack is
    cfg = load_config(p)
    assert cfg.tasks["mdqa"].train_sets["sym"].generate["haystack"] == str((tmp_path / "hay").resolve())


def test_dry_run_fails_before_planning_with_the_key_path(tmp_path):
    p = tmp_path / "study.yaml"
    p.write_text(yaml.safe_dump(_cfg(concept="symbolik")))
    out = tmp_path / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    res = subprocess.run(
        [sys.executable, "-m", "needlework.cli", "study", str(p), "--out", str(out), "--dry-run"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert res.returncode == 2, res.stderr
    assert f"config key `{SYM}.concept`: unknown concept 'symbolik' (not one of high, low, symbolic)" in res.stderr
    assert "fix: use high, low or symbolic" in res.stderr
    assert not out.exists()


def test_dry_run_takes_overrides_after_the_config(tmp_path):
    """`needlework study CONFIG KEY=VALUE ... --dry-run`: the override reaches the plan (a bad one
    fails before planning, named with the fix)."""
    p = tmp_path / "study.yaml"
    p.write_text(yaml.safe_dump(_cfg()))
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    run = lambda *a: subprocess.run(  # noqa: E731
        [sys.executable, "-m", "needlework.cli", "study", str(p), *a, "--out", str(tmp_path / "run"), "--dry-run"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    plain, early = run(), run("early.fractions=[0.5,1.0]")
    assert plain.returncode == early.returncode == 0, early.stderr
    assert " probe " not in plain.stdout and early.stdout.count(" probe ") >= 2  # probes at 50% and 100%
    bad = run("early.fractions=half")
    assert bad.returncode == 2 and "early.fractions" in bad.stderr and "fix:" in bad.stderr


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_pass_the_value_checks(path):
    load_config(path)  # (tests/test_configs.py also plans them)
