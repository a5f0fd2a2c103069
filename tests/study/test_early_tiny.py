"""Early prediction with the real stages on a tiny random Llama: snapshots saved by training, the
probe stage scoring them against the reference's final heads, training in segments behind a
stop_early gate, and the analysis and report sections they feed."""

from __future__ import annotations

import io

import pytest
import torch
from rich.console import Console
from safetensors.torch import load_file

from needlework.artifacts import Analysis, Gate, Probe, TrainRun
from needlework.study.config import from_dict
from needlework.study.engine import run_study

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def early_study(tiny_model_dir, tmp_path_factory):
    from study_helpers import tiny_config

    cfg = tiny_config(tiny_model_dir, sets=("hh", "ll", "sym"))
    cfg["knockout"] = {"enabled": False}
    cfg["patch"] = {"enabled": False}
    cfg["early"] = {"fractions": [0.5, 1.0], "probe_n": 2, "stop_early": True, "min_fraction": 0.5}
    out = tmp_path_factory.mktemp("early")
    nodes = run_study(from_dict(cfg), out, console=Console(file=io.StringIO(), width=200), report=True)
    return out, {(n.stage, n.label): out / "stages" / n.stage / n.key for n in nodes}, nodes


def _weights(folder):
    return load_file(folder / "adapter_model.safetensors")


def test_probes_score_snapshots_against_the_reference(early_study):
    out, d, nodes = early_study
    assert all(n.status == "done" for n in nodes)
    ref = TrainRun(d["train", "tiny/mdqa/hh"])
    assert list(ref.snapshots()) == [0.5, 1.0] and [ref.snapshot_info(f)["step"] for f in (0.5, 1.0)] == [2, 4]  # 4 steps
    final = _weights(ref.adapter)
    assert all(torch.equal(final[k], w) for k, w in _weights(ref.snapshot_dir(1.0)).items())
    for s in ("hh", "ll", "sym"):
        for f in ("0.5", "1"):
            p = Probe.read(d["probe", f"tiny/mdqa/{s}@{f}"]).result
            if p["stopped_at"] is not None:
                continue
            assert 0 <= p["recall"]["mean"] <= 1 and p["n_examples"] == 2  # probe_n of the evaluation examples, paired with the ref's
            assert p["shape"] == {"n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "head_dim": 16}
            weights = f"snapshots/{f}" if f != "1" else "adapter"  # at the end: the final model, as its score stage scored it
            assert p["model_config"]["adapter"].endswith(weights) and p["probe_seconds"] > 0 and p["snapshot_seconds"] > 0
    own = Probe.read(d["probe", "tiny/mdqa/hh@1"]).result
    assert own["n_heads_ref"] == 3 and own["step"] == 4


def test_gated_sets_train_in_segments_or_stop(early_study):
    out, d, nodes = early_study
    gate = Gate.read(d["gate", "tiny/mdqa@0.5"]).result
    assert {r["set"] for r in gate["rows"]} == {"ll", "sym"} and gate["best"] in ("ll", "sym")
    for s in ("ll", "sym"):
        first = TrainRun(d["train", f"tiny/mdqa/{s}@0.5"])
        assert first.adapter is None and list(first.snapshots()) == [0.5] and (first.path / TrainRun.CHECKPOINTS / "step-2").exists()
        run = TrainRun(d["train", f"tiny/mdqa/{s}"])
        assert not (run.path / TrainRun.CHECKPOINTS).exists()
        if s in gate["stopped"]:  # its model is its snapshot at the stop, and it trained no further
            assert run.stopped() == {"fraction": 0.5, "step": 2} and list(run.snapshots()) == [0.5]
            assert _weights(run.adapter).keys() == _weights(first.snapshot_dir(0.5)).keys()
            assert all(torch.equal(w, _weights(first.snapshot_dir(0.5))[k]) for k, w in _weights(run.adapter).items())
        else:  # the second segment went on from the first one's checkpoint: every step logged once
            assert run.stopped() is None and list(run.snapshots()) == [0.5, 1.0]
            assert [r["step"] for r in run.log() if "loss" in r] == [1, 2, 3, 4]
            assert all(torch.equal(w, _weights(run.snapshot_dir(1.0))[k]) for k, w in _weights(run.adapter).items())


def test_analysis_and_report_show_early_prediction(early_study):
    out, d, nodes = early_study
    an = Analysis.read(d["analysis", "tiny/mdqa"]).result
    e = an["early"]
    assert e["fractions"] == [0.5, 1.0] and [g["fraction"] for g in e["gates"]] == [0.5]
    assert {(c["set"], c["fraction"]) for c in e["curves"]} == {(s, f) for s in ("hh", "ll", "sym") for f in (0.5, 1.0)}
    assert [p["fraction"] for p in e["per_fraction"]] == [0.5, 1.0]
    m = e["monitor_seconds"]
    assert m["train"] > 0 and m["snapshots"] > 0 and m["probes"] > 0 and m["share"] > 0
    html = (out / "report" / "index.html").read_text()
    assert "<h2 id='early'>" in html and "recall vs training progress" in html and "Monitoring cost (measured)" in html
    assert (out / "report" / "early_tiny_mdqa.png").stat().st_size > 1000


def _probe_ctx(out, d, nodes, label, work):
    from needlework.study.nodes import StageContext

    node = next(n for n in nodes if n.stage == "probe" and n.label == label)
    return StageContext(node, None, work, {k: d[dep.stage, dep.label] for k, dep in node.deps.items()}, out)


def test_training_scores_the_probes_as_scoring_the_snapshot_does(early_study, tmp_path):
    """Training scored every probe on the model in memory (one process), and those scores are the
    ones that loading the saved snapshot and scoring it gives; with them gone (training on several
    processes, or resumed past the snapshot) the probe stage scores the snapshot itself, to the
    same result."""
    import pandas as pd

    from needlework.study.stages import _score_snapshot, _scored_in_training, probe_stage

    out, d, nodes = early_study
    for n in nodes:
        if n.stage == "probe" and not n.label.endswith("@1"):
            p = Probe.read(d["probe", n.label]).result
            assert p.get("probed") == ("training" if p["stopped_at"] is None else None), n.label
    ctx = _probe_ctx(out, d, nodes, "tiny/mdqa/hh@0.5", tmp_path / "again")
    snap = TrainRun(ctx.inputs["train"]).snapshot_dir(0.5)
    in_training = _scored_in_training(ctx, snap)
    assert in_training.meta["in_training_seconds"] > 0
    afresh = _score_snapshot(ctx, snap)
    pd.testing.assert_frame_equal(in_training.per_example, afresh.per_example)
    pd.testing.assert_frame_equal(in_training.heads, afresh.heads)
    assert in_training.meta["model_config"] == afresh.meta["model_config"] and in_training.meta["score"] == afresh.meta["score"]

    import shutil

    shutil.move(snap / TrainRun.SNAPSHOT_HEADS, tmp_path / "aside")  # put back below: the study is shared
    try:
        ctx.out.mkdir()
        probe_stage(ctx)
    finally:
        shutil.move(tmp_path / "aside", snap / TrainRun.SNAPSHOT_HEADS)
    again, before = Probe.read(ctx.out).result, Probe.read(d["probe", "tiny/mdqa/hh@0.5"]).result
    assert again["probed"] == "snapshot" and again["recall"] == before["recall"] and again["n_examples"] == before["n_examples"]


def test_the_probe_at_the_end_reads_the_final_score_on_its_examples(early_study, tmp_path):
    """At fraction 1 the probe does not score the model again: it takes the final model's score
    stage's rows of its examples (the first probe_n), which are what scoring the snapshot at 1 on
    those examples gives; training scored only the earlier fractions."""
    import pandas as pd

    from needlework.study.stages import _final_on_probe_examples, _score_snapshot

    out, d, nodes = early_study
    ctx = _probe_ctx(out, d, nodes, "tiny/mdqa/hh@1", tmp_path / "end")
    assert "final_heads" in ctx.inputs and ctx.node.deps["final_heads"].stage == "score"
    p = Probe.read(d["probe", "tiny/mdqa/hh@1"]).result
    assert p["probed"] == "final score" and p["n_examples"] == 2
    final = _final_on_probe_examples(ctx)
    afresh = _score_snapshot(ctx, TrainRun(ctx.inputs["train"]).snapshot_dir(1.0))
    cols = ["example_id", "layer", "head", "hits", "n_steps", "score"]
    pd.testing.assert_frame_equal(
        final.per_example[cols].sort_values(cols[:3]).reset_index(drop=True),
        afresh.per_example[cols].sort_values(cols[:3]).reset_index(drop=True),
    )
    pd.testing.assert_frame_equal(final.heads, afresh.heads)
    run = TrainRun(d["train", "tiny/mdqa/hh"])
    assert (run.snapshot_dir(0.5) / TrainRun.SNAPSHOT_HEADS).is_dir() and not (run.snapshot_dir(1.0) / TrainRun.SNAPSHOT_HEADS).exists()
