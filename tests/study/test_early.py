"""Early prediction in the study, with fake stages (seconds): the plan (snapshots, probes, segments
and gates), the early tables of the analysis, stop_early's decisions and what a stopped set
becomes, and stop_early deterministic and resumable (kill -9 mid-study, rerun, same results)."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rich.console import Console

import study_helpers as H
from needlework.artifacts import Analysis, Gate, Probe, TrainRun
from needlework.study.config import from_dict
from needlework.study.engine import build_plan, run_study


def _run(cfg_dict, out, **kw):
    H.CALLS.clear()
    return run_study(from_dict(cfg_dict), out, stages=H.fake_stages(), console=Console(file=io.StringIO(), width=200), report=False, **kw)


def _hashes(nodes) -> dict:
    return {(n.stage, n.label): n.output_hash for n in nodes}


def _dir(out: Path, nodes, stage: str, label: str) -> Path:
    n = next(n for n in nodes if n.stage == stage and n.label == label)
    return out / "stages" / stage / n.key


def _done_at(out: Path, stage: str) -> dict[str, int]:
    """The finished nodes of a stage: key -> when their done.json was written."""
    return {p.parent.name: p.stat().st_mtime_ns for p in (out / "stages" / stage).glob("*/done.json")}


def _analysis(out: Path, nodes) -> dict:
    return Analysis.read(_dir(out, nodes, "analysis", "tiny/mdqa")).result


def test_the_plan_without_early_prediction_is_unchanged():
    nodes = build_plan(from_dict(H.fake_config()))
    assert not {"probe", "gate"} & {n.stage for n in nodes}
    assert all("snapshots" not in n.slice["train"] and "stop_at" not in n.slice for n in nodes if n.stage == "train")
    assert "early" not in next(n for n in nodes if n.stage == "analysis").slice  # old studies keep their cached stages


def test_the_plan_probes_every_snapshot_and_trains_gated_sets_in_segments():
    nodes = build_plan(from_dict(H.fake_early_config()))
    probes = {(n.set, n.slice["fraction"]): n for n in nodes if n.stage == "probe"}
    assert set(probes) == {(s, f) for s in ("hh", "hl", "lh", "ll", "sym") for f in (0.25, 0.5, 1.0)}  # not the base model
    p = probes["ll", 0.25]
    assert p.slice["score"]["mode"] == "teacher" and p.slice["score"]["limit"] == 8
    assert p.deps["ref_heads"].stage == "score" and p.deps["ref_heads"].set == "hh" and p.deps["train"].set == "ll"
    train = [n for n in nodes if n.stage == "train"]
    assert len(train) == 5 and all(n.slice["train"]["snapshots"] == [0.25, 0.5, 1.0] for n in train)
    # training scores the probes before the end on the model in memory; the probe at the end reads
    # the final model's score node (teacher mode, on at least the probe's examples)
    assert all(n.slice["probe"]["fractions"] == [0.25, 0.5] and n.deps["probe_data"].set == "eval" for n in train)
    assert probes["ll", 1.0].deps["final_heads"].stage == "score" and probes["ll", 1.0].deps["final_heads"].set == "ll"
    assert "final_heads" not in p.deps
    gen = H.fake_early_config() | {"score": {"mode": "generate"}}  # the final scores are not teacher-forced: train scores 1 too
    gen_nodes = build_plan(from_dict(gen))
    assert all(n.slice["probe"]["fractions"] == [0.25, 0.5, 1.0] for n in gen_nodes if n.stage == "train")
    assert not any("final_heads" in n.deps for n in gen_nodes if n.stage == "probe")
    few = H.fake_early_config() | {"score": {"mode": "teacher", "limit": 4}}  # the score stage scores fewer than probe_n (8)
    assert not any("final_heads" in n.deps for n in build_plan(from_dict(few)) if n.stage == "probe")
    plain = build_plan(from_dict(H.fake_config()))
    assert not any("probe" in n.slice or "probe_data" in n.deps for n in plain if n.stage == "train")

    staged = build_plan(from_dict(H.fake_early_config(stop_early=True)))
    seg = {n.label: n for n in staged if n.stage == "train"}
    assert sorted(seg) == sorted(
        ["tiny/mdqa/hh"] + [f"tiny/mdqa/{s}{x}" for s in ("hl", "lh", "ll", "sym") for x in ("@0.25", "@0.5", "")]
    )  # the reference trains in one piece; gates at 0.25 and 0.5 (from min_fraction, below 1)
    final = seg["tiny/mdqa/ll"]
    assert final.slice["stop_at"] == 1.0 and final.deps["previous"] is seg["tiny/mdqa/ll@0.5"]
    assert final.deps["gate"].label == "tiny/mdqa@0.5" and final.deps["gate"].deps["previous"].label == "tiny/mdqa@0.25"
    gate = final.deps["gate"]
    assert set(gate.deps) == {"previous", "probe:hl", "probe:lh", "probe:ll", "probe:sym"} and gate.slice["fraction"] == 0.5
    assert next(n for n in staged if n.stage == "probe" and n.label == "tiny/mdqa/ll@0.5").deps["train"] is seg["tiny/mdqa/ll@0.5"]
    ev = next(n for n in staged if n.stage == "evaluate" and n.set == "ll")
    assert ev.deps["train"] is final
    order = {id(n): i for i, n in enumerate(staged)}
    assert all(order[id(d)] < order[id(n)] for n in staged for d in n.deps.values())  # inputs first: the engine runs in list order


def test_early_prediction_tables_on_a_fake_study(tmp_path):
    nodes = _run(H.fake_early_config(), tmp_path)
    assert all(n.status == "done" for n in nodes)
    e = _analysis(tmp_path, nodes)["early"]
    assert e["fractions"] == [0.25, 0.5, 1.0] and e["stopped"] == {} and e["gates"] == []
    curves = {(c["set"], c["fraction"]): c for c in e["curves"]}
    assert len(curves) == 15 and curves["hh", 1.0]["recall"] == 1.0
    assert curves["ll", 0.25]["recall"] < curves["ll", 0.5]["recall"] < curves["ll", 1.0]["recall"]  # the fake sets learn as they train
    assert curves["ll", 0.25]["recall_lo"] <= curves["ll", 0.25]["recall"] <= curves["ll", 0.25]["recall_hi"]
    per = {p["fraction"]: p for p in e["per_fraction"]}
    assert [r["set"] for r in per[0.25]["rows"]] == ["hl", "lh", "ll", "sym"]  # the sets of the correlations
    assert [r["actual"] for r in per[0.25]["rows"]] == [0.6, 0.5, 0.3, 0.1]  # each set's FINAL score
    assert per[0.25]["spearman"] == pytest.approx(1.0) and e["earliest"] == 0.25 and e["agreement"] == 0.8
    assert per[1.0]["spearman"] < 0.8  # recall saturates late in training: the fraction matters
    m = e["monitor_seconds"]
    assert m["train"] == pytest.approx(50.0) and m["snapshots"] == pytest.approx(5 * 3 * 0.01) and m["probes"] > 0
    assert m["share"] == pytest.approx((m["snapshots"] + m["probes"]) / m["train"]) and m["budget"] == 0.1
    probe = Probe.read(_dir(tmp_path, nodes, "probe", "tiny/mdqa/ll@0.5")).result
    assert probe["step"] == 50 and probe["n_examples"] == 0 and probe["probe_seconds"] > 0  # fake probe ids differ from the ref's


def test_stop_early_stops_the_set_clearly_below_and_carries_its_model(tmp_path):
    nodes = _run(H.fake_early_config(stop_early=True), tmp_path)
    assert all(n.status == "done" for n in nodes)
    g = Gate.read(_dir(tmp_path, nodes, "gate", "tiny/mdqa@0.25")).result
    rows = {r["set"]: r for r in g["rows"]}
    assert g["best"] == "hl" and g["stopped"] == {"sym": 0.25}
    assert rows["sym"]["decision"] == "stop" and rows["sym"]["hi"] < g["bar"] <= rows["ll"]["hi"]  # ll overlaps: it goes on
    assert Gate.read(_dir(tmp_path, nodes, "gate", "tiny/mdqa@0.5")).result["stopped"] == {"sym": 0.25}
    fitted = {lab for stage, lab in H.CALLS if stage == "train"}
    assert "tiny/mdqa/sym@0.25" in fitted and not {"tiny/mdqa/sym@0.5", "tiny/mdqa/sym"} & fitted  # no training after the stop
    assert {"tiny/mdqa/ll@0.5", "tiny/mdqa/ll"} <= fitted
    sym = TrainRun(_dir(tmp_path, nodes, "train", "tiny/mdqa/sym"))
    assert sym.stopped() == {"fraction": 0.25, "step": 25} and list(sym.snapshots()) == [0.25]
    assert (sym.adapter / "weights.bin").read_bytes() == (sym.snapshot_dir(0.25) / "weights.bin").read_bytes()  # its model: the snapshot
    assert not (sym.adapter / TrainRun.SNAPSHOT_INFO).exists()
    assert list(TrainRun(_dir(tmp_path, nodes, "train", "tiny/mdqa/ll")).snapshots()) == [0.25, 0.5, 1.0]  # carried through segments
    late = Probe.read(_dir(tmp_path, nodes, "probe", "tiny/mdqa/sym@0.5")).result
    assert late["stopped_at"] == 0.25 and late["recall"] is None
    an = _analysis(tmp_path, nodes)
    assert an["sets"] == ["hl", "lh", "ll"]  # a stopped set's score is not a final score: out of the correlations
    assert {r["set"]: r["stopped_at"] for r in an["rows"]}["sym"] == 0.25
    e = an["early"]
    assert e["stopped"] == {"sym": 0.25} and [g["fraction"] for g in e["gates"]] == [0.25, 0.5]
    assert all(c["recall"] is None for c in e["curves"] if c["set"] == "sym" and c["fraction"] > 0.25)
    assert e["monitor_seconds"]["per_set"][-1] == {**e["monitor_seconds"]["per_set"][-1], "set": "sym", "train": 2.5}
    assert _hashes(_run(H.fake_early_config(stop_early=True), tmp_path / "again")) == _hashes(nodes)  # deterministic


@pytest.mark.timeout(300)
def test_stop_early_resumes_after_kill_9_to_the_same_results(tmp_path):
    """kill -9 right after the first gate, while training segments run; the rerun ends with the
    results of an uninterrupted run, and the gate decisions were not taken again."""
    script = Path(__file__).with_name("fake_study_main.py")
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, str(script), str(out), str(tmp_path / "calls.tsv"), "early"], start_new_session=True)
    try:
        deadline = time.time() + 200
        while time.time() < deadline and proc.poll() is None:
            gates = list((out / "stages" / "gate").glob("*/done.json")) if (out / "stages" / "gate").exists() else []
            if gates and list((out / "stages" / "train").glob(".work-*/snapshots")):  # a segment after the gate is mid-way
                break
            time.sleep(0.01)
        assert proc.poll() is None, "the study ended before the kill"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    first_gate = _done_at(out, "gate")
    assert list((out / "stages" / "train").glob(".work-*"))  # it died inside a training segment
    nodes = _run(H.fake_early_config(stop_early=True), out)
    assert all(n.status in ("cached", "done") for n in nodes)
    assert {k: v for k, v in _done_at(out, "gate").items() if k in first_gate} == first_gate  # decided once, not again
    uninterrupted = _run(H.fake_early_config(stop_early=True), tmp_path / "whole")
    assert _hashes(nodes) == _hashes(uninterrupted)
    assert not list((out / "stages").glob("*/.work-*"))


def test_a_segment_killed_while_carrying_over_copies_again_whole(tmp_path, monkeypatch):
    """The kill -9 above lands while a segment copies the previous one's snapshots as often as
    anywhere: a snapshot half copied must not count as there, or the rerun probes a torn one."""
    import shutil

    from needlework.io import write_json
    from needlework.study.stages import _carry_over

    prev, out = TrainRun(tmp_path / "prev"), TrainRun(tmp_path / "seg")
    for f in (0.25, 0.5):
        d = prev.snapshot_dir(f)
        d.mkdir(parents=True)
        write_json(d / TrainRun.SNAPSHOT_INFO, {"fraction": f, "step": int(100 * f)})  # info before weights:
        (d / "weights.bin").write_bytes(bytes(range(256)) * 64)  # listing order decides what copies first
    (tmp_path / "seg").mkdir()
    real_copy, copied = shutil.copyfile, []

    def dies_after_one_file(src, dst, **kw):
        if copied:
            raise KeyboardInterrupt("killed")
        copied.append(src)
        return real_copy(src, dst, **kw)

    monkeypatch.setattr(shutil, "copyfile", dies_after_one_file)
    with pytest.raises(KeyboardInterrupt):
        _carry_over(prev.path, out.path, checkpoint=False)
    assert out.snapshots() == {}  # nothing half there
    monkeypatch.setattr(shutil, "copyfile", real_copy)
    _carry_over(prev.path, out.path, checkpoint=False)
    assert list(out.snapshots()) == [0.25, 0.5]
    for f in (0.25, 0.5):
        assert (out.snapshot_dir(f) / "weights.bin").read_bytes() == (prev.snapshot_dir(f) / "weights.bin").read_bytes()
    assert not [p for p in (out.path / TrainRun.SNAPSHOTS).iterdir() if p.name.startswith(".")]  # no temporary left
