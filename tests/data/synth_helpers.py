"""Shared helpers for the synthetic-data tests: a byte-level BPE tokenizer built offline (a second
tokenizer family next to SmolLM2's) and small generation shortcuts."""

from __future__ import annotations

import functools


@functools.lru_cache(maxsize=1)
def byte_bpe_tokenizer():
    """A byte-level BPE (GPT-2 style, vocab 1,000) trained in a second on CPython docs prose and
    the world phrasings, wrapped as a transformers fast tokenizer with an EOS token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    from needlework.data import phrasings
    from needlework.data.haystack import python_docs_pool

    texts = [d.text for d in python_docs_pool().docs[:600]]
    texts += [t for ts in phrasings.HIGH.values() for t in ts] + [phrasings.FILLER] * 20
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=True)
    trainer = trainers.BpeTrainer(vocab_size=1000, special_tokens=["<eos>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<eos>")
