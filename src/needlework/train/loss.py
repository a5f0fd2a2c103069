"""The answer-only output path: run the decoder to hidden states, then apply the LM head and the
softmax only where an answer token is predicted.

The common recipe computes logits for every position (b × t × vocab, then an fp32 copy for the
loss) and masks non-answer labels with -100. At 32K tokens and a 128K vocabulary that is 16 GiB of
fp32 logits for a 16-token answer. Here the head sees n answer positions only, so its cost is
n × vocab; the loss and gradients are identical (tests/train/test_loss.py checks this against the
full-logits path).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def base_causal_lm(model: nn.Module) -> nn.Module:
    """The transformers *ForCausalLM under a peft wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


class AnswerOnlyLM(nn.Module):
    """Wraps a causal LM (optionally peft) so that `forward` returns per-answer-token NLL and argmax.

    It is an nn.Module so that accelerate/DDP wrap *this* forward, and gradient sync sees every
    parameter the answer path uses.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        base = base_causal_lm(model)
        self.decoder = base.get_decoder()  # LlamaModel etc.: embeddings + blocks + final norm
        self.lm_head = base.get_output_embeddings()
        self.softcap = getattr(base.config, "final_logit_softcapping", None)  # Gemma 2/3

    def forward(
        self, input_ids: torch.Tensor, position_ids: torch.Tensor | None, rows: torch.Tensor, pos: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (nll, pred): NLL of each target (n,) in at least fp32 (fp64 models keep fp64), and the
        argmax token at each (n,)."""
        hidden = self.decoder(input_ids=input_ids, position_ids=position_ids, use_cache=False).last_hidden_state  # b, t, d
        h = hidden[rows, pos]  # n, d: only the positions that predict an answer token
        logits = self.lm_head(h)  # n, vocab
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # bf16/fp16 -> fp32; fp64 stays
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        nll = F.cross_entropy(logits, targets, reduction="none")
        return nll, logits.argmax(-1)


def full_logits_loss(model: nn.Module, batch) -> torch.Tensor:
    """The common recipe (the oracle for tests and the benchmark baseline): full-sequence logits,
    labels -100 outside answers, transformers' own mean cross-entropy."""
    return model(input_ids=batch.input_ids, position_ids=batch.position_ids, labels=batch.labels(), use_cache=False).loss
