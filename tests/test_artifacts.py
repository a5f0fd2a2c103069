"""Declared artifacts: round trips, the manifest written last, schema checks on write and read, and
one place for every result file name."""

import ast
import json
import math
from pathlib import Path

import pandas as pd
import pytest
import torch

from needlework import artifacts as A
from needlework.errors import NeedleworkError

SRC = Path(__file__).resolve().parents[1] / "src" / "needlework"
SHAPE = {"n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "head_dim": 16}
MODEL = {"name": "m", "adapter": None}


def _scores(**meta) -> A.HeadScores:
    heads = pd.DataFrame({"layer": [0, 0, 1], "head": [0, 1, 0], "mean": [0.1, float("nan"), 0.3]})
    per = pd.DataFrame({"example_id": ["a"] * 3, "layer": [0, 0, 1], "head": [0, 1, 0], "score": [0.1, 0.2, 0.3]})
    return A.HeadScores(heads=heads, per_example=per, meta={"shape": SHAPE, "model_config": MODEL, **meta})


def test_round_trip_carries_model_and_shape(tmp_path):
    s = _scores(options={"x": 1})
    d = s.write(tmp_path / "s")
    back = A.HeadScores.read(d)
    pd.testing.assert_frame_equal(back.heads, s.heads)
    pd.testing.assert_frame_equal(back.per_example, s.per_example)
    assert back.meta == s.meta and back.shape == SHAPE and back.model_config == MODEL and back.path == d
    man = json.loads((d / A.MANIFEST).read_text())
    assert man["versions"]["needlework"] and "torch" in man["versions"] and "python" in man["versions"]  # provenance
    assert man["versions"]["device"] == A.device_name()  # the hardware too: a GPU by its name, else the CPU's
    assert A.device_name().startswith("cpu: ") or torch.cuda.is_initialized()
    assert {k: v for k, v in man.items() if k not in ("files", "versions", "paths")} == {
        "kind": "head_scores",
        "version": A.VERSION,
        "model_config": MODEL,
        "shape": SHAPE,
    }
    assert set(man["files"]) == {"heads.parquet", "per_example.parquet", "meta.json"}


def test_eval_rows_keep_nan_as_null_and_read_back(tmp_path):
    preds = pd.DataFrame({"id": ["a", "b"], "task": ["mdqa", "mdqa"], "output": ["x", "y"], "f1": [0.5, float("nan")]})
    summ = {
        "model_config": MODEL,
        "shape": SHAPE,
        "options": {},
        "tasks": {"mdqa": {"n": 2, "primary": "f1", "metrics": {}}},
        "e": math.inf,
    }
    d = A.EvalResult(predictions=preds, summary=summ).write(tmp_path / "e")
    lines = (d / A.EvalResult.FILES["predictions"].name).read_text().splitlines()
    assert json.loads(lines[1])["f1"] is None  # strict JSON, readable outside Python
    back = A.EvalResult.read(d)
    assert back.summary["e"] is None and list(back.predictions["id"]) == ["a", "b"] and math.isnan(back.predictions["f1"][1])


def test_unfinished_wrong_kind_newer_schema_and_missing_columns_are_refused(tmp_path):
    d = _scores().write(tmp_path / "s")
    with pytest.raises(NeedleworkError, match="not 'eval'"):
        A.EvalResult.read(d)
    man = json.loads((d / A.MANIFEST).read_text())
    (d / A.MANIFEST).write_text(json.dumps({**man, "version": A.VERSION + 1}))
    with pytest.raises(NeedleworkError, match="upgrade needlework"):
        A.HeadScores.read(d)
    (d / A.MANIFEST).unlink()  # as a crash before the manifest leaves it
    assert not A.HeadScores.exists(d)
    with pytest.raises(NeedleworkError, match="no finished head_scores result"):
        A.HeadScores.read(d)
    bad = _scores()
    bad.heads = bad.heads.drop(columns="mean")
    with pytest.raises(NeedleworkError, match="heads.parquet lacks mean"):
        bad.write(tmp_path / "bad")
    assert not (tmp_path / "bad").exists()  # checked before anything is written
    no_shape = A.HeadScores(heads=_scores().heads, meta={})
    with pytest.raises(NeedleworkError, match="meta.json lacks shape"):
        no_shape.write(tmp_path / "bad")


def test_a_crash_while_writing_leaves_no_finished_artifact(tmp_path, monkeypatch):
    d = _scores().write(tmp_path / "s")

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(A, "write_json", boom)  # the manifest (and meta.json) cannot be written
    with pytest.raises(OSError):
        _scores(options={"new": True}).write(d)
    assert not A.HeadScores.exists(d)  # the old manifest went first: no mix of old and new is read


def test_rewriting_without_an_optional_file_removes_the_old_one(tmp_path):
    d = _scores().write(tmp_path / "s")
    A.HeadScores(heads=_scores().heads, per_example=None, meta={"shape": SHAPE}).write(d)
    assert not (d / A.HeadScores.FILES["per_example"].name).exists()
    assert A.HeadScores.read(d).per_example is None


def test_patch_rows_pool_random_sets():
    rows = [{"condition": c} for c in ("source", "target", "intersection", "random_0", "random_1")]
    p = A.PatchResult(summary={"table": rows})
    assert [r["kind"] for r in p.rows()] == ["source", "target", "intersection", "random", "random"]


def _artifact_names() -> set[str]:
    names = {f.name for cls in vars(A).values() if isinstance(cls, type) and issubclass(cls, A.Artifact) for f in cls.FILES.values()}
    names |= {A.MANIFEST, A.STUDY_INDEX, A.STAGE_DONE, A.STAGE_INFO, A.STUDY_RESULTS}
    names |= {A.TrainRun.LOG, A.TrainRun.CONFIG, A.TrainRun.SNAPSHOT_INFO, A.TrainRun.STOPPED, A.KnockoutResult.FIGURE}
    return names


def test_no_result_file_name_is_spelled_outside_artifacts():
    names = _artifact_names()
    found = []
    for p in sorted(SRC.rglob("*.py")):
        if p.name == "artifacts.py":
            continue
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in names:
                found.append(f"{p.relative_to(SRC)}:{node.lineno} {node.value!r}")
    assert not found, "result file names belong to needlework.artifacts:\n" + "\n".join(found)


def test_paths_in_json_are_relative_to_the_study_or_the_out_folder(tmp_path):
    """A result names its inputs by paths that survive moving or publishing its folder: inside a
    study relative to the study folder, else to the folder above the result; paths elsewhere stay."""
    study = tmp_path / "study"  # its index not written yet: the layout tells (the first stages end before it)
    (study / "stages" / "score").mkdir(parents=True)
    adapter = str(study / "stages" / "train" / "abc" / "adapter")
    meta = {"shape": {"n_layers": 1}, "model_config": {"name": "/opt/models/m", "adapter": adapter}, "data_path": [str(study / "d.jsonl")]}
    heads = pd.DataFrame({"layer": [0], "head": [0], "mean": [0.5]})
    d = A.HeadScores(heads=heads, meta=meta).write(study / "stages" / "score" / ".work-k")
    got = json.loads((d / "meta.json").read_text())
    assert got["model_config"] == {"name": "/opt/models/m", "adapter": "stages/train/abc/adapter"}  # outside the study: kept
    assert got["data_path"] == ["d.jsonl"]
    man = json.loads((d / A.MANIFEST).read_text())
    assert man["model_config"]["adapter"] == "stages/train/abc/adapter" and man["paths"] == "relative to the study folder"
    alone = A.HeadScores(heads=heads, meta={**meta, "model_config": {"adapter": str(tmp_path / "runs" / "lora")}}).write(
        tmp_path / "runs" / "r1"
    )
    assert json.loads((alone / "meta.json").read_text())["model_config"]["adapter"] == "lora"
    assert json.loads((alone / A.MANIFEST).read_text())["paths"] == "relative to the folder above this one"
