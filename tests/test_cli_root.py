"""The root command: --version, and the license the package declares."""

from pathlib import Path

import pytest
from typer.testing import CliRunner

import needlework
from needlework.cli import app

ROOT = Path(__file__).resolve().parents[1]


def test_version_prints_the_package_version():
    r = CliRunner().invoke(app, ["--version"])
    assert r.exit_code == 0 and r.output.strip() == f"needlework {needlework.__version__}"


def test_license_file_matches_pyproject():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert meta["license"] == {"text": "Apache-2.0"} and meta["version"] == needlework.__version__
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text and "END OF TERMS AND CONDITIONS" in text


def test_help_shows_literal_brackets():
    r = CliRunner().invoke(app, ["heads", "export", "--help"], terminal_width=200)
    assert r.exit_code == 0 and "{'L-H': [scores]}" in r.output  # not eaten as rich markup
