"""Shared fixtures: offline hub, seeded RNGs, tiny random models of each architecture shape."""

import os
import random

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
import pytest


@pytest.fixture(autouse=True)
def _seed():
    import torch

    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def smollm2_tokenizer():
    from needlework.models.load import load_tokenizer

    return load_tokenizer("smollm2")
