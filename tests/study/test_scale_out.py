"""Scale-out of the train and evaluate stages (study.launch): how many processes each stage gets,
and a study whose train and evaluate stages run in two CPU processes (gloo) giving the results of
one process."""

from __future__ import annotations

import io
import json
from types import SimpleNamespace

import pytest
from rich.console import Console
from safetensors.torch import load_file

from needlework.artifacts import EvalResult, TrainRun
from needlework.errors import NeedleworkError
from needlework.study.config import from_dict
from needlework.study.engine import run_study
from needlework.study.launch import stage_processes
from numerics import loss_atol

pytestmark = pytest.mark.timeout(600)


def _ctx(processes, grad_accum=1, limit=None, device="cpu"):
    return SimpleNamespace(
        cfg=SimpleNamespace(scale_out=SimpleNamespace(processes=processes)),
        node=SimpleNamespace(slice={"model": {"device": device}, "train": {"grad_accum": grad_accum}, "eval": {"limit": limit}}),
    )


def test_stage_processes(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert stage_processes("train", _ctx(4, grad_accum=2)) == 2  # never more than grad_accum
    assert stage_processes("train", _ctx(4, grad_accum=6)) == 3  # the largest divisor that fits
    assert stage_processes("train", _ctx(8, grad_accum=1)) == 1  # one micro-batch per step: one process
    assert stage_processes("evaluate", _ctx(4)) == 4
    assert stage_processes("evaluate", _ctx(4, limit=3)) == 3  # no process without examples
    assert stage_processes("score", _ctx(4)) == 1  # only train and evaluate scale out
    assert stage_processes("evaluate", _ctx("auto")) == 1  # auto on a CPU model: one process
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert stage_processes("evaluate", _ctx(4)) == 1  # already inside a launch


@pytest.mark.parametrize("value", [0, "many"])
def test_bad_processes_names_the_key(tiny_cfg, value):
    tiny_cfg["scale_out"] = {"processes": value}
    with pytest.raises(NeedleworkError, match="scale_out.processes"):
        from_dict(tiny_cfg)


def _train_eval(cfg: dict, out):
    nodes = run_study(from_dict(cfg), out, only={"data", "train", "evaluate"}, report=False, console=Console(file=io.StringIO(), width=200))
    by = {(n.stage, n.set): out / "stages" / n.stage / n.key for n in nodes if n.status == "done"}
    losses = {s: [row["loss"] for row in TrainRun(d).log() if "loss" in row] for (stage, s), d in by.items() if stage == "train"}
    preds = {s: list(EvalResult.read(d).predictions["output"]) for (stage, s), d in by.items() if stage == "evaluate"}
    summ = {s: EvalResult.read(d).summary for (stage, s), d in by.items() if stage == "evaluate"}
    world = {s: json.loads((d / TrainRun.CONFIG).read_text())["world_size"] for (stage, s), d in by.items() if stage == "train"}
    n_params = {
        s: sum(t.numel() for t in load_file(TrainRun(d).adapter / "adapter_model.safetensors").values())
        for (stage, s), d in by.items()
        if stage == "train"
    }
    return losses, preds, summ, world, n_params


def test_two_processes_give_the_results_of_one(tiny_cfg, tmp_path):
    tiny_cfg["tasks"]["mdqa"]["train_sets"] = {"hh": tiny_cfg["tasks"]["mdqa"]["train_sets"]["hh"]}
    tiny_cfg["train"]["grad_accum"] = 2
    tiny_cfg["eval"]["batch_size"] = 1
    tiny_cfg["models"]["tiny"]["dtype"] = "float64"  # the two sum in different orders (tests/numerics.py)
    one = _train_eval({**tiny_cfg, "scale_out": {"processes": 1}}, tmp_path / "one")
    two = _train_eval({**tiny_cfg, "scale_out": {"processes": 2}}, tmp_path / "two")
    assert one[3] == {"hh": 1} and two[3] == {"hh": 2}  # training really ran in two processes
    tol = loss_atol(tiny_cfg["train"]["lr"], len(one[0]["hh"]), one[4]["hh"])
    assert len(one[0]["hh"]) == 2 and two[0]["hh"] == pytest.approx(one[0]["hh"], rel=0, abs=tol)  # same global batches
    assert two[1] == one[1] and len(one[1]["hh"]) == 3  # every example, in the original order
    assert "processes" not in one[2]["hh"] and two[2]["hh"]["processes"] == 2
    for s in one[2]:
        assert two[2][s]["n"] == one[2][s]["n"]
        m1, m2 = one[2][s]["tasks"]["mdqa"]["metrics"], two[2][s]["tasks"]["mdqa"]["metrics"]
        assert {k: v["mean"] for k, v in m2.items()} == {k: v["mean"] for k, v in m1.items()}  # the same predictions
