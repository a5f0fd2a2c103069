"""Selective checkpointing (`save-attention`) gives the same loss and gradients as full checkpointing
and as no checkpointing, and really skips the attention kernel in backward."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import LlamaConfig, LlamaForCausalLM

from needlework.train.checkpointing import attention_ops, checkpointing_kwargs, enable_checkpointing


class CountAttention(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.n = 0
        self.ops = attention_ops()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.n += func in self.ops
        return func(*args, **(kwargs or {}))


def _model(device):
    torch.manual_seed(0)
    cfg = LlamaConfig(
        hidden_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        vocab_size=256,
        max_position_embeddings=512,
    )
    m = LlamaForCausalLM(cfg)
    m.config._attn_implementation = "sdpa"
    m.config.use_cache = False
    # CUDA: bf16, so SDPA picks a fused kernel (fp32 at head_dim 16 may fall back to the unfused math path)
    return m.to(device, torch.bfloat16 if device == "cuda" else torch.float32).train()


def _grads(mode: str, device: str):
    m = _model(device)
    enable_checkpointing(m, mode)
    ids = torch.randint(0, 256, (2, 48), generator=torch.Generator().manual_seed(1)).to(device)
    loss = m(input_ids=ids, labels=ids).loss
    counter = CountAttention()
    with counter:
        loss.backward()
    return float(loss.detach()), {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}, counter.n


@pytest.mark.parametrize("device", ["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
def test_save_attention_matches_full_and_skips_attention_recompute(device):
    loss_off, g_off, n_off = _grads("off", device)
    loss_full, g_full, n_full = _grads("full", device)
    loss_sac, g_sac, n_sac = _grads("save-attention", device)
    assert loss_off == pytest.approx(loss_full) == pytest.approx(loss_sac)
    assert set(g_off) == set(g_full) == set(g_sac)
    tol = dict(rtol=1e-5, atol=1e-6) if device == "cpu" else dict(rtol=2e-2, atol=2e-3)
    for n in g_off:
        torch.testing.assert_close(g_full[n], g_off[n], **tol)
        torch.testing.assert_close(g_sac[n], g_off[n], **tol)
    assert n_off == 0  # no checkpointing: backward runs no attention forward
    assert n_full == 3  # full checkpointing recomputes attention once per layer
    assert n_sac == 0  # save-attention reuses the kernel's saved outputs


def test_unknown_mode():
    with pytest.raises(ValueError):
        checkpointing_kwargs("off")
