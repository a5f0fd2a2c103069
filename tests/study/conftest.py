"""Fixtures for the study tests: a tiny random Llama with SmolLM2's tokenizer saved to a folder (so
`models: {tiny: {name: <folder>}}` loads it through load_model), and small study configs."""

from __future__ import annotations

import copy

import pytest

from study_helpers import save_tiny_model, tiny_config  # noqa: F401  (re-exported for tests)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    return save_tiny_model(tmp_path_factory.mktemp("tiny_model"))


@pytest.fixture
def tiny_cfg(tiny_model_dir):
    return copy.deepcopy(tiny_config(tiny_model_dir))
