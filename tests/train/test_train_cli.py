"""`needlework train`: help text with examples, a run from files, config-file keys, errors."""

import json

from typer.testing import CliRunner

from conftest import copy_records
from needlework.cli import app
from needlework.data.records import write_jsonl


def test_help_has_an_example():
    r = CliRunner().invoke(app, ["train", "--help"])
    assert r.exit_code == 0 and "needlework train --model" in r.output


def test_train_from_files_and_yaml(tiny_llama, tmp_path):
    write_jsonl(tmp_path / "train.jsonl", copy_records(8, seed=1))
    write_jsonl(tmp_path / "dev.jsonl", copy_records(4, seed=2))
    (tmp_path / "cfg.yaml").write_text("train:\n  lora_r: 4\n  lr: 0.01\n  batch_size: 4\n  progress: false\n")
    r = CliRunner().invoke(
        app,
        [
            "train",
            "--model",
            tiny_llama,
            "--data",
            str(tmp_path / "train.jsonl"),
            "--eval",
            str(tmp_path / "dev.jsonl"),
            "--out",
            str(tmp_path / "out"),
            "--config",
            str(tmp_path / "cfg.yaml"),
            "--max-steps",
            "2",
            "--no-gradient-checkpointing",
        ],
    )
    assert r.exit_code == 0, r.output
    resolved = json.loads((tmp_path / "out" / "train_config.json").read_text())["train"]
    assert resolved["lora_r"] == 4 and resolved["max_steps"] == 2 and resolved["lr"] == 0.01  # YAML + CLI override
    assert (tmp_path / "out" / "adapter" / "adapter_model.safetensors").exists() and "eval:" in r.output


def test_unknown_yaml_key_is_an_error(tiny_llama, tmp_path):
    write_jsonl(tmp_path / "train.jsonl", copy_records(2, seed=1))
    (tmp_path / "cfg.yaml").write_text("learning_rate: 0.1\n")
    r = CliRunner().invoke(
        app,
        [
            "train",
            "--model",
            tiny_llama,
            "--data",
            str(tmp_path / "train.jsonl"),
            "--out",
            str(tmp_path / "out"),
            "--config",
            str(tmp_path / "cfg.yaml"),
        ],
    )
    assert r.exit_code != 0 and "learning_rate" in str(r.exception)
