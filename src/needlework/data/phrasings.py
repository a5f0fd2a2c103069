"""How a fact is written, for each level of concept expression (SPEC §1).

`high`: many natural phrasings per relation (at least 20, picked at random), so a model cannot
latch onto one surface form. `low`: one rigid template per relation. `symbolic`: random ids only
(`"<subject-id> <relation-id> <object-id>."`), no world vocabulary at all. Every phrasing returns a
`Sentence` that knows where its answer (the object) sits, so needle spans are exact by construction.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

# {s} = subject name, {o} = object (the answer); {o} occurs exactly once in every template.
HIGH: dict[str, list[str]] = {
    "spouse": [
        "{s} is married to {o}.",
        "{s} and {o} have been married for many years.",
        "{s} married {o} in a small ceremony attended only by close friends.",
        "The spouse of {s} is {o}, whom {s} met while travelling.",
        "{s} shares a home with {o}, the person {s} married.",
        "Friends say that {s} and {o} make an unusually well-matched couple.",
        "Everyone at the wedding agreed that {s} could not have chosen a better partner than {o}.",
        "{s} later wed {o}, and the two settled down together.",
        "In most interviews {s} mentions {o}, the spouse who read every early draft.",
        "{o} has been the husband or wife of {s} since their wedding.",
        "It was {o} whom {s} eventually married.",
        "{s} tied the knot with {o} after a long engagement.",
        "The marriage of {s} to {o} surprised few of those who knew them.",
        "{s} is the spouse of {o}.",
        "Asked about home life, {s} speaks fondly of {o}, to whom {s} is married.",
        "{s} exchanged vows with {o} on a rainy spring afternoon.",
        "Long before fame arrived, {s} had already married {o}.",
        "{o}, the spouse of {s}, rarely appears in public.",
        "Records of the parish list {o} as having married {s}.",
        "{s} and {o} celebrated their wedding anniversary with a quiet dinner.",
        "The person {s} chose to marry was {o}.",
        "By all accounts {s} owes much to {o}, whom {s} married young.",
    ],
    "employer": [
        "{s} works for {o}.",
        "{s} is employed by {o}.",
        "{s} holds a position at {o}.",
        "For most of a career, {s} has drawn a salary from {o}.",
        "{o} employs {s}.",
        "{s} joined the staff of {o} and stayed there.",
        "{s} took a job at {o} straight after finishing school.",
        "Colleagues at {o} describe {s} as one of their most reliable people.",
        "The employer of {s} is {o}.",
        "{s} spends long days at the offices of {o}.",
        "Every morning {s} reports for work at {o}.",
        "{o} hired {s} several years ago.",
        "{s} earns a living working at {o}.",
        "At {o}, {s} is known as a hard-working member of the team.",
        "{s} is on the payroll of {o}.",
        "Recruited by {o}, {s} has worked there ever since.",
        "The company that employs {s} is {o}.",
        "{s} accepted an offer from {o} and has not left since.",
        "{s} currently works at {o}.",
        "Among the employees of {o} is {s}.",
        "{s} is a long-serving employee of {o}.",
        "When asked where {s} works, friends point to {o}.",
    ],
    "birthplace": [
        "{s} was born in {o}.",
        "{s} is a native of {o}.",
        "{o} is the birthplace of {s}.",
        "{s} came into the world in {o}.",
        "Born in {o}, {s} spent a happy childhood there.",
        "The town of {o} proudly claims {s} as one of its own, since {s} was born there.",
        "{s} was born and raised in {o}.",
        "{s} first saw the light of day in {o}.",
        "The birthplace of {s} is {o}.",
        "Birth records show that {s} was born in {o}.",
        "{s} often returns to {o}, the place of birth.",
        "Although {s} moved away young, {s} was born in {o}.",
        "{o} is where {s} was born.",
        "{s} hails from {o}, where {s} was born.",
        "Locals in {o} remember the day {s} was born.",
        "{s}, born in {o}, left home at eighteen.",
        "According to the register, {s} was born at {o}.",
        "{s} is originally from {o}, the place of birth.",
        "The place where {s} was born is {o}.",
        "{s} entered the world in the town of {o}.",
        "It was in {o} that {s} was born.",
        "Before anything else, {s} was a child of {o}, where {s} was born.",
    ],
    "founder": [
        "{s} was founded by {o}.",
        "{o} founded {s}.",
        "{o} is the founder of {s}.",
        "The founder of {s} is {o}.",
        "{s} owes its existence to {o}, who founded it.",
        "{o} established {s} with a small loan and a large ambition.",
        "It was {o} who set up {s}.",
        "{s} was started by {o}.",
        "{o} launched {s} from a rented back room.",
        "Historians credit {o} with founding {s}.",
        "{s} began life as the project of its founder, {o}.",
        "The organisation {s} was created by {o}.",
        "{o} created {s} and led it through its first years.",
        "Without {o}, who founded it, {s} would not exist.",
        "{s} was brought into being by {o}.",
        "Founded by {o}, {s} grew quickly.",
        "{o} is remembered above all as the person who founded {s}.",
        "The story of {s} starts with {o}, its founder.",
        "{s} was set up by {o}.",
        "Among its staff, {s} still honours {o} as the founder.",
        "{o} laid the foundations of {s}.",
        "{s} counts {o} as its founder.",
    ],
    "headquarters": [
        "{s} is headquartered in {o}.",
        "The headquarters of {s} are in {o}.",
        "{s} has its head office in {o}.",
        "{s} is based in {o}.",
        "The main offices of {s} stand in {o}.",
        "{o} is home to the headquarters of {s}.",
        "{s} runs its operations from a head office in {o}.",
        "Visitors to {s} are received at its headquarters in {o}.",
        "{s} moved its headquarters to {o} long ago and has stayed there.",
        "The head office of {s} is located in {o}.",
        "{s} keeps its headquarters in {o}.",
        "From its base in {o}, {s} manages all of its work.",
        "{o} hosts the head office of {s}.",
        "The administrative centre of {s} is in {o}.",
        "Anyone writing to {s} sends letters to its headquarters in {o}.",
        "{s} is run from {o}, where its headquarters are.",
        "Headquartered in {o}, {s} employs many local people.",
        "The central office of {s} sits in {o}.",
        "{s} has been based in {o} for decades.",
        "Its headquarters being in {o}, {s} is often linked with that town.",
        "{s} chose {o} for its headquarters.",
        "The seat of {s} is {o}.",
    ],
    "author": [
        "{s} was written by {o}.",
        "{o} wrote {s}.",
        "{o} is the author of {s}.",
        "The author of {s} is {o}.",
        "{s} is a book by {o}.",
        "{o} spent three winters writing {s}.",
        "{s} came from the pen of {o}.",
        "Critics praised {s}, the work of {o}.",
        "{s} was penned by {o}.",
        "It was {o} who wrote {s}.",
        "{o} published {s} to wide acclaim.",
        "Readers of {s} know its author, {o}, for a dry sense of humour.",
        "{s}, written by {o}, was an early success.",
        "{o} is best known for writing {s}.",
        "The writer behind {s} is {o}.",
        "{o} completed the manuscript of {s} in a single summer.",
        "{s} is among the works that {o} wrote.",
        "Written by {o}, {s} has been translated many times.",
        "{o} authored {s}.",
        "The book {s} was composed by {o}.",
        "{s} was the work of the writer {o}.",
        "Few know that {o} wrote {s} while working nights.",
    ],
    "birth_date": [
        "{s} was born on {o}.",
        "{s} was born on the date {o}.",
        "The birth date of {s} is {o}.",
        "{s} came into the world on {o}.",
        "Born on {o}, {s} grew up in modest circumstances.",
        "{o} is the day {s} was born.",
        "{s} celebrates a birthday each year in memory of {o}, the day of birth.",
        "Records list the birth of {s} on {o}.",
        "{s} first drew breath on {o}.",
        "The register shows that {s} was born on {o}.",
        "{s}, born on {o}, was the youngest of several children.",
        "It was on {o} that {s} was born.",
        "The day {s} was born was {o}.",
        "{s} entered the world on {o}.",
        "According to family papers, {s} was born on {o}.",
        "{s} has the date of birth {o}.",
        "On {o}, {s} was born.",
        "The birth of {s} took place on {o}.",
        "Official documents give {o} as the birth date of {s}.",
        "{s} was born on {o}, a cold and windy day.",
        "Friends mark {o}, the birthday of {s}, every year.",
        "{s} arrived in the world on {o}.",
    ],
}

LOW: dict[str, str] = {
    "spouse": "The spouse of {s} is {o}.",
    "employer": "The employer of {s} is {o}.",
    "birthplace": "The birthplace of {s} is {o}.",
    "founder": "The founder of {s} is {o}.",
    "headquarters": "The headquarters of {s} is {o}.",
    "author": "The author of {s} is {o}.",
    "birth_date": "The birth date of {s} is {o}.",
}

# One question and one noun phrase per relation; noun phrases compose multi-hop questions.
QUESTION: dict[str, str] = {
    "spouse": "Who is the spouse of {s}?",
    "employer": "Which organisation employs {s}?",
    "birthplace": "Where was {s} born?",
    "founder": "Who founded {s}?",
    "headquarters": "Where is {s} headquartered?",
    "author": "Who wrote {s}?",
    "birth_date": "When was {s} born?",
}
NOUN: dict[str, str] = {
    "spouse": "the spouse of {s}",
    "employer": "the employer of {s}",
    "birthplace": "the birthplace of {s}",
    "founder": "the founder of {s}",
    "headquarters": "the headquarters of {s}",
    "author": "the author of {s}",
    "birth_date": "the birth date of {s}",
}
SYMBOLIC_QUESTION = "What is the value of {r} for {s}?"
SYMBOLIC_NOUN = "the value of {r} for {s}"
SYMBOLIC_STATEMENT = "{s} {r} {o}."

# Neutral sentences that give a document about an entity some body without stating a fact.
GENERIC: dict[str, list[str]] = {
    "person": [
        "{s} is known among acquaintances for a patient and methodical temperament.",
        "{s} rarely speaks to the press about private matters.",
        "As a child, {s} collected stones and old maps.",
        "{s} keeps a notebook and writes in it every evening.",
        "People who have met {s} remember a quiet, careful listener.",
        "{s} enjoys long walks and has little patience for crowded rooms.",
        "In later years {s} took up gardening with some enthusiasm.",
        "{s} once said that the best ideas arrive while doing something else.",
    ],
    "org": [
        "{s} publishes a short report on its work every year.",
        "Over time {s} has grown from a handful of people into a sizeable concern.",
        "{s} is known for a cautious approach to new ventures.",
        "Former members of {s} speak well of its working culture.",
        "{s} has survived several difficult periods without closing.",
        "The early years of {s} were marked by frequent disagreements about its direction.",
    ],
    "work": [
        "{s} is divided into short chapters that each follow a different character.",
        "Some readers find {s} slow at first but rewarding in the end.",
        "{s} has been reprinted several times.",
        "The closing pages of {s} are often quoted.",
        "{s} received mixed reviews when it first appeared.",
        "Teachers sometimes assign {s} to older students.",
    ],
    "place": [
        "{s} lies in a valley surrounded by low hills.",
        "Market day in {s} draws visitors from the nearby villages.",
        "{s} has a small harbour and a covered market.",
        "The old quarter of {s} is known for its narrow streets.",
    ],
}

FILLER_SENTENCES = ["The grass is green.", "The sky is blue.", "The sun is yellow.", "Here we go.", "There and back again."]
FILLER = " ".join(FILLER_SENTENCES)


@dataclass
class Sentence:
    """A sentence to insert into a document; `needles` are (start, end) char spans of the answer."""

    text: str
    needles: list[tuple[int, int]] = field(default_factory=list)
    template: str = ""


def fill(template: str, s: str, o: str, needle: bool = True) -> Sentence:
    """Fill a template with subject and object, recording where the object was written."""
    head, tail = template.split("{o}")
    head = head.replace("{s}", s)
    text = head + o + tail.replace("{s}", s)
    if text[0].islower():
        text = text[0].upper() + text[1:]
    return Sentence(text=text, needles=[(len(head), len(head) + len(o))] if needle else [], template=template)


def express(relation: str, s: str, o: str, concept: str, rng: random.Random, needle: bool = True) -> Sentence:
    """Write the fact (s, relation, o) at a concept level. For `symbolic`, s/relation/o are ids.

    Args:
        relation: relation name (for symbolic: the relation's symbolic id).
        concept: `high` (random phrasing of HIGH), `low` (the LOW template) or `symbolic`.
    """
    if concept == "high":
        return fill(rng.choice(HIGH[relation]), s, o, needle)
    if concept == "low":
        return fill(LOW[relation], s, o, needle)
    if concept == "symbolic":
        return fill(SYMBOLIC_STATEMENT.replace("{r}", relation), s, o, needle)
    raise ValueError(f"unknown concept {concept!r}")


def question(relation: str, s: str, concept: str) -> str:
    """The single-hop question asking for the object of (s, relation)."""
    if concept == "symbolic":
        return SYMBOLIC_QUESTION.format(r=relation, s=s)
    return QUESTION[relation].format(s=s)


def composed_question(relations: list[str], s: str, concept: str) -> str:
    """A multi-hop question: the last relation asked of the chain of noun phrases over `s`."""
    inner = s
    for r in relations[:-1]:
        inner = SYMBOLIC_NOUN.format(r=r, s=inner) if concept == "symbolic" else NOUN[r].format(s=inner)
    return question(relations[-1], inner, concept)


def generic(kind: str, s: str, rng: random.Random) -> Sentence:
    """A neutral sentence about entity `s` of type `kind` (no fact, no needle)."""
    template = rng.choice(GENERIC[kind])
    return Sentence(text=template.replace("{s}", s), template=template)
