"""The fictional world: reproducible, invented names avoid banned words, chains are valid."""

from __future__ import annotations

import random

import pytest

from needlework.data.world import RELATIONS, build_world, check_relations, sample_chain
from needlework.errors import NeedleworkError


def test_world_is_reproducible_and_names_unique():
    a, b = build_world(7, 200), build_world(7, 200)
    assert [e.name for e in a.entities] == [e.name for e in b.entities]
    assert a.facts == b.facts
    assert [e.name for e in build_world(8, 200).entities] != [e.name for e in a.entities]
    names = [e.name for e in a.entities if e.kind != "date"]
    assert len(names) == len(set(names))
    symbols = [e.symbol for e in a.entities] + list(a.relation_symbols.values())
    assert len(symbols) == len(set(symbols))


def test_banned_words_are_avoided():
    first = build_world(0, 100)
    banned = {w.lower() for w in list(first.vocabulary())[:50]}
    second = build_world(0, 100, banned=banned)
    assert not {w.lower() for w in second.vocabulary()} & banned


def test_relations_are_typed_and_functional():
    w = build_world(2, 100)
    for r, (sk, ok) in RELATIONS.items():
        assert w.subjects(r)
        for s in w.subjects(r):
            assert w.entities[s].kind == sk and w.entities[w.object_of(r, s)].kind == ok
    for s in w.subjects("spouse"):
        assert w.object_of("spouse", w.object_of("spouse", s)) == s


def test_chains_link_and_bad_relations_fail():
    w = build_world(2, 100)
    chain = sample_chain(w, 4, list(RELATIONS), random.Random(0))
    assert all(a[2] == b[0] for a, b in zip(chain, chain[1:]))
    assert len({c[0] for c in chain} | {chain[-1][2]}) == 5
    with pytest.raises(NeedleworkError, match="hop chains"):
        sample_chain(w, 2, ["birth_date"], random.Random(0))
    with pytest.raises(NeedleworkError, match="unknown relation"):
        check_relations(["spouse", "nemesis"])
