"""The whole study with the real stages on a tiny random Llama (SmolLM2's tokenizer): end to end,
kill -9 during training then resume, and a changed option re-running only its dependents."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from rich.console import Console

from needlework.artifacts import Analysis, Comparison, EvalResult, HeadScores, KnockoutResult, PatchResult, TrainRun
from needlework.study.config import from_dict
from needlework.study.engine import run_study

pytestmark = pytest.mark.timeout(600)


def _cfg(model_dir: str) -> dict:
    from study_helpers import tiny_config

    c = tiny_config(model_dir)
    c["score"]["criteria"] = ["query", "output"]  # scored in the retrieval score's forward (teacher mode)
    c["knockout"].update({"random_seeds": 1, "limit": 2})
    c["patch"].update({"kinds": ["intersection"], "limit": 2})
    return c


def _run(cfg: dict, out: Path, report: bool = False):
    return run_study(from_dict(cfg), out, console=Console(file=io.StringIO(), width=200), report=report)


def _hashes(nodes) -> dict:
    return {(n.stage, n.label): n.output_hash for n in nodes}


@pytest.fixture(scope="module")
def baseline(tiny_model_dir, tmp_path_factory):
    """An uninterrupted run of the two-variant study (the results every other run must equal)."""
    out = tmp_path_factory.mktemp("baseline")
    nodes = _run(_cfg(tiny_model_dir), out, report=True)
    return out, nodes


def test_two_variant_study_runs_end_to_end(baseline):
    out, nodes = baseline
    assert all(n.status == "done" for n in nodes)
    assert {n.stage for n in nodes} == {"data", "train", "evaluate", "score", "compare", "knockout", "patch", "analysis"}
    d = {(n.stage, n.set): out / "stages" / n.stage / n.key for n in nodes}
    assert (TrainRun(d[("train", "hh")]).adapter / "adapter_config.json").exists()
    assert not (d[("train", "hh")] / TrainRun.CHECKPOINTS).exists()
    summ = EvalResult.read(d[("evaluate", "ll")]).summary
    assert summ["n"] == 3 and summ["adapter"].endswith("adapter")
    # the adapter's saved settings and rendering are applied and recorded; train and evaluate render alike
    saved_settings = json.loads((d[("train", "ll")] / "adapter" / "needlework_model_config.json").read_text())
    assert saved_settings["rope_theta"] is not None and saved_settings["chat"] is True
    assert summ["model_config"]["rope_theta"] == saved_settings["rope_theta"]
    assert summ["options"]["chat"] is True and summ["trained_chat"] is True
    scores = HeadScores.read(d[("score", "hh")])
    meta = scores.meta
    assert meta["model_config"]["rope_theta"] is not None and meta["options"]["match"] == "loose"
    assert scores.shape == summ["shape"] == {"n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "head_dim": 16}  # recorded by every stage
    heads = scores.heads
    assert len(heads) == 2 * 4 and {"layer", "head", "mean", "std", "n"} <= set(heads.columns)
    ko = KnockoutResult.read(d[("knockout", "hh")]).summary
    assert set(ko["conditions"]) == {"baseline", "top", "random_0"} and ko["conditions"]["top"]["n_heads"] == 3
    base = ko["conditions"]["baseline"]  # read from the evaluate stage's predictions (its first 2 records), not evaluated again
    assert base["from"] == "given evaluation" and base["tasks"]["mdqa"]["n"] == 2 == ko["n"]
    patch = PatchResult.read(d[("patch", "ll")])
    assert [r["condition"] for r in patch.rows()] == ["source", "target", "intersection"] and patch.shape == scores.shape
    assert patch.summary["given"] == ["source", "target"]  # read from the evaluate stages, not evaluated again
    an = Analysis.read(d[("analysis", "")]).result
    assert [r["set"] for r in an["rows"]] == ["hh", "ll"] and an["rows"][0]["recall"] == 1.0
    # the query and output criteria, scored on the same examples, compared and analysed beside retrieval
    assert scores.criteria() == ["retrieval", "query", "output"] and len(scores.criterion("output").heads) == 2 * 4
    cmp = Comparison.read(d[("compare", "ll")]).result
    assert set(cmp["criteria"]) == {"retrieval", "query", "output"} and cmp["criteria"]["retrieval"]["recall"] == cmp["recall"]
    crit = an["criteria"]
    assert crit["main"] == "retrieval" and [len(v) for v in crit["head_sets"].values()] == [3, 3, 3]  # top-3 each
    jac = crit["agreement"]["jaccard"]
    assert [jac[i][i] for i in range(3)] == [1.0, 1.0, 1.0] and all(0 <= x <= 1 for row in jac for x in row)
    assert crit["recall"]["hh"]["query"]["mean"] == 1.0 and crit["n"] == 1 and crit["best"] is None  # one set: nothing to rank
    html = (out / "report" / "index.html").read_text()
    assert "<h2 id='criteria-tiny_mdqa'>" in html and "Too few training sets with distinct recall to rank the criteria" in html
    assert (out / "report" / "index.html").exists() and (out / "config.yaml").exists()
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["models"]["tiny"]["name"] == _cfg(saved["models"]["tiny"]["name"])["models"]["tiny"]["name"]
    # a rerun does nothing and changes nothing
    again = _run(_cfg(saved["models"]["tiny"]["name"]), out)
    assert all(n.status == "cached" for n in again) and _hashes(again) == _hashes(nodes)


def test_kill_during_training_resumes_to_identical_results(baseline, tiny_model_dir, tmp_path):
    base_out, base_nodes = baseline
    cfg_path = tmp_path / "study.yaml"
    cfg_path.write_text(yaml.safe_dump(_cfg(tiny_model_dir)))
    out = tmp_path / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "needlework.cli", "study", str(cfg_path), "--out", str(out)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            if list((out / "stages" / "train").glob(".work-*")):  # the first training has started
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the study ended before training started"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not (out / "stages" / "train").exists() or not [p for p in (out / "stages" / "train").iterdir() if not p.name.startswith(".")]
    before = {p: p.stat().st_mtime_ns for p in (out / "stages").glob("*/*/done.json")}
    assert before, "some data stages should have finished before the kill"
    nodes = _run(_cfg(tiny_model_dir), out)
    finished = {p.parent.name for p in before}
    assert all(n.status == "cached" for n in nodes if n.key in finished)  # finished stages were not redone
    assert all(n.status == "done" for n in nodes if n.key not in finished)
    assert {n.stage for n in nodes if n.status == "cached"} == {"data"}
    assert {p: p.stat().st_mtime_ns for p in before} == before
    assert _hashes(nodes) == _hashes(base_nodes)  # same results as the uninterrupted run
    assert not list((out / "stages").glob("*/.work-*"))


def test_changed_option_reruns_only_dependent_stages(baseline, tiny_model_dir, tmp_path):
    base_out, base_nodes = baseline
    out = tmp_path / "copy"
    shutil.copytree(base_out, out)
    cfg = _cfg(tiny_model_dir)
    cfg["knockout"]["random_seeds"] = 2
    nodes = _run(cfg, out)
    assert {n.stage for n in nodes if n.status == "done"} == {"knockout"}
    cfg["eval"]["max_new_tokens"] = 3  # the answer budget: evaluation prompts are refitted to leave room for it
    nodes = _run(cfg, out)
    ran = {n.stage for n in nodes if n.status == "done"}
    needed = {"data", "evaluate", "score", "knockout", "patch"}
    assert needed <= ran <= needed | {"compare", "analysis"}
    assert {n.slice["role"] for n in nodes if n.stage == "data" and n.status == "done"} == {"eval"}
    assert all(n.status == "cached" for n in nodes if n.stage == "train")
