"""Tiny random models for intervention tests (Llama, Qwen2, Gemma2 shapes, as tests/models), a
saved tiny model that uses SmolLM2's tokenizer (for the end-to-end stage runs) and small records."""

import pytest
import torch

VOCAB = 128
ARCHS = ["llama", "qwen2", "gemma2"]


def build(kind: str, vocab: int = VOCAB, layers: int = 3):
    from transformers import Gemma2Config, Gemma2ForCausalLM, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    common = dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        vocab_size=vocab,
        max_position_embeddings=512,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    if kind == "llama":
        m = LlamaForCausalLM(LlamaConfig(num_key_value_heads=2, **common))
    elif kind == "qwen2":
        m = Qwen2ForCausalLM(Qwen2Config(num_key_value_heads=2, **common))
    elif kind == "gemma2":  # softcapping + alternating sliding-window (8) layers
        m = Gemma2ForCausalLM(
            Gemma2Config(
                num_key_value_heads=2, head_dim=16, sliding_window=8, attn_logit_softcapping=5.0, query_pre_attn_scalar=16, **common
            )
        )
    else:
        raise ValueError(kind)
    with torch.no_grad():  # sharpen attention so heads differ clearly
        for n, p in m.named_parameters():
            if "q_proj" in n or "k_proj" in n:
                p.mul_(4.0)
    return m.eval()


@pytest.fixture(params=ARCHS)
def arch(request):
    return request.param


@pytest.fixture
def tiny(arch):
    torch.manual_seed(0)
    return build(arch)


def make_records(n: int = 4):
    from needlework.data.records import Document, Needle, Record

    names = ["Orlan Vesk", "Mira Tobbel", "Kasso Brint", "Elda Quorn", "Peff Harl", "Una Stilb"]
    cities = ["Zarbith", "Quellmoor", "Dunvast", "Ostrel", "Vantrel", "Kelbourne"]
    recs = []
    for i in range(n):
        fact = f"{names[i % 6]} was born in the town of "
        text = fact + cities[i % 6] + "."
        docs = [
            Document(id="d0", title="Weather", text="Rain fell on the hills for most of the spring that year."),
            Document(id="d1", title=names[i % 6], text=text),
            Document(id="d2", title="Bridges", text="The old bridge was rebuilt twice after the floods."),
        ]
        recs.append(
            Record(
                id=f"r{i}",
                task="mdqa",
                concept="high",
                context="high",
                documents=docs,
                question=f"Where was {names[i % 6]} born?",
                answers=[cities[i % 6]],
                needles=[Needle(doc=1, start=len(fact), end=len(fact) + len(cities[i % 6]))],
                gold_docs=[1],
            )
        )
    return recs


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory, smollm2_tokenizer):
    """A saved 2-layer random Llama with SmolLM2's tokenizer, loadable by ModelConfig(name=dir)."""
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("tiny_llama")
    m = build("llama", vocab=len(smollm2_tokenizer), layers=2)
    m.config.eos_token_id = smollm2_tokenizer.eos_token_id
    m.config.pad_token_id = smollm2_tokenizer.pad_token_id
    m.generation_config.eos_token_id = smollm2_tokenizer.eos_token_id
    m.save_pretrained(d)
    smollm2_tokenizer.save_pretrained(d)
    return d


@pytest.fixture
def build_tiny():
    return build


@pytest.fixture
def records():
    return make_records(3)
