"""`needlework knockout` / `needlework patch` through the CLI on a tiny saved model."""

import pytest
from typer.testing import CliRunner

from needlework.artifacts import KnockoutResult
from needlework.cli import app
from needlework.data.records import write_jsonl
from needlework.errors import NeedleworkError


@pytest.fixture
def data(records, tmp_path):
    p = tmp_path / "data.jsonl"
    write_jsonl(p, records)
    return p


def test_knockout_cli_with_an_explicit_list(tiny_dir, data, tmp_path):
    out = tmp_path / "ko"
    res = CliRunner().invoke(
        app,
        [
            "knockout",
            "--model",
            str(tiny_dir),
            "--data",
            str(data),
            "--list",
            "0-1,1-2",
            "--mode",
            "uniform",
            "--random-seeds",
            "1",
            "--max-new-tokens",
            "3",
            "--device",
            "cpu",
            "--out",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    summary = KnockoutResult.read(out).summary
    assert sorted(summary["conditions"]) == ["baseline", "random_0", "top"]
    assert summary["config"]["mode"] == "uniform"


def test_cli_bad_input(tiny_dir, data, tmp_path):
    res = CliRunner().invoke(
        app, ["knockout", "--model", str(tiny_dir), "--data", str(data), "--list", "5-0", "--device", "cpu", "--out", str(tmp_path / "x")]
    )
    assert isinstance(res.exception, NeedleworkError) and "do not exist" in res.exception.problem
    res = CliRunner().invoke(
        app,
        [
            "patch",
            "--source",
            str(tiny_dir),
            "--target",
            str(tiny_dir),
            "--data",
            str(data),
            "--set",
            "complement",
            "--device",
            "cpu",
            "--out",
            str(tmp_path / "y"),
        ],
    )
    assert isinstance(res.exception, NeedleworkError) and "needs the head scores" in res.exception.problem


def test_help_has_examples():
    for cmd in ("knockout", "patch"):
        res = CliRunner().invoke(app, [cmd, "--help"])
        assert res.exit_code == 0 and "Example" in res.output
