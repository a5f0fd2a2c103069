"""A seeded fictional world: people, organisations, places, works and dates, and the relations
between them (spouse, employer, birthplace, birth_date, founder, headquarters, author).

Names are built from random syllables and checked against a banned vocabulary (the haystack's
words), so an answer can never come from pretraining memory or from the surrounding text. Every
entity also has a random symbolic id, and every relation a symbolic id, for `concept symbolic`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from needlework.errors import NeedleworkError

# relation -> (subject kind, object kind); every relation is functional (one object per subject).
RELATIONS: dict[str, tuple[str, str]] = {
    "spouse": ("person", "person"),
    "employer": ("person", "org"),
    "birthplace": ("person", "place"),
    "birth_date": ("person", "date"),
    "founder": ("org", "person"),
    "headquarters": ("org", "place"),
    "author": ("work", "person"),
}

_ONSETS = [
    "b",
    "br",
    "d",
    "dr",
    "f",
    "g",
    "gr",
    "k",
    "kr",
    "l",
    "m",
    "n",
    "p",
    "qu",
    "r",
    "s",
    "st",
    "t",
    "th",
    "v",
    "vr",
    "z",
    "zh",
    "sk",
    "h",
    "j",
    "y",
    "w",
    "x",
    "ph",
]
_VOWELS = ["a", "e", "i", "o", "u", "ae", "ai", "ei", "ou", "y", "ia", "eo"]
_CODAS = ["", "", "", "n", "r", "l", "s", "th", "x", "m", "nd", "rk", "sk", "v", "z", "lt"]
_ORG_SUFFIX = [
    "Institute",
    "Foundry",
    "Works",
    "Company",
    "Laboratories",
    "Trust",
    "Press",
    "Guild",
    "Holdings",
    "Society",
    "Collective",
    "Mills",
    "Shipping",
    "Observatory",
    "Bank",
]
_PLACE_SUFFIX = ["", "", "", "haven", "moor", "wick", "ford", "mouth", "dale", "stead"]
_WORK_NOUNS = [
    "Lanterns",
    "Letters",
    "Winters",
    "Orchard",
    "Bells",
    "Harbour",
    "Mirror",
    "Tides",
    "Archive",
    "Glass",
    "Lighthouse",
    "Ferryman",
    "Quarry",
    "Salt",
    "Clockmaker",
    "Embers",
]
_MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October", "November", "December"]
_SYMBOL_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789"


@dataclass
class Entity:
    id: int
    kind: str  # person | org | place | work | date
    name: str
    symbol: str  # random id used by concept `symbolic`
    words: tuple[str, ...] = ()  # the invented words of the name (world vocabulary)


@dataclass
class World:
    seed: int
    entities: list[Entity]
    facts: dict[str, dict[int, int]]  # relation -> subject id -> object id
    relation_symbols: dict[str, str]
    by_kind: dict[str, list[int]] = field(default_factory=dict)

    def object_of(self, relation: str, subject: int) -> int:
        return self.facts[relation][subject]

    def subjects(self, relation: str) -> list[int]:
        """Subjects that have this relation, in a fixed order (seeded runs stay reproducible)."""
        return list(self.facts[relation])

    def relations_of(self, subject: int) -> list[str]:
        return [r for r in RELATIONS if subject in self.facts[r]]

    def vocabulary(self) -> set[str]:
        """Every invented word of the world: no symbolic record may contain one."""
        return {w for e in self.entities for w in e.words}


def _pseudo_word(rng: random.Random, syllables: int) -> str:
    w = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(syllables)) + rng.choice(_CODAS)
    return w.capitalize()


def _symbol(rng: random.Random, used: set[str], n: int = 6) -> str:
    while True:
        s = "".join(rng.choice(_SYMBOL_CHARS) for _ in range(n))
        # at least one digit and one letter: never an English word, never a plain number
        if s not in used and any(c.isdigit() for c in s) and any(c.isalpha() for c in s):
            used.add(s)
            return s


def build_world(seed: int, n_people: int = 400, banned: set[str] | None = None) -> World:
    """Build a reproducible fictional world.

    Args:
        seed: the world's seed; same seed and arguments give the same world.
        n_people: number of people; organisations, places and works scale with it.
        banned: lower-case words no invented name part may equal (e.g. the haystack's vocabulary).

    Returns:
        A World whose facts cover every relation of RELATIONS.
    """
    rng = random.Random(f"world:{seed}")
    banned = {b.lower() for b in (banned or set())}
    used_words: set[str] = set()
    used_names: set[str] = set()
    used_symbols: set[str] = set()
    entities: list[Entity] = []

    def word(syl_lo: int = 2, syl_hi: int = 3) -> str:
        while True:
            w = _pseudo_word(rng, rng.randint(syl_lo, syl_hi))
            if w.lower() not in banned and len(w) >= 4 and w not in used_words:
                used_words.add(w)
                return w

    def add(kind: str, name: str, words: tuple[str, ...]) -> int:
        e = Entity(id=len(entities), kind=kind, name=name, symbol=_symbol(rng, used_symbols), words=words)
        entities.append(e)
        used_names.add(name)
        return e.id

    n_orgs, n_places, n_works = n_people // 4 + 5, n_people // 5 + 5, n_people // 2 + 5
    people = []
    for _ in range(n_people):
        first, last = word(2, 2), word(2, 3)
        people.append(add("person", f"{first} {last}", (first, last)))
    orgs = []
    for _ in range(n_orgs):
        w = word()
        orgs.append(add("org", f"{w} {rng.choice(_ORG_SUFFIX)}", (w,)))
    places = []
    for _ in range(n_places):
        name = word() + rng.choice(_PLACE_SUFFIX)
        while name.lower() in banned or name in used_words:
            name = word() + rng.choice(_PLACE_SUFFIX)
        used_words.add(name)
        places.append(add("place", name, (name,)))
    works = []
    for _ in range(n_works):
        w = word()
        works.append(add("work", f"The {rng.choice(_WORK_NOUNS)} of {w}", (w,)))

    facts: dict[str, dict[int, int]] = {r: {} for r in RELATIONS}
    order = people[:]
    rng.shuffle(order)
    for a, b in zip(order[0::2], order[1::2]):  # spouses come in pairs
        facts["spouse"][a], facts["spouse"][b] = b, a
    for p in people:
        facts["employer"][p] = rng.choice(orgs)
        facts["birthplace"][p] = rng.choice(places)
        date = f"{rng.randint(1, 28)} {rng.choice(_MONTHS)} {rng.randint(1820, 1995)}"
        facts["birth_date"][p] = add("date", date, ())
    for o in orgs:
        facts["founder"][o] = rng.choice(people)
        facts["headquarters"][o] = rng.choice(places)
    for w in works:
        facts["author"][w] = rng.choice(people)
    for r in facts:  # keep subject order sorted by id: reproducible regardless of insertion order
        facts[r] = dict(sorted(facts[r].items()))
    relation_symbols = {r: "r" + _symbol(rng, used_symbols, 4) for r in RELATIONS}
    by_kind: dict[str, list[int]] = {}
    for e in entities:
        by_kind.setdefault(e.kind, []).append(e.id)
    return World(seed=seed, entities=entities, facts=facts, relation_symbols=relation_symbols, by_kind=by_kind)


def check_relations(relations: list[str] | None) -> list[str]:
    """Validate a `--relations` list; None means all relations."""
    if not relations:
        return list(RELATIONS)
    unknown = [r for r in relations if r not in RELATIONS]
    if unknown:
        raise NeedleworkError(
            f"unknown relation(s) {', '.join(unknown)}",
            f"choose from {', '.join(RELATIONS)} (comma-separated)",
        )
    return list(dict.fromkeys(relations))


def sample_chain(world: World, hops: int, relations: list[str], rng: random.Random, tries: int = 200) -> list[tuple[int, str, int]]:
    """A random `hops`-long chain of facts (s0 r1 e1), (e1 r2 e2), ... with distinct entities.

    Raises:
        NeedleworkError: the allowed relations cannot be chained that many times.
    """
    starts = sorted({s for r in relations for s in world.facts[r]})
    for _ in range(tries):
        cur = rng.choice(starts)
        chain: list[tuple[int, str, int]] = []
        seen = {cur}
        for _h in range(hops):
            options = [r for r in relations if cur in world.facts[r]]
            if not options:
                break
            r = rng.choice(options)
            nxt = world.facts[r][cur]
            if nxt in seen:
                break
            chain.append((cur, r, nxt))
            seen.add(nxt)
            cur = nxt
        if len(chain) == hops:
            return chain
    raise NeedleworkError(
        f"cannot build {hops}-hop chains from relations {', '.join(relations)}",
        "allow relations that chain (e.g. author,employer,founder,birthplace) or use fewer --hops",
    )
