"""Fixtures of the heads tests; helpers live in heads_helpers.py."""

import pytest

from heads_helpers import make_example


@pytest.fixture
def examples():
    # different lengths, so that batches are padded
    return [make_example(0, 30), make_example(1, 21, span_at=2), make_example(2, 26, answer=(5, 6, 5), span_at=10)]
