"""Fixtures for the report tests: complete studies written by the fake stages of tests/study, one
without and one with early prediction (and stop_early)."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "study"))


def _fake_study(out: Path, cfg: dict) -> Path:
    from rich.console import Console

    import study_helpers as H
    from needlework.study.config import from_dict
    from needlework.study.engine import run_study

    run_study(from_dict(cfg), out, stages=H.fake_stages(), console=Console(file=io.StringIO()), report=False)
    return out


@pytest.fixture(scope="module")
def fake_study(tmp_path_factory) -> Path:
    import study_helpers as H

    return _fake_study(tmp_path_factory.mktemp("study"), H.fake_config())


@pytest.fixture(scope="module")
def fake_early_study(tmp_path_factory) -> Path:
    import study_helpers as H

    return _fake_study(tmp_path_factory.mktemp("early"), H.fake_early_config(stop_early=True))
