"""The generator's and the loader's option checks name the offending field (`OptionError.key`),
which is how a study config reports the full key path of a bad value on load."""

from __future__ import annotations

import pytest

from needlework.data.generate import CONCEPTS, CONTEXTS, GenerateConfig, check_config
from needlework.data.loaders import LoadConfig, check_options
from needlework.errors import NeedleworkError, OptionError


@pytest.mark.parametrize(
    "kw, key",
    [
        ({"task": "trivia"}, "task"),
        ({"concept": "symbolik"}, "concept"),
        ({"context": "real"}, "context"),
        ({"task": "kv", "concept": "low"}, "concept"),
        ({"n": 0}, "n"),
        ({"length": 0}, "length"),
        ({"depth": "150"}, "depth"),
        ({"depth": 101.0}, "depth"),
        ({"relations": ["rival"]}, "relations"),
        ({"task": "musique", "relations": ["birth_date"]}, "relations"),
        ({"task": "musique", "relations": ["spouse", "employer"], "hops": "3"}, "relations"),
        ({"hops": "7"}, "hops"),
        ({"insight_docs": "0-2"}, "insight_docs"),
        ({"hard_negatives": -1}, "hard_negatives"),
        ({"kv_pairs": 0}, "kv_pairs"),
        ({"kv_dicts": 0}, "kv_dicts"),
        ({"world_size": -1}, "world_size"),
        ({"writer_docs": 0}, "writer_docs"),
        ({"haystack": "/no/such/haystack"}, "haystack"),
    ],
)
def test_generator_check_names_the_field(kw, key):
    with pytest.raises(OptionError) as e:
        check_config(GenerateConfig(**kw))
    assert e.value.key == key and e.value.fix
    assert isinstance(e.value, NeedleworkError)  # the CLI prints it like any other bad input


def test_generator_check_accepts_good_values():
    for concept in CONCEPTS:
        for context in CONTEXTS:
            check_config(GenerateConfig(concept=concept, context=context, depth=50, hops=3))
    check_config(GenerateConfig(task="musique", relations=["spouse", "employer"], hops="2"))
    check_config(GenerateConfig(task="kv", concept="symbolic", haystack="/no/such/haystack", context="low"))


@pytest.mark.parametrize(
    "fmt, kw, key",
    [
        ("mdqaa", {}, "format"),
        ("hf:", {}, "format"),
        ("mdqa", {"length": -5}, "length"),
        ("mdqa", {"depth": 50}, "depth"),  # without length
        ("mdqa", {"length": 500, "depth": 150}, "depth"),
        ("mdqa", {"length": 500, "depth": "deep"}, "depth"),
        ("mdqa", {"limited": ("who", "wh")}, "limited"),
        ("musique", {"limited": ("2hop", "two-hop")}, "limited"),
        ("mdqa", {"insight_threshold": 0.0}, "insight_threshold"),
        ("mdqa", {"limit": -1}, "limit"),
    ],
)
def test_loader_check_names_the_field(fmt, kw, key):
    with pytest.raises(OptionError) as e:
        check_options(fmt, LoadConfig(**kw))
    assert e.value.key == key and e.value.fix


def test_loader_check_accepts_good_values():
    check_options("mdqa", LoadConfig(length=500, depth="random", limited=("who", "how many", "other")))
    check_options("musique", LoadConfig(limited=("2hop", "3hop1", "4hop")))
    check_options("summhay", LoadConfig(limited=("any subtopic name",)))
    check_options("hf:someone/data:validation", LoadConfig())
