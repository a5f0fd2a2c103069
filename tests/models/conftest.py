"""Tiny random models of each architecture shape (Llama, Mistral with a sliding window, Qwen2,
Gemma2 with logit softcapping and local layers), shared by models/heads/interventions tests."""

import pytest
import torch

VOCAB = 128


def _build(kind: str):
    from transformers import (
        Gemma2Config,
        Gemma2ForCausalLM,
        LlamaConfig,
        LlamaForCausalLM,
        MistralConfig,
        MistralForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    common = dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=3,
        num_attention_heads=4,
        vocab_size=VOCAB,
        max_position_embeddings=512,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    if kind == "llama":
        m = LlamaForCausalLM(LlamaConfig(num_key_value_heads=2, **common))
    elif kind == "mistral":
        m = MistralForCausalLM(MistralConfig(num_key_value_heads=1, sliding_window=8, **common))  # MQA + window
    elif kind == "qwen2":
        m = Qwen2ForCausalLM(Qwen2Config(num_key_value_heads=2, **common))
    elif kind == "gemma2":
        m = Gemma2ForCausalLM(
            Gemma2Config(
                num_key_value_heads=2, head_dim=16, sliding_window=8, attn_logit_softcapping=5.0, query_pre_attn_scalar=16, **common
            )
        )
    else:
        raise ValueError(kind)
    # sharpen attention so argmaxes are well separated from ties
    with torch.no_grad():
        for n, p in m.named_parameters():
            if "q_proj" in n or "k_proj" in n:
                p.mul_(4.0)
    return m.eval()


ARCHS = ["llama", "mistral", "qwen2", "gemma2"]


@pytest.fixture(params=ARCHS)
def tiny_model(request):
    torch.manual_seed(0)
    return _build(request.param)


@pytest.fixture
def build_tiny():
    return _build
