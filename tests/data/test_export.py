"""`needlework export`: each format loaded by the library that consumes it. `datasets` reads every
jsonl; TRL's SFTTrainer tokenizes `messages` and `prompt`/`completion` (and must give the tokens and
answer-only loss positions `train.data.encode` gives); lm-eval's task loader reads the task folder
and scores a gold answer 1. Nothing is trained. TRL and lm-eval are the `interop` extra: their
tests skip without them."""

from __future__ import annotations

import json

import pytest
import yaml

from needlework.data.export import ExportConfig, export_file, export_records, export_rows
from needlework.data.records import Document, Needle, Record, write_jsonl
from needlework.data.render import build_prompt, render, to_messages
from needlework.errors import NeedleworkError


def _records() -> list[Record]:
    mdqa = Record(
        "m0",
        "mdqa",
        "high",
        "high",
        [Document("d0", "Harbour", "Boats come in at dawn."), Document("d1", "Marlowe", "The key is Marlowe, they said.")],
        "What is the key?",
        ["Marlowe", "marlowe"],
        [Needle(1, 11, 18)],
        gold_docs=[1],
        meta={"n_tokens": 61},
    )
    summhay = Record(
        "s0",
        "summhay",
        "symbolic",
        "low",
        [Document("a", "", "Filler text."), Document("b", "", "Prices rose."), Document("c", "", "Prices rose again.")],
        "Prices rose.",
        ["b c"],
        [Needle(1, 0, 12, "evidence"), Needle(2, 0, 12, "evidence")],
        citations=["b", "c"],
        gold_docs=[1, 2],
        meta={"n_tokens": 70},
    )
    kv = Record(
        "k0",
        "kv",
        "symbolic",
        "low",
        [Document("j", "", '{"3f2a": "9c1b", "77aa": "0d4e"}')],
        "77aa",
        ["0d4e"],
        [Needle(0, 26, 30)],
        gold_docs=[0],
        meta={"n_tokens": 55},
    )
    return [mdqa, summhay, kv]


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "recs.jsonl"
    write_jsonl(path, _records())
    return path


def _load(path):
    import datasets

    return datasets.load_dataset("json", data_files=str(path), split="train")


def test_messages_load_with_datasets(data, tmp_path):
    out, n = export_file(data, tmp_path / "m.jsonl", ExportConfig(format="messages"))
    ds = _load(out)
    assert n == 3 and ds.column_names == ["id", "messages"]
    for row, rec in zip(ds, _records()):
        assert row["messages"] == to_messages(rec)
        assert row["messages"][0] == {"role": "user", "content": build_prompt(rec)[0]}
    assert ds[1]["messages"][1]["content"] == "[2] [3]"  # SummHay: the cited document numbers


def test_prompt_completion_is_what_training_tokenizes(data, tmp_path, smollm2_tokenizer):
    from needlework.train.data import encode

    tok = smollm2_tokenizer
    ds = _load(export_file(data, tmp_path / "pc.jsonl", ExportConfig(format="prompt-completion"))[0])
    assert ds.column_names == ["id", "prompt", "completion"]
    for row, rec in zip(ds, _records()):
        ex = encode(rec, tok, max_length=0, chat=False)
        assert row["prompt"] == render(rec, tok, chat=False).text
        assert tok(row["prompt"])["input_ids"] == ex.input_ids[: ex.prompt_len]
        assert tok(row["prompt"] + row["completion"] + tok.eos_token)["input_ids"] == ex.input_ids  # TRL appends the EOS
    chat = _load(export_file(data, tmp_path / "pcc.jsonl", ExportConfig(format="prompt-completion", chat=True))[0])
    for row, rec in zip(chat, _records()):
        templated = tok.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True)
        assert templated == render(rec, tok, chat=True).text  # the rendering of chat: true
        assert row["completion"] == [to_messages(rec)[1]]


def test_ruler_rows_and_lengths(data, tmp_path, smollm2_tokenizer):
    ds = _load(export_file(data, tmp_path / "r.jsonl", ExportConfig(format="ruler"))[0])
    assert ds.column_names == ["index", "input", "outputs", "length"]
    assert ds["index"] == [0, 1, 2] and ds["length"] == [61, 70, 55]
    assert ds["outputs"] == [["Marlowe", "marlowe"], ["[2] [3]"], ["0d4e"]]
    assert ds[0]["input"] == build_prompt(_records()[0])[0]
    rows = export_rows(_records(), ExportConfig(format="ruler", tokenizer="smollm2"))
    assert [r["length"] for r in rows] == [render(r, smollm2_tokenizer).n_tokens for r in _records()]
    bare = [Record.from_dict({**r.to_dict(), "meta": {}}) for r in _records()]
    with pytest.raises(NeedleworkError, match="no meta n_tokens"):
        export_rows(bare, ExportConfig(format="ruler"))


def test_ruler_records_keep_rulers_outputs():
    rec = _records()[0]
    rec.meta["ruler_outputs"] = ["4817263", "5550002"]
    assert export_rows([rec], ExportConfig(format="ruler"))[0]["outputs"] == ["4817263", "5550002"]


def test_lm_eval_folder(data, tmp_path):
    out = tmp_path / "tasks"
    y, _ = export_file(data, out, ExportConfig(format="lm-eval", task_name="nw_test"))
    assert y == out / "nw_test.yaml"
    cfg = yaml.safe_load(y.read_text())
    assert cfg["task"] == "nw_test" and cfg["output_type"] == "generate_until"
    assert cfg["doc_to_text"] == "prompt" and cfg["doc_to_target"] == "answers"
    assert cfg["metric_list"][0]["metric"] == "exact_match" and cfg["generation_kwargs"]["max_gen_toks"] == 64  # SummHay's budget
    data_file = cfg["dataset_kwargs"]["data_files"]["test"]
    ds = _load(data_file)
    assert ds.column_names == ["id", "task", "prompt", "answer", "answers"] and ds[2]["answers"] == ["0d4e"]
    default = export_records(_records(), tmp_path / "my-set", ExportConfig(format="lm-eval"))
    assert default.name == "needlework_my_set.yaml"


def test_lm_eval_loads_and_scores_the_task(data, tmp_path):
    pytest.importorskip("lm_eval", reason="lm-eval is in the interop extra")
    from lm_eval.tasks import TaskManager

    out = tmp_path / "tasks"
    export_file(data, out, ExportConfig(format="lm-eval", task_name="nw_test"))
    task = TaskManager(include_path=str(out), include_defaults=False).load(["nw_test"])["tasks"]["nw_test"]
    docs = list(task.test_docs())
    recs = _records()
    assert len(docs) == 3 and task.OUTPUT_TYPE == "generate_until"
    for doc, rec in zip(docs, recs):
        assert task.doc_to_text(doc) == build_prompt(rec)[0]
    assert task.doc_to_target(docs[0]) == ["Marlowe", "marlowe"]
    assert task.process_results(docs[0], [" marlowe."])["exact_match"] == 1.0  # case, punctuation, spaces ignored
    assert task.process_results(docs[0], [" Quillby"])["exact_match"] == 0.0
    assert task.process_results(docs[1], ["[2] [3]"])["exact_match"] == 1.0
    task.build_all_requests(limit=3, rank=0, world_size=1)
    (req,) = task.instances[0].arguments[1:]
    assert task.instances[0].request_type == "generate_until" and req["until"] == ["\n"]


@pytest.fixture(scope="module")
def tiny_model(smollm2_tokenizer):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = smollm2_tokenizer
    torch.manual_seed(0)
    cfg = LlamaConfig(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        vocab_size=len(tok),
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
    )
    return LlamaForCausalLM(cfg)


def _trl_dataset(path, tok, model, tmp_path):
    """TRL's own preparation of a dataset file: what SFTTrainer would train on (nothing is trained)."""
    trl = pytest.importorskip("trl", reason="TRL is in the interop extra")
    args = trl.SFTConfig(output_dir=str(tmp_path / "trl"), report_to="none", max_length=None, use_cpu=True)
    return trl.SFTTrainer(model=model, args=args, train_dataset=_load(path), processing_class=tok).train_dataset


def test_trl_prompt_completion_gives_our_tokens_and_loss_positions(data, tmp_path, smollm2_tokenizer, tiny_model):
    from needlework.train.data import encode

    tok = smollm2_tokenizer
    ds = _trl_dataset(export_file(data, tmp_path / "pc.jsonl", ExportConfig(format="prompt-completion"))[0], tok, tiny_model, tmp_path)
    for row, rec in zip(ds, _records()):
        ex = encode(rec, tok, max_length=0, chat=False)
        assert row["input_ids"] == ex.input_ids
        assert row["labels"] == [-100] * ex.prompt_len + ex.input_ids[ex.prompt_len :]  # the loss on the answer + EOS only
    ds = _trl_dataset(
        export_file(data, tmp_path / "pcc.jsonl", ExportConfig(format="prompt-completion", chat=True))[0], tok, tiny_model, tmp_path
    )
    for row, rec in zip(ds, _records()):
        ex = encode(rec, tok, max_length=0, chat=True)
        n = len(ex.input_ids)
        assert row["input_ids"][:n] == ex.input_ids and row["labels"][:n] == [-100] * ex.prompt_len + ex.input_ids[ex.prompt_len :]
        assert tok.decode(row["input_ids"][n:]).strip() == ""  # only the template's end of turn follows


def test_trl_messages_render_our_chat(data, tmp_path, smollm2_tokenizer, tiny_model):
    from needlework.train.data import encode

    tok = smollm2_tokenizer
    ds = _trl_dataset(export_file(data, tmp_path / "m.jsonl", ExportConfig(format="messages"))[0], tok, tiny_model, tmp_path)
    for row, rec in zip(ds, _records()):
        ex = encode(rec, tok, max_length=0, chat=True)
        assert row["input_ids"][: len(ex.input_ids)] == ex.input_ids  # our chat prompt, answer and EOS, then the turn's end


def test_cli_export_and_errors(data, tmp_path):
    from typer.testing import CliRunner

    from needlework.cli import app

    runner = CliRunner()
    r = runner.invoke(app, ["export", "--help"])
    assert r.exit_code == 0 and "--format" in r.output and "lm_eval --model hf" in r.output
    out = tmp_path / "e.jsonl"
    r = runner.invoke(app, ["export", str(data), "--format", "prompt-completion", "--chat", "--limit", "2", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "wrote 2 records as prompt-completion" in r.output
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) == 2 and rows[0]["prompt"][0]["role"] == "user"
    r = runner.invoke(app, ["export", str(data), "--format", "alpaca", "--out", str(out)])
    assert isinstance(r.exception, NeedleworkError) and "unknown export format" in str(r.exception)
    r = runner.invoke(app, ["export", str(data), "--format", "lm-eval", "--out", str(out)])
    assert isinstance(r.exception, NeedleworkError) and "is a file" in str(r.exception)
    r = runner.invoke(app, ["export", str(data), "--format", "messages", "--out", str(tmp_path)])
    assert isinstance(r.exception, NeedleworkError) and "is a folder" in str(r.exception)
    r = runner.invoke(app, ["export", str(data), "--format", "lm-eval", "--task-name", "9bad name", "--out", str(tmp_path / "t")])
    assert isinstance(r.exception, NeedleworkError) and "task name" in str(r.exception)
