"""Fixtures for training tests: an offline word-level tokenizer, a tiny random Llama saved to disk
(so `ModelConfig(name=dir)` loads it through load_model), and a copy task built by hand."""

from __future__ import annotations

import random

import pytest

from needlework.data.records import Document, Needle, Record
from needlework.data.render import INSTRUCTIONS

FILLER = "The grass is green . The sky is blue . The sun is yellow . Here we go . There and back again ."
KEY = "special magic number"


def copy_record(i: int, value: str, n_filler: int = 1) -> Record:
    """A kv record: filler documents and one document holding the value; the answer is the value."""
    needle_doc = f"The {KEY} is {value} ."
    docs = [Document(id=f"f{j}", title="", text=FILLER) for j in range(n_filler)] + [Document(id="gold", title="", text=needle_doc)]
    start = needle_doc.index(value)
    return Record(
        id=f"copy-{i}",
        task="kv",
        concept="low",
        context="low",
        documents=docs,
        question=KEY,
        answers=[value],
        needles=[Needle(doc=n_filler, start=start, end=start + len(value))],
        gold_docs=[n_filler],
    )


def copy_records(n: int, seed: int, n_filler: int = 1) -> list[Record]:
    rng = random.Random(seed)
    return [copy_record(i, "".join(rng.choice("0123456789") for _ in range(4)), n_filler) for i in range(n)]


def build_tokenizer():
    """A word-level fast tokenizer (digits split one per token) over the words the copy task uses."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    pre = pre_tokenizers.Sequence([pre_tokenizers.Whitespace(), pre_tokenizers.Digits(individual_digits=True)])
    words: list[str] = []
    for text in list(INSTRUCTIONS.values()) + [FILLER, f"Document [1] (Title: x) Key: Question: Answer: Documents: {KEY} is ."]:
        words += [w for w, _ in pre.pre_tokenize_str(text)]
    vocab = {t: i for i, t in enumerate(["<pad>", "<unk>", "</s>"] + sorted(set(words) | set("0123456789")))}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre
    return PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="</s>", pad_token="<pad>", unk_token="<unk>")


def save_tiny_llama(path, tok, hidden: int = 64, layers: int = 2, seed: int = 0) -> str:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=2 * hidden,
        max_position_embeddings=512,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        bos_token_id=None,
        tie_word_embeddings=False,
    )
    LlamaForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def tiny_tok():
    return build_tokenizer()


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory, tiny_tok) -> str:
    """Directory of a 2-layer, width-64 random Llama with the copy-task tokenizer."""
    return save_tiny_llama(tmp_path_factory.mktemp("tiny_llama"), tiny_tok)


@pytest.fixture(scope="session")
def other_llama(tmp_path_factory, tiny_tok) -> str:
    """A differently shaped tiny Llama (width 32): adapters of `tiny_llama` must not fit it."""
    return save_tiny_llama(tmp_path_factory.mktemp("other_llama"), tiny_tok, hidden=32)


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models run faster on one thread, and far faster when other jobs share the CPU
    (measured: 20 steps 2.8 s on 1 thread vs 23 s on 2 under load)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
