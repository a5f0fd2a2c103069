"""Result directories: run_score on a tiny saved model, skips, new directories for new inputs,
export/import round trips, the heatmap, and the CLI."""

import json

import numpy as np
import pytest

from heads_helpers import scored_result
from needlework.artifacts import HeadScores
from needlework.errors import NeedleworkError
from needlework.heads.compare import compare_dirs
from needlework.heads.io import export_scores, import_scores


def test_wu_round_trip(tmp_path):
    d = scored_result(tmp_path)
    f = export_scores(d, "wu", tmp_path / "wu.json")
    obj = json.loads(f.read_text())
    assert set(obj) == {f"{l}-{h}" for l in range(2) for h in range(4)} and len(obj["1-3"]) == 5
    back = import_scores(f, "wu", tmp_path / "back", n_kv_heads=2)
    a, b = HeadScores.read(d).heads, HeadScores.read(back).heads
    np.testing.assert_allclose(a.sort_values(["layer", "head"])["mean"], b.sort_values(["layer", "head"])["mean"])
    t = compare_dirs(d, back).set_index("stat")  # the ids travel beside the JSON: paired, exactly 1
    assert (t.at["cosine", "value"], t.at["cosine", "lo"], t.at["cosine", "hi"]) == (pytest.approx(1.0),) * 3


def test_duo_round_trip(tmp_path):
    d = scored_result(tmp_path)
    f = export_scores(d, "duo", tmp_path / "duo.tsv", kv_agg="max")
    lines = f.read_text().strip().split("\n")
    assert len(lines) == 2 and all(len(x.split("\t")) == 2 for x in lines)
    heads = HeadScores.read(d).heads
    want = heads["mean"].to_numpy().reshape(2, 2, 2).max(-1)
    np.testing.assert_allclose(np.loadtxt(f, delimiter="\t"), want)
    back = import_scores(f, "duo", tmp_path / "back")
    np.testing.assert_allclose(HeadScores.read(back).heads["mean"].to_numpy().reshape(2, 2), want)
    export_scores(back, "duo", tmp_path / "again.tsv")
    assert (tmp_path / "again.tsv").read_text() == f.read_text()
    t = compare_dirs(d, back)  # kv view forced: the imported table has kv heads only
    assert t.attrs["view"] == "kv" and dict(zip(t.stat, t.value))["cosine"] == pytest.approx(1.0)


def test_bad_import_and_mismatch(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"x": [1]}')
    with pytest.raises(NeedleworkError):
        import_scores(bad, "wu", tmp_path / "o")
    with pytest.raises(NeedleworkError, match="different shapes"):
        compare_dirs(scored_result(tmp_path, "a"), scored_result(tmp_path, "b", L=3))


def test_plot_writes_png(tmp_path):
    from needlework.heads.plot import heatmap

    png = heatmap(scored_result(tmp_path))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_and_export_take_a_criterion(tmp_path):
    """A folder with a second criterion (output: logits, negative ones too): plot and export read it
    by name, the plot's scale reaches below 0, and the primary stays the default."""
    import json

    from needlework.heads.io import export_scores
    from needlework.heads.plot import heatmap
    from needlework.heads.score import head_table

    src = HeadScores.read(scored_result(tmp_path))
    per = src.per_example.assign(score=lambda d: d["score"] - 1.0, criterion="output")  # all below 0
    meta = {**src.meta, "options": {"score": "retrieval", "criteria": ["output"]}}
    heads = head_table(per.drop(columns="criterion")).assign(criterion="output")
    HeadScores(heads=src.heads, per_example=src.per_example, criteria_heads=heads, criteria_per_example=per, meta=meta).write(
        tmp_path / "two"
    )
    assert heatmap(tmp_path / "two").name == "heads.png"
    png = heatmap(tmp_path / "two", criterion="output")
    assert png.name == "heads-output.png" and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    got = json.loads(export_scores(tmp_path / "two", "wu", tmp_path / "o.json", criterion="output").read_text())
    want = per[(per["layer"] == 1) & (per["head"] == 2)]["score"].tolist()
    assert got["1-2"] == want and max(want) < 0  # the output criterion's per-example scores, in order


def test_cli_compare_plot_export(tmp_path):
    from typer.testing import CliRunner

    from needlework.cli import app

    a, b = scored_result(tmp_path, "a", 0), scored_result(tmp_path, "b", 1)
    r = CliRunner().invoke(app, ["heads", "compare", str(a), str(b), "--top", "3", "--n-boot", "50"])
    assert r.exit_code == 0, r.output
    assert "jaccard" in r.output and "spearman" in r.output
    r = CliRunner().invoke(app, ["heads", "export", str(a), "--format", "wu", "--out", str(tmp_path / "w.json")])
    assert r.exit_code == 0 and (tmp_path / "w.json").exists()
    r = CliRunner().invoke(app, ["heads", "plot", str(a)])
    assert r.exit_code == 0 and (a / "heads.png").exists()


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A tiny random Llama saved with SmolLM2's tokenizer (real offsets and chat template)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from needlework.models.load import load_tokenizer

    tok = load_tokenizer("smollm2")
    torch.manual_seed(0)
    cfg = LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=len(tok),
        max_position_embeddings=512,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
    )
    d = tmp_path_factory.mktemp("tiny")
    LlamaForCausalLM(cfg).save_pretrained(d)
    tok.save_pretrained(d)
    return d


def _records(path):
    from needlework.data.records import Document, Needle, Record, write_jsonl

    good = Record(
        "ok",
        "mdqa",
        "high",
        "high",
        [Document("d0", "T", "The key is Marlowe, they said.")],
        "What is the key?",
        ["Marlowe"],
        [Needle(0, 11, 18)],
    )
    absent = Record(
        "absent",
        "mdqa",
        "high",
        "high",
        [Document("d0", "T", "The key is Marlowe, they said.")],
        "What is the key?",
        ["Quillby"],
        [Needle(0, 11, 18)],
    )
    write_jsonl(path, [good, absent])
    return path


def test_run_score_writes_result_and_reports_skips(tmp_path, tiny_dir, caplog):
    from needlework.heads.run import run_score
    from needlework.heads.score import ScoreConfig
    from needlework.models.load import ModelConfig

    data = _records(tmp_path / "d.jsonl")
    mc = ModelConfig(name=str(tiny_dir), device="cpu")
    res = run_score(mc, data, ScoreConfig(), tmp_path / "res")
    out, meta = res.path, HeadScores.read(res.path).meta
    c = json.loads((tiny_dir / "config.json").read_text())
    want = {"n_layers": c["num_hidden_layers"], "n_heads": c["num_attention_heads"], "n_kv_heads": c["num_key_value_heads"]}
    assert meta["shape"] == {**want, "head_dim": c["hidden_size"] // c["num_attention_heads"]} == res.shape
    assert meta["model_config"]["name"] == str(tiny_dir)
    assert meta["n_skipped"] == 1 and meta["skipped"] == {"absent": "answer tokens absent from the needle span"}
    assert "skipped 1 of 2" in caplog.text  # logged (the CLI shows it)
    per = res.per_example
    assert set(per.example_id) == {"ok"} and len(per) == 2 * 4
    assert list(res.heads.columns) == ["layer", "head", "mean", "std", "n"]
    assert run_score(mc, data, ScoreConfig(), tmp_path / "res").path == out  # identical inputs: same result
    other = run_score(mc, data, ScoreConfig(score="insight"), tmp_path / "res").path
    assert other != out and HeadScores.exists(out)  # new inputs: a new directory, nothing merged
    gen = run_score(mc, data, ScoreConfig(mode="generate", keep_failed=True, max_new_tokens=3), tmp_path / "res")
    assert HeadScores.read(gen.path).meta["n_failed_gate"] == 1  # a random model fails the gate


def test_run_score_with_criteria_writes_each_as_alone(tmp_path, tiny_dir):
    """`criteria` beside `score`: one folder whose criteria tables are what each criterion scored
    alone writes (the same rows of the same forward shapes: equal), records skipped by one criterion
    scored by the others, and the counts of each criterion in meta."""
    from needlework.heads.run import run_score
    from needlework.heads.score import ScoreConfig
    from needlework.models.load import ModelConfig

    data = _records(tmp_path / "d.jsonl")
    mc = ModelConfig(name=str(tiny_dir), device="cpu")
    res = HeadScores.read(run_score(mc, data, ScoreConfig(criteria=["mass", "output"]), tmp_path / "res").path)
    assert res.criteria() == ["retrieval", "mass", "output"]
    assert set(res.per_example.example_id) == {"ok"}  # "absent" has no answer token in its needle: retrieval skips it
    for c in ("mass", "output"):
        alone = run_score(mc, data, ScoreConfig(score=c), tmp_path / "res")
        got = res.criterion(c)
        assert set(got.per_example.example_id) == {"ok", "absent"}  # mass and output can score it
        assert got.heads["mean"].tolist() == alone.heads["mean"].tolist()
        assert got.per_example["score"].tolist() == alone.per_example["score"].tolist()
        assert got.meta["n_skipped"] == alone.meta["n_skipped"] == 0 and got.meta["options"]["score"] == c
    assert res.meta["n_skipped"] == 1 and res.meta["criteria"]["mass"]["n_scored"] == 2


def test_cli_score(tmp_path, tiny_dir):
    from typer.testing import CliRunner

    from needlework.cli import app

    data = _records(tmp_path / "d.jsonl")
    r = CliRunner().invoke(
        app,
        [
            "heads",
            "score",
            "--model",
            str(tiny_dir),
            "--data",
            str(data),
            "--mode",
            "teacher",
            "--score",
            "mass",
            "--out",
            str(tmp_path / "o"),
            "--device",
            "cpu",
            "--batch-size",
            "2",
            "--criteria",
            "query,output",
        ],
    )
    assert r.exit_code == 0, r.output
    found = [d for d in (tmp_path / "o").iterdir() if HeadScores.exists(d)]
    assert len(found) == 1 and HeadScores.read(found[0]).criteria() == ["mass", "query", "output"]


def test_result_folders_are_named_for_people():
    from pathlib import Path

    from needlework.heads.run import result_name
    from needlework.models.load import ModelConfig

    h = "0123456789abcdef"
    assert result_name(ModelConfig(name="smollm2"), Path("data/mdqa test.jsonl.gz"), h) == "smollm2-mdqa-test-01234567"
    with_adapter = ModelConfig(name="/models/Llama-3-8B", adapter="runs/train_real/adapter")
    assert result_name(with_adapter, Path("eval.jsonl"), h) == "Llama-3-8B-train_real-eval-01234567"
