"""Fixtures for the report tests: a complete study written by the fake stages of tests/study."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "study"))


@pytest.fixture(scope="module")
def fake_study(tmp_path_factory) -> Path:
    from rich.console import Console

    import study_helpers as H
    from needlework.study.config import from_dict
    from needlework.study.engine import run_study

    out = tmp_path_factory.mktemp("study")
    run_study(from_dict(H.fake_config()), out, stages=H.fake_stages(), console=Console(file=io.StringIO()), report=False)
    return out
