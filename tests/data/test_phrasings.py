"""Concept expression: high uses many phrasings, low one template, symbolic only random ids."""

from __future__ import annotations

import random
import re

from needlework.data import phrasings as ph
from needlework.data.world import RELATIONS, build_world, sample_chain


def test_high_concept_uses_20_phrasings_per_relation_over_1000_facts():
    world = build_world(3)
    rng = random.Random(0)
    skeletons: dict[str, set[str]] = {r: set() for r in RELATIONS}
    for _ in range(1000):
        r = rng.choice(list(RELATIONS))
        s = rng.choice(world.subjects(r))
        sn, on = world.entities[s].name, world.entities[world.object_of(r, s)].name
        sent = ph.express(r, sn, on, "high", rng)
        a, b = sent.needles[0]
        assert sent.text[a:b] == on
        skeletons[r].add(sent.text.replace(on, "O").replace(sn, "S"))
    for r, sk in skeletons.items():
        assert len(sk) >= 20, (r, len(sk))


def test_low_concept_is_one_template():
    rng = random.Random(0)
    for r in RELATIONS:
        texts = {ph.express(r, "S", "O", "low", rng).text for _ in range(50)}
        assert len(texts) == 1


def test_every_high_template_has_one_object_and_a_subject():
    for _r, templates in ph.HIGH.items():
        assert len(set(templates)) >= 20
        for t in templates:
            assert t.count("{o}") == 1 and "{s}" in t, t


def test_symbolic_statement_and_questions_have_no_words():
    world = build_world(1)
    rng = random.Random(1)
    e = world.entities
    chain = sample_chain(world, 3, list(RELATIONS), rng)
    rels = [world.relation_symbols[r] for _s, r, _o in chain]
    q = ph.composed_question(rels, e[chain[0][0]].symbol, "symbolic")
    sent = ph.express(rels[0], e[chain[0][0]].symbol, e[chain[0][2]].symbol, "symbolic", rng)
    for text in (q, sent.text):
        assert not set(re.findall(r"[A-Za-z]+", text)) & world.vocabulary()
        assert not re.search("spouse|employ|born|found|author", text)
    assert sent.text[slice(*sent.needles[0])] == e[chain[0][2]].symbol


def test_composed_question_nests_noun_phrases():
    q = ph.composed_question(["author", "employer", "headquarters"], "The Salt of Vex", "high")
    assert q == "Where is the employer of the author of The Salt of Vex headquartered?"
