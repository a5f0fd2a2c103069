import json

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from needlework.artifacts import EvalResult
from needlework.data.records import write_jsonl
from needlework.errors import NeedleworkError
from needlework.evaluate.cli import register
from needlework.evaluate.evaluate import EvalConfig, evaluate, evaluate_loaded
from needlework.evaluate.metrics import METRICS
from needlework.models.load import ModelConfig

SUMMARY_KEYS = {
    "model",
    "adapter",
    "model_config",
    "data",
    "data_hash",
    "n",
    "options",
    "elapsed_s",
    "examples_per_s",
    "max_new_tokens_by_task",
    "tasks",
}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, tiny_llama, smollm2_tokenizer):
    d = tmp_path_factory.mktemp("tiny") / "model"
    tiny_llama.save_pretrained(d)
    smollm2_tokenizer.save_pretrained(d)
    return d


def test_evaluate_end_to_end_writes_documented_files(tiny_dir, tmp_path, mixed_records):
    cfg = EvalConfig(batch_size=2, max_new_tokens=4, n_boot=200)
    res = evaluate(ModelConfig(name=str(tiny_dir), device="cpu"), mixed_records, cfg, tmp_path / "out", progress=False)
    df, summary = res.predictions, res.summary
    back = EvalResult.read(tmp_path / "out")  # the artifact round-trips
    on_disk = back.summary
    assert on_disk == json.loads(json.dumps(summary, default=str)) and res.path == tmp_path / "out"
    assert on_disk["shape"] == {"n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "head_dim": 16} == back.shape
    assert back.model_config["name"] == str(tiny_dir)
    assert SUMMARY_KEYS <= set(on_disk)
    assert on_disk["n"] == 4 and on_disk["options"]["chat"] is True  # the tokenizer has a template
    assert set(on_disk["tasks"]) == {"mdqa", "musique", "kv", "summhay"}
    for task, t in on_disk["tasks"].items():
        assert t["n"] == 1 and t["primary"] in t["metrics"]
        assert set(METRICS[task]) | {"gold_logprob", "gold_logprob_per_token"} == set(t["metrics"])
        for v in t["metrics"].values():
            assert v["lo"] <= v["mean"] <= v["hi"]
    lines = back.predictions.to_dict("records")
    assert [x["id"] for x in lines] == [r.id for r in mixed_records]
    for x in lines:
        assert {"id", "task", "output", "score", "gold_logprob", "n_prompt_tokens"} <= set(x)
        assert x["gold_logprob"] < 0
        assert all(x[m] is not None for m in METRICS[x["task"]])
    assert list(df["id"]) == [r.id for r in mixed_records]


def test_evaluate_reads_jsonl_and_limits(tiny_dir, tmp_path, mixed_records):
    data = tmp_path / "recs.jsonl"
    write_jsonl(data, mixed_records)
    cfg = EvalConfig(limit=2, logprob=False, chat=False, max_new_tokens=3, n_boot=50)
    res = evaluate(ModelConfig(name=str(tiny_dir), device="cpu"), data, cfg, tmp_path / "o", progress=False)
    df, summary = res.predictions, res.summary
    assert len(df) == 2 and summary["data"] == str(data) and len(summary["data_hash"]) == 64
    assert "gold_logprob" not in df and summary["options"]["chat"] is False


def test_evaluate_loaded_calls_the_given_model_with_its_hooks(tiny_llama, smollm2_tokenizer, mixed_records):
    """Knockout and patching install hooks and call evaluate_loaded: the hooks must run."""
    calls = []
    layer = tiny_llama.model.layers[0].self_attn
    h = layer.register_forward_hook(lambda mod, args, out: calls.append(1))
    try:
        df, summary = evaluate_loaded(
            tiny_llama, smollm2_tokenizer, mixed_records[:2], EvalConfig(batch_size=2, max_new_tokens=2, n_boot=20), progress=False
        )
    finally:
        h.remove()
    assert len(calls) >= 2  # prefill + at least one more step or the logprob pass
    assert summary["n"] == 2 and set(summary["tasks"]) == {"mdqa", "musique"}


def test_metrics_aggregate_to_summary_means(tiny_llama, smollm2_tokenizer, mixed_records):
    recs = mixed_records[:1] * 5
    df, summary = evaluate_loaded(tiny_llama, smollm2_tokenizer, recs, EvalConfig(max_new_tokens=2, logprob=False), progress=False)
    m = summary["tasks"]["mdqa"]["metrics"]["f1"]
    assert m["mean"] == pytest.approx(float(np.mean(df["f1"])))


def test_bad_input_is_a_clear_error(tiny_dir, tmp_path, mixed_records):
    no_answer = mixed_records[0]
    no_answer.answers = [" "]
    with pytest.raises(NeedleworkError, match="no gold answer"):
        evaluate(ModelConfig(name=str(tiny_dir)), [no_answer], EvalConfig(), tmp_path)
    s = mixed_records[3]
    s.citations = []
    with pytest.raises(NeedleworkError, match="no gold answer"):
        evaluate(ModelConfig(name=str(tiny_dir)), [s], EvalConfig(), tmp_path)
    with pytest.raises(NeedleworkError, match="no records"):
        evaluate(ModelConfig(name=str(tiny_dir)), [], EvalConfig(), tmp_path)
    with pytest.raises(NeedleworkError, match="unknown eval option"):
        EvalConfig.from_dict({"batch_size": 2, "beam_size": 4})
    assert EvalConfig.from_dict({"batch_size": 2}).batch_size == 2


def test_cli_evaluate(tiny_dir, tmp_path, mixed_records):
    app = typer.Typer()

    @app.callback()
    def _root() -> None:  # a group, as in the real CLI with every stage registered
        pass

    register(app)
    data = tmp_path / "d.jsonl"
    write_jsonl(data, mixed_records)
    out = tmp_path / "cli_out"
    res = CliRunner().invoke(
        app,
        [
            "evaluate",
            "--model",
            str(tiny_dir),
            "--data",
            str(data),
            "--out",
            str(out),
            "--max-new-tokens",
            "2",
            "--limit",
            "3",
            "--no-chat",
            "--device",
            "cpu",
            "--n-boot",
            "20",
        ],
    )
    assert res.exit_code == 0, res.output
    summary = EvalResult.read(out).summary
    assert summary["n"] == 3 and summary["options"]["chat"] is False
    assert "primary" in res.output and "examples/s" in res.output
    assert "needlework evaluate --model" in CliRunner().invoke(app, ["evaluate", "--help"]).output
