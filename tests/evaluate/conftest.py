"""Fixtures for the evaluate tests: hand-made records of every task (no dependence on the synthetic
generator) and tiny random Llama/Qwen2 models. Helpers are handed out as fixtures so the tests work
under any pytest import mode."""

from __future__ import annotations

import random

import pytest

from needlework.data.records import Document, Needle, Record

FILLER = [
    "The museum opened a new wing for modern sculpture last spring.",
    "Farmers in the valley grow apples, pears and a little barley.",
    "The river floods every few years, so the houses stand on stilts.",
    "A local choir performs in the old church every Sunday evening.",
    "The train to the coast leaves twice a day from the central station.",
]


def qa_record(
    rid: str, task: str, question: str, fact: str, answer: str, n_docs: int = 5, gold: int = 2, answers: list[str] | None = None
) -> Record:
    """A needle record: filler documents, one of which ends with `fact` (which contains `answer`)."""
    docs, needles = [], []
    for d in range(n_docs):
        text = " ".join(FILLER[(d + k) % len(FILLER)] for k in range(3))
        if d == gold:
            pre = text + " "
            start = len(pre) + fact.index(answer)
            text = pre + fact
            needles.append(Needle(doc=d, start=start, end=start + len(answer)))
        docs.append(Document(id=f"{rid}-d{d}", title=f"Page {d}", text=text))
    return Record(
        id=rid, task=task, concept="low", context="low", documents=docs, question=question, answers=answers or [answer], needles=needles
    )


def summhay_record(rid: str = "s0", gold: tuple[int, ...] = (1, 3), n_docs: int = 4) -> Record:
    """A SummHay record whose insight sits in documents `gold` (0-based)."""
    insight = "Remote teams meet in person once a quarter."
    docs, needles = [], []
    for d in range(n_docs):
        text = FILLER[d % len(FILLER)]
        if d in gold:
            start = len(text) + 1
            text = text + " " + insight
            needles.append(Needle(doc=d, start=start, end=start + len(insight)))
        docs.append(Document(id=f"doc{d}", title="", text=text))
    return Record(
        id=rid,
        task="summhay",
        concept="high",
        context="high",
        documents=docs,
        question=insight,
        answers=[insight],
        needles=needles,
        citations=[f"doc{d}" for d in gold],
        gold_docs=list(gold),
    )


def _mixed_records() -> list[Record]:
    return [
        qa_record("m0", "mdqa", "What is the secret password?", "The secret password is Marigold.", "Marigold"),
        qa_record(
            "q0",
            "musique",
            "In which city was the founder born?",
            "The founder was born in Lisbon.",
            "Lisbon",
            answers=["Lisbon", "Lisboa"],
        ),
        qa_record("k0", "kv", "7f3a-91bc", "Key 7f3a-91bc has value 2d4e-8812.", "2d4e-8812"),
        summhay_record(),
    ]


def random_prompts(lengths, seed=0) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(100, 40000) for _ in range(n)] for n in lengths]


@pytest.fixture
def mixed_records() -> list[Record]:
    """One record per task: mdqa, musique (with an alias), kv, summhay (gold = positions [2] [4])."""
    return _mixed_records()


@pytest.fixture
def make_qa_record():
    return qa_record


@pytest.fixture
def make_summhay_record():
    return summhay_record


@pytest.fixture
def make_prompts():
    return random_prompts


def _tiny(arch: str, vocab_size: int):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    kw = dict(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        vocab_size=vocab_size,
        max_position_embeddings=2048,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    if arch == "llama":
        model = LlamaForCausalLM(LlamaConfig(**kw))
    else:
        model = Qwen2ForCausalLM(Qwen2Config(**kw))
    return model.eval()


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def tiny_model(request, smollm2_tokenizer):
    return _tiny(request.param, len(smollm2_tokenizer))


@pytest.fixture(scope="module")
def tiny_llama(smollm2_tokenizer):
    return _tiny("llama", len(smollm2_tokenizer))


@pytest.fixture
def make_tiny():
    """Builds a fresh tiny model (for tests that modify it, e.g. by injecting LoRA layers)."""
    return _tiny
