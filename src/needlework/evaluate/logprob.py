"""Teacher-forced log-probability of the gold answer: a cheap, dense score for quick comparisons.

Each example is rendered with its answer (`render(with_answer=True)`). Sequences are LEFT padded,
so every answer ends at the last column; then `logits_to_keep = longest answer + 1` asks the model
for logits at the answer positions only, and a 32K-token prompt never produces 32K x vocabulary
logits. The model's own forward runs (adapters, soft-capping and installed hooks included).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tqdm.auto import tqdm

from needlework.data.records import Record
from needlework.data.render import render
from needlework.models.batching import for_batches
from needlework.models.decode import left_pad
from needlework.models.sites import model_device

__all__ = ["AnswerLogprob", "answer_logprobs_ids", "gold_logprobs"]


@dataclass
class AnswerLogprob:
    """Sum of log p(answer token | prefix) over the `n_tokens` scored answer tokens."""

    logprob: float
    n_tokens: int

    @property
    def per_token(self) -> float:
        return self.logprob / self.n_tokens if self.n_tokens else float("nan")


def answer_logprobs_ids(
    model,
    sequences: Sequence[Sequence[int]],
    n_answer: Sequence[int],
    *,
    pad_id: int = 0,
    batch_size: int | str = 8,
    progress: bool = True,
) -> list[AnswerLogprob]:
    """Log-probability of the last `n_answer[i]` tokens of each sequence given what precedes them.

    Args:
        model: causal LM accepting `logits_to_keep` (transformers >= 4.50 models do).
        sequences: prompt + answer ids per example.
        n_answer: how many trailing tokens to score (>= 1 and < the sequence length).
        pad_id: padding id (masked out).
        batch_size: sequences per forward pass; sorted by length for efficiency, order restored.
    Returns:
        one AnswerLogprob per sequence, in input order.
    Raises:
        ValueError: an `n_answer` outside 1..len(sequence)-1.
    """
    import torch

    for s, m in zip(sequences, n_answer):
        if not 1 <= m < len(s):
            raise ValueError(f"cannot score {m} answer tokens of a {len(s)}-token sequence")
    n = len(sequences)
    order = sorted(range(n), key=lambda i: -len(sequences[i]))
    out: list[AnswerLogprob | None] = [None] * n
    device = model_device(model)
    bar = tqdm(total=n, desc="logprob", unit="ex", disable=not progress or n == 0, leave=False)

    def run(idx: list[int]) -> None:
        ids, mask, pos = left_pad([sequences[i] for i in idx], pad_id, device)
        L = ids.shape[1]
        m_max = max(n_answer[i] for i in idx)
        # Logits at the last m_max + 1 columns; column c predicts token c + 1, so the first
        # m_max of them predict the last m_max tokens.
        logits = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False, logits_to_keep=m_max + 1).logits[
            :, :-1
        ]  # b, m_max, vocab
        logp = torch.log_softmax(logits.float(), dim=-1)
        targets = ids[:, L - m_max :]  # b, m_max
        tok_lp = logp.gather(-1, targets[..., None])[..., 0]  # b, m_max
        for r, i in enumerate(idx):
            m = n_answer[i]
            out[i] = AnswerLogprob(float(tok_lp[r, m_max - m :].sum()), m)

    with torch.inference_mode():
        for_batches(order, batch_size, run, device, bar)
    bar.close()
    return out  # type: ignore[return-value]


def gold_logprobs(
    model,
    tokenizer,
    records: Sequence[Record],
    chat: bool,
    batch_size: int | str = 8,
    include_eos: bool = False,
    progress: bool = True,
) -> list[AnswerLogprob]:
    """Teacher-forced log p(gold answer | prompt) for each record, as rendered for training.

    Args:
        include_eos: also score the EOS token that ends the answer (whether the model stops).
    Returns:
        one AnswerLogprob per record, in order.
    """
    seqs, n_ans = [], []
    for r in records:
        rd = render(r, tokenizer, chat=chat, with_answer=True)
        ids = rd.input_ids
        if not include_eos and tokenizer.eos_token_id is not None and len(ids) > rd.prompt_len and ids[-1] == tokenizer.eos_token_id:
            ids = ids[:-1]
        seqs.append(ids)
        n_ans.append(len(ids) - rd.prompt_len)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return answer_logprobs_ids(model, seqs, n_ans, pad_id=pad_id, batch_size=batch_size, progress=progress)
