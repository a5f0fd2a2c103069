"""Batched greedy generation for evaluation: left padding, one KV cache per batch, per-row stop
rules. We drive the forward passes ourselves instead of `model.generate` so that stop rules and
budgets can differ per row (tasks can be mixed in one batch), the prefill computes logits for the
last position only, and hooks installed on the model (knockout, patching) see plain forward calls.

Stop rules (per example): EOS (the tokenizer's and the generation config's EOS ids), a newline
after some non-blank text for short-answer tasks (mdqa, musique, kv), and a task budget of new
tokens (`DEFAULT_MAX_NEW_TOKENS`, overridable).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Sequence

from tqdm.auto import tqdm

from needlework.data.records import Record
from needlework.data.render import render, resolve_chat  # noqa: F401  (resolve_chat: one rule for every stage)
from needlework.errors import NeedleworkError

if TYPE_CHECKING:  # pragma: no cover
    from needlework.evaluate.evaluate import EvalConfig

DEFAULT_MAX_NEW_TOKENS = {"mdqa": 32, "musique": 32, "kv": 32, "summhay": 64}
NEWLINE_STOP_TASKS = frozenset({"mdqa", "musique", "kv"})


def eos_token_ids(model, tokenizer) -> frozenset[int]:
    """EOS ids from the tokenizer and the model's generation config (which may list several)."""
    ids: set[int] = set()
    if tokenizer is not None and tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    gc = getattr(model, "generation_config", None)
    eos = getattr(gc, "eos_token_id", None) if gc is not None else None
    if eos is not None:
        ids.update(int(e) for e in ([eos] if isinstance(eos, int) else eos))
    return frozenset(ids)


@functools.lru_cache(maxsize=8)
def newline_and_blank_ids(tokenizer) -> tuple[frozenset[int], frozenset[int]]:
    """(ids whose text contains a newline, ids whose text is blank), decoding every vocab entry once."""
    n = len(tokenizer)
    texts = tokenizer.batch_decode([[i] for i in range(n)], skip_special_tokens=False, clean_up_tokenization_spaces=False)
    newline = frozenset(i for i, t in enumerate(texts) if "\n" in t)
    blank = frozenset(i for i, t in enumerate(texts) if not t.strip())
    return newline, blank


def postprocess(text: str, stop_at_newline: bool) -> str:
    """The answer string: leading/trailing whitespace stripped; for short-answer tasks, cut at the
    first newline after the text starts (the same rule the decoding loop stops on)."""
    text = text.strip()
    if stop_at_newline:
        text = text.split("\n", 1)[0].strip()
    return text


def _forward(model, state: dict, **kw):
    """One forward pass; asks for last-position logits only when the model supports it."""
    if state.get("logits_to_keep", True):
        try:
            return model(**kw, logits_to_keep=1)
        except TypeError:
            state["logits_to_keep"] = False
    return model(**kw)


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int, device):
    """Left-pad a batch so every prompt ends at the last column; returns (ids, mask, position_ids),
    each (b, q), with positions counting real tokens only."""
    import torch

    B, L = len(prompts), max(len(p) for p in prompts)
    ids = torch.full((B, L), pad_id, dtype=torch.long)
    mask = torch.zeros((B, L), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, L - len(p) :] = torch.tensor(p, dtype=torch.long)
        mask[i, L - len(p) :] = 1
    ids, mask = ids.to(device), mask.to(device)
    return ids, mask, (mask.cumsum(-1) - 1).clamp(min=0)


class StopRules:
    """Per-row stop rules of greedy decoding, shared by evaluation and patching: EOS (not kept), a
    newline once some text has appeared (for short-answer tasks), and a per-row token budget."""

    def __init__(self, max_new, stop_newline, eos_ids, newline_ids, blank_ids):
        self.max_new, self.stop_newline = list(max_new), list(stop_newline)
        self.eos_ids, self.newline_ids, self.blank_ids = eos_ids, newline_ids, blank_ids
        self.gen: list[list[int]] = [[] for _ in self.max_new]
        self.done = [m <= 0 for m in self.max_new]
        self.has_text = [False] * len(self.max_new)

    def push(self, toks: Sequence[int]) -> bool:
        """Take one step's tokens (one per row); returns True when every row is done."""
        for i, t in enumerate(toks):
            if self.done[i]:
                continue
            if t in self.eos_ids:
                self.done[i] = True
                continue
            self.gen[i].append(t)
            if self.stop_newline[i] and t in self.newline_ids and (self.has_text[i] or t not in self.blank_ids):
                self.done[i] = True
            self.has_text[i] = self.has_text[i] or t not in self.blank_ids
            if len(self.gen[i]) >= self.max_new[i]:
                self.done[i] = True
        return all(self.done)


def decode_loop(step, prompts: Sequence[Sequence[int]], pad_id: int, device, rules) -> list[list[int]]:
    """The greedy decoding loop that evaluation, patching and head scoring share.

    Left-pads the prompts, then calls `step(ids, mask, position_ids, k)` for the prefill (k = 0) and
    for each new token (k >= 1, ids (b, 1)); `step` runs the model(s), keeps its own KV caches, and
    returns the last position's logits (b, vocab), whose argmax is token k. `rules.push(tokens)`
    takes each step's tokens and says when every row is done (it must enforce a token budget);
    returns `rules.gen`, the kept tokens per row.
    """
    import torch

    ids, mask, pos = left_pad(prompts, pad_id, device)
    nxt = step(ids, mask, pos, 0).argmax(-1)  # b
    k = 0
    while not rules.push(nxt.tolist()):
        k += 1
        mask = torch.cat([mask, mask.new_ones((len(prompts), 1))], dim=1)
        pos = pos[:, -1:] + 1
        nxt = step(nxt[:, None], mask, pos, k).argmax(-1)
    return rules.gen


def _generate_batch(model, prompts, max_new, stop_newline, pad_id, eos_ids, newline_ids, blank_ids):
    from needlework.models.sites import cache_of, model_device, with_cache

    state: dict = {}
    cache = [None]

    def step(ids, mask, pos, _k):
        out = _forward(model, state, input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True,
                       **with_cache(model, cache[0]))
        cache[0] = cache_of(out)
        return out.logits[:, -1]

    rules = StopRules(max_new, stop_newline, eos_ids, newline_ids, blank_ids)
    return decode_loop(step, prompts, pad_id, model_device(model), rules)


def greedy_generate(
    model,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int | Sequence[int],
    *,
    pad_id: int,
    eos_ids: frozenset[int] = frozenset(),
    stop_at_newline: bool | Sequence[bool] = False,
    newline_ids: frozenset[int] = frozenset(),
    blank_ids: frozenset[int] = frozenset(),
    batch_size: int = 8,
    progress: bool = True,
) -> list[list[int]]:
    """Greedy continuation token ids for each prompt, batched with left padding and a KV cache.

    Prompts are sorted by length (longest first, so memory trouble shows in the first batch) and
    the results come back in input order. A row stops at an EOS id (not included in its output),
    after a newline token once it has produced non-blank text (when `stop_at_newline`; the newline
    token is included), or after its `max_new_tokens`.

    Args:
        model: a causal LM (transformers, or peft-wrapped), in eval mode; it is called as is.
        prompts: token ids per example, special tokens included.
        max_new_tokens: one budget for all, or one per prompt.
        pad_id: id written into padding (masked out, so any valid id works).
        eos_ids, newline_ids, blank_ids: token id sets for the stop rules (see `eos_token_ids`,
            `newline_and_blank_ids`).
        stop_at_newline: one flag for all, or one per prompt.
        batch_size: prompts per forward pass.
    Returns:
        generated ids per prompt, in input order.
    """
    import torch

    n = len(prompts)
    max_new = [int(max_new_tokens)] * n if isinstance(max_new_tokens, int) else [int(m) for m in max_new_tokens]
    stops = [bool(stop_at_newline)] * n if isinstance(stop_at_newline, bool) else [bool(s) for s in stop_at_newline]
    if any(len(p) == 0 for p in prompts):
        raise NeedleworkError("an empty prompt was given to generation", "render records with at least one token")
    order = sorted(range(n), key=lambda i: -len(prompts[i]))
    results: list[list[int]] = [[] for _ in range(n)]
    bar = tqdm(total=n, desc="generate", unit="ex", disable=not progress or n == 0, leave=False)
    with torch.inference_mode():
        for s in range(0, n, max(1, batch_size)):
            idx = order[s : s + max(1, batch_size)]
            gen = _generate_batch(model, [list(prompts[i]) for i in idx], [max_new[i] for i in idx],
                                  [stops[i] for i in idx], pad_id, eos_ids, newline_ids, blank_ids)
            for i, g in zip(idx, gen):
                results[i] = g
            bar.update(len(idx))
    bar.close()
    return results


def render_prompts(records: Sequence[Record], tokenizer, chat: bool) -> list[list[int]]:
    """Prompt token ids of each record (no answer), as training and head scoring render them."""
    return [render(r, tokenizer, chat=chat, with_answer=False).prompt_ids for r in records]


def check_lengths(model, prompts: Sequence[Sequence[int]], max_new: Sequence[int], records: Sequence[Record]) -> None:
    """Raise NeedleworkError when a prompt plus its budget exceeds the model's position limit."""
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if not limit:
        return
    over = [(r.id, len(p) + m) for r, p, m in zip(records, prompts, max_new) if len(p) + m > limit]
    if over:
        rid, n_tok = max(over, key=lambda x: x[1])
        raise NeedleworkError(
            f"{len(over)} example(s) exceed the model's {limit} positions (longest: {rid}, {n_tok} tokens with the answer budget)",
            "use shorter data, or load the model with a larger --max-position-embeddings/--rope-theta",
        )


def generate_answers(model, tokenizer, records: Sequence[Record], cfg: "EvalConfig", progress: bool = True) -> list[str]:
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
    chat = resolve_chat(cfg.chat, tokenizer)
    prompts = render_prompts(records, tokenizer, chat)
    max_new = [cfg.max_new_tokens or DEFAULT_MAX_NEW_TOKENS.get(r.task, 32) for r in records]
    check_lengths(model, prompts, max_new, records)
    stops = [r.task in NEWLINE_STOP_TASKS for r in records]
    newline_ids, blank_ids = newline_and_blank_ids(tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    gen = greedy_generate(model, prompts, max_new, pad_id=pad_id, eos_ids=eos_token_ids(model, tokenizer),
                          stop_at_newline=stops, newline_ids=newline_ids, blank_ids=blank_ids,
                          batch_size=cfg.batch_size, progress=progress)
    return [postprocess(tokenizer.decode(g, skip_special_tokens=True, clean_up_tokenization_spaces=False), s) for g, s in zip(gen, stops)]
