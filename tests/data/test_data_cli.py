"""The data commands end to end: generate, validate (every violation, with line numbers), inspect,
demo; records survive a JSONL round trip."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from needlework.cli import app
from needlework.data.generate import GenerateConfig, generate
from needlework.data.inspect import text_histogram, validate_file
from needlework.data.records import read_jsonl, write_jsonl
from needlework.errors import NeedleworkError

runner = CliRunner()


def test_round_trip(smollm2_tokenizer, tmp_path):
    recs = []
    for task, concept in [("mdqa", "high"), ("musique", "low"), ("summhay", "symbolic"), ("kv", "symbolic")]:
        recs += generate(GenerateConfig(task=task, concept=concept, n=1, length=1536), tokenizer=smollm2_tokenizer)
    path = tmp_path / "r.jsonl"
    write_jsonl(path, recs)
    back = read_jsonl(path, validate=True)
    assert [r.to_dict() for r in back] == [r.to_dict() for r in recs]
    assert validate_file(path) == (4, [])


def test_generate_validate_inspect_cli(tmp_path):
    out = tmp_path / "d.jsonl"
    res = runner.invoke(
        app,
        [
            "generate",
            "--task",
            "summhay",
            "--concept",
            "low",
            "--context",
            "high",
            "--n",
            "3",
            "--length",
            "1536",
            "--depth",
            "40",
            "--out",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    assert "wrote 3 records" in res.output and len(out.read_text().splitlines()) == 3
    res = runner.invoke(app, ["validate", str(out)])
    assert res.exit_code == 0 and "all valid" in res.output
    res = runner.invoke(app, ["inspect", str(out), "--tokenizer", "smollm2", "--samples", "1"])
    assert res.exit_code == 0, res.output
    assert "token length" in res.output and "summhay" in res.output and "needle 0" in res.output


def test_validate_reports_every_corruption_with_line(tmp_path, smollm2_tokenizer):
    recs = generate(GenerateConfig(task="mdqa", n=3, length=1024), tokenizer=smollm2_tokenizer)
    path = tmp_path / "c.jsonl"
    write_jsonl(path, recs)
    lines = path.read_text().splitlines()
    d = json.loads(lines[1])
    d["needles"][0]["start"] += 1  # span no longer equals the answer
    lines[1] = json.dumps(d)
    d = json.loads(lines[2])
    d["needles"][0]["end"] = 10**6  # span outside the document
    lines[2] = json.dumps(d)
    lines.append("{not json")
    path.write_text("\n".join(lines) + "\n")
    n, problems = validate_file(path)
    assert n == 4 and [p.line for p in problems] == [2, 3, 4]
    res = runner.invoke(app, ["validate", str(path)])
    assert res.exit_code == 1
    assert "c.jsonl:line 2" in res.output and "equals no answer" in res.output and "outside document" in res.output


def test_cli_bad_input_raises_needlework_error(tmp_path):
    res = runner.invoke(app, ["generate", "--task", "kv", "--concept", "low", "--out", str(tmp_path / "x.jsonl")])
    assert isinstance(res.exception, NeedleworkError) and "symbolic" in res.exception.fix
    res = runner.invoke(app, ["validate", str(tmp_path / "missing.jsonl")])
    assert isinstance(res.exception, NeedleworkError)


def test_demo(tmp_path):
    res = runner.invoke(app, ["demo", "--out", str(tmp_path / "demo"), "--n", "1", "--length", "2048"])
    assert res.exit_code == 0, res.output
    files = sorted(p.name for p in (tmp_path / "demo").glob("*.jsonl"))
    assert len(files) == 20 and "kv-symbolic-low.jsonl" in files
    assert "musique" in res.output and "problems" in res.output


def test_text_histogram():
    h = text_histogram([0.1, 0.15, 0.9], bins=2, lo=0.0, hi=1.0).splitlines()
    assert len(h) == 2 and h[0].endswith(" 2") and h[1].endswith(" 1")


def test_generate_cli_writer_option(tmp_path, monkeypatch):
    import needlework.data.writer as writer_mod

    seen = {}

    class FakeWriter:
        def write_documents(self, prompts):
            seen["n"] = len(prompts)
            return [
                f"Document {i} was written by a stand-in model. It talks about boats and bridges at length." for i in range(len(prompts))
            ]

    def fake_make_writer(cfg, model=None, tokenizer=None):
        seen["cfg"] = cfg
        return FakeWriter()

    monkeypatch.setattr(writer_mod, "make_writer", fake_make_writer)
    out = tmp_path / "w.jsonl"
    res = runner.invoke(
        app,
        [
            "generate",
            "--task",
            "mdqa",
            "--n",
            "2",
            "--length",
            "1024",
            "--writer",
            "openai",
            "--writer-model",
            "m1",
            "--writer-docs",
            "40",
            "--out",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    assert seen["n"] == 40 and seen["cfg"].model == "m1"
    assert "stand-in model" in out.read_text()
