"""Evaluation's greedy answers: `generate_answers` runs the decoding layer (`models.decode`) with
the options of an `EvalConfig`. Everything generic (left padding, the prefill/step loop, stop rules,
EOS/newline ids, rendering and length checks) lives in `needlework.models.decode`, which patching,
knockout and head scoring use too.
"""

from __future__ import annotations

from collections.abc import Sequence

from needlework.data.records import Record
from needlework.evaluate.config import EvalConfig
from needlework.models.decode import cached_step, greedy_answers, greedy_generate, plan_answers, resolve_chat
from needlework.models.sites import model_device

# greedy_generate and resolve_chat: re-exported for callers that import them from here
__all__ = ["generate_answers", "greedy_generate", "resolve_chat"]


def generate_answers(model, tokenizer, records: Sequence[Record], cfg: EvalConfig, progress: bool = True) -> list[str]:
    """Greedy answers for records, rendered with `needlework.data.render.render(with_answer=False)`.

    Args:
        model: a loaded causal LM (hooks, adapters and all are used as installed).
        tokenizer: its tokenizer (fast, with a pad or EOS token).
        records: examples of any mix of tasks.
        cfg: uses `batch_size`, `max_new_tokens` (None = per-task default) and `chat`
            (None = use the chat template when the tokenizer has one).
    Returns:
        one answer string per record, in order, after stop rules and whitespace stripping.
    Raises:
        NeedleworkError: a prompt is too long for the model; chat asked for without a template.
    """
    plan = plan_answers(model, tokenizer, records, cfg.chat, cfg.max_new_tokens)
    gen = greedy_answers(plan, lambda: cached_step(model), model_device(model), cfg.batch_size, progress)
    return plan.texts(tokenizer, gen)
