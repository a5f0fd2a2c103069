"""The decoding layer: batched greedy decoding that evaluation, generate-mode head scoring, knockout
and lockstep patching share, so that all of them stop, pad and render the same way.

We drive the forward passes ourselves instead of `model.generate` so that stop rules and budgets
can differ per row (tasks can be mixed in one batch), the prefill computes logits for the last
position only, and hooks installed on the model (knockout, patching, probes) see plain forward
calls. The pieces, bottom up:

- `left_pad`: a batch whose prompts all end at the last column, positions counting real tokens.
- `decode_loop(step, prompts, pad_id, device, rules)`: the prefill/step loop. A *step function*
  `step(ids, mask, position_ids, k) -> logits (b, vocab)` runs the model(s) and keeps its own KV
  caches; `cached_step(model)` is the one-model step, and callers with hooks write their own.
- Stop rules: `StopRules` (evaluation's: EOS, newline once text has appeared, a per-row budget)
  and `StopWhen` (a predicate `is_stop(token, n_emitted)`, head scoring's).
- `decode_batched`: longest-first batching with results in input order.
- Answers for records: `plan_answers` renders prompts (`render_prompts`), picks budgets
  (`DEFAULT_MAX_NEW_TOKENS`), stop flags (`NEWLINE_STOP_TASKS`), EOS/newline/blank ids and checks
  lengths (`check_lengths`); `greedy_answers` decodes a plan with any step function and
  `AnswerPlan.texts` post-processes the tokens into answer strings.

Nothing here imports the stages (evaluate, heads, interventions): they sit above this layer.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from tqdm.auto import tqdm

from needlework.data.records import Record
from needlework.data.render import render, resolve_chat
from needlework.data.tasks import DEFAULT_MAX_NEW_TOKENS, answer_budget
from needlework.errors import NeedleworkError
from needlework.models.batching import for_batches
from needlework.models.sites import cache_of, model_device, with_cache

__all__ = [
    "DEFAULT_MAX_NEW_TOKENS",
    "NEWLINE_STOP_TASKS",
    "AnswerPlan",
    "Rules",
    "Step",
    "StopRules",
    "StopWhen",
    "cached_step",
    "check_lengths",
    "decode_batched",
    "decode_loop",
    "eos_token_ids",
    "greedy_answers",
    "greedy_generate",
    "left_pad",
    "newline_and_blank_ids",
    "pad_token_id",
    "plan_answers",
    "postprocess",
    "render_prompts",
    "resolve_chat",
]

NEWLINE_STOP_TASKS = frozenset({"mdqa", "musique", "kv"})

# step(ids (b, q), mask (b, t), position_ids (b, q), k) -> last position's logits (b, vocab)
Step = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor]


class Rules(Protocol):
    """What `decode_loop` needs of a stop rule: `push` one token per row, `gen` the kept tokens."""

    gen: list[list[int]]

    def push(self, toks: Sequence[int]) -> bool: ...


# --- token ids ----------------------------------------------------------------------------------


def eos_token_ids(model, tokenizer) -> frozenset[int]:
    """EOS ids from the tokenizer and the model's generation config (which may list several:
    Llama-3-Instruct ends turns with <|eot_id|>)."""
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
    """(ids whose text contains a newline, ids whose text is blank), decoding every vocab entry
    once (cached: the newline stop rule asks about every generated token)."""
    n = len(tokenizer)
    texts = tokenizer.batch_decode([[i] for i in range(n)], skip_special_tokens=False, clean_up_tokenization_spaces=False)
    newline = frozenset(i for i, t in enumerate(texts) if "\n" in t)
    blank = frozenset(i for i, t in enumerate(texts) if not t.strip())
    return newline, blank


def pad_token_id(tokenizer) -> int:
    """The id written into generation padding (masked out, so any valid id works)."""
    if tokenizer.pad_token_id is not None:
        return tokenizer.pad_token_id
    return tokenizer.eos_token_id or 0


def postprocess(text: str, stop_at_newline: bool) -> str:
    """The answer string: leading/trailing whitespace stripped; for short-answer tasks, cut at the
    first newline after the text starts (the same rule the decoding loop stops on)."""
    text = text.strip()
    if stop_at_newline:
        text = text.split("\n", 1)[0].strip()
    return text


# --- stop rules ---------------------------------------------------------------------------------


class StopRules:
    """Per-row stop rules of evaluation's greedy decoding: EOS (not kept), a newline once some text
    has appeared (for short-answer tasks; the newline is kept), and a per-row token budget."""

    def __init__(
        self,
        max_new: Sequence[int],
        stop_newline: Sequence[bool],
        eos_ids: frozenset[int],
        newline_ids: frozenset[int],
        blank_ids: frozenset[int],
    ):
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
            blank = t in self.blank_ids
            if self.stop_newline[i] and t in self.newline_ids and (self.has_text[i] or not blank):
                self.done[i] = True
            self.has_text[i] = self.has_text[i] or not blank
            if len(self.gen[i]) >= self.max_new[i]:
                self.done[i] = True
        return all(self.done)


class StopWhen:
    """A stop rule given as a predicate: `is_stop(token, n_emitted)` ends a row and the stop token
    is not kept (head scoring: it is no answer token to score); at most `budget` tokens a row."""

    def __init__(self, b: int, budget: int, is_stop: Callable[[int, int], bool]):
        self.budget, self.is_stop = budget, is_stop
        self.gen: list[list[int]] = [[] for _ in range(b)]
        self.done = [budget <= 0] * b

    def push(self, toks: Sequence[int]) -> bool:
        """Take one step's tokens (one per row); returns True when every row is done."""
        for i, t in enumerate(toks):
            if self.done[i]:
                continue
            if self.is_stop(t, len(self.gen[i])):
                self.done[i] = True
                continue
            self.gen[i].append(t)
            self.done[i] = len(self.gen[i]) >= self.budget
        return all(self.done)


# --- the loop -----------------------------------------------------------------------------------


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int, device) -> tuple[torch.Tensor, ...]:
    """Left-pad a batch so every prompt ends at the last column; returns (ids, mask, position_ids),
    each (b, q), with positions counting real tokens only (so padding never shifts RoPE)."""
    B, L = len(prompts), max(len(p) for p in prompts)
    ids = torch.full((B, L), pad_id, dtype=torch.long)
    mask = torch.zeros((B, L), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, L - len(p) :] = torch.tensor(p, dtype=torch.long)
        mask[i, L - len(p) :] = 1
    ids, mask = ids.to(device), mask.to(device)
    return ids, mask, (mask.cumsum(-1) - 1).clamp(min=0)


def decode_loop(step: Step, prompts: Sequence[Sequence[int]], pad_id: int, device, rules: Rules) -> list[list[int]]:
    """The greedy decoding loop every stage shares.

    Left-pads the prompts, then calls `step(ids, mask, position_ids, k)` for the prefill (k = 0) and
    for each new token (k >= 1, ids (b, 1)); `step` runs the model(s), keeps its own KV caches, and
    returns the last position's logits (b, vocab), whose argmax is token k. `rules.push(tokens)`
    takes each step's tokens and says when every row is done (it must enforce a token budget);
    returns `rules.gen`, the kept tokens per row.
    """
    ids, mask, pos = left_pad(prompts, pad_id, device)
    nxt = step(ids, mask, pos, 0).argmax(-1)  # b
    k = 0
    while not rules.push(nxt.tolist()):
        k += 1
        mask = torch.cat([mask, mask.new_ones((len(prompts), 1))], dim=1)
        pos = pos[:, -1:] + 1
        nxt = step(nxt[:, None], mask, pos, k).argmax(-1)
    return rules.gen


def cached_step(model) -> Step:
    """The step function of one model with its own KV cache; asks for last-position logits only
    when the model supports it (a 32K prompt should not produce 32K x vocabulary logits)."""
    cache = [None]
    keep_last = [True]

    def forward(**kw):
        if keep_last[0]:
            try:
                return model(**kw, logits_to_keep=1)
            except TypeError:
                keep_last[0] = False
        return model(**kw)

    def step(ids: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor, _k: int) -> torch.Tensor:
        kw = dict(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True)
        out = forward(**kw, **with_cache(model, cache[0]))
        cache[0] = cache_of(out)
        return out.logits[:, -1]

    return step


def decode_batched(
    prompts: Sequence[Sequence[int]],
    batch_size: int | str,
    decode_batch: Callable[[list[int]], list[list[int]]],
    desc: str = "generate",
    progress: bool = True,
    device="cpu",
) -> list[list[int]]:
    """Run `decode_batch(indices)` over batches of prompt indices, longest prompts first (memory
    trouble shows in the first batch, and similar lengths pad less); results in input order.
    `batch_size` may be `auto` (models.batching: sized to `device`'s memory).

    Raises:
        NeedleworkError: an empty prompt (it would decode from padding alone).
    """
    if any(len(p) == 0 for p in prompts):
        raise NeedleworkError("an empty prompt was given to generation", "render records with at least one token")
    n = len(prompts)
    order = sorted(range(n), key=lambda i: -len(prompts[i]))
    results: list[list[int]] = [[] for _ in range(n)]
    bar = tqdm(total=n, desc=desc, unit="ex", disable=not progress or n == 0, leave=True)  # stays visible when done

    def run(idx: list[int]) -> None:
        for i, g in zip(idx, decode_batch(idx)):
            results[i] = g

    with torch.inference_mode():
        for_batches(order, batch_size, run, device, bar)
    bar.close()
    return results


def _per_row(value, n: int, kind: type) -> list:
    """One value for all rows, or one per row."""
    return [kind(value)] * n if isinstance(value, kind) else [kind(v) for v in value]


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

    A row stops at an EOS id (not included in its output), after a newline token once it has
    produced non-blank text (when `stop_at_newline`; the newline token is included), or after its
    `max_new_tokens`.

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
    n = len(prompts)
    max_new, stops = _per_row(max_new_tokens, n, int), _per_row(stop_at_newline, n, bool)
    device = model_device(model)

    def decode_batch(idx: list[int]) -> list[list[int]]:
        rules = StopRules([max_new[i] for i in idx], [stops[i] for i in idx], eos_ids, newline_ids, blank_ids)
        return decode_loop(cached_step(model), [list(prompts[i]) for i in idx], pad_id, device, rules)

    return decode_batched(prompts, batch_size, decode_batch, "generate", progress)


# --- answers for records ------------------------------------------------------------------------


def render_prompts(records: Sequence[Record], tokenizer, chat: bool) -> list[list[int]]:
    """Prompt token ids of each record (no answer), as training and head scoring render them."""
    return [render(r, tokenizer, chat=chat, with_answer=False).prompt_ids for r in records]


def check_lengths(model, prompts: Sequence[Sequence[int]], max_new: Sequence[int], records: Sequence[Record]) -> None:
    """Raise NeedleworkError when a prompt plus its budget exceeds the model's position limit
    (before any forward pass, instead of silently degraded answers)."""
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


@dataclass
class AnswerPlan:
    """Everything greedy answering needs besides the model: prompts, per-row budgets and stop
    flags, and the token id sets of the stop rules. One plan serves evaluation and patching."""

    prompts: list[list[int]]
    max_new: list[int]
    stop_newline: list[bool]
    eos_ids: frozenset[int]
    newline_ids: frozenset[int]
    blank_ids: frozenset[int]
    pad_id: int

    def rules(self, idx: Sequence[int]) -> StopRules:
        """Fresh stop rules for the rows `idx` of a batch."""
        return StopRules(
            [self.max_new[i] for i in idx], [self.stop_newline[i] for i in idx], self.eos_ids, self.newline_ids, self.blank_ids
        )

    def texts(self, tokenizer, gen: Sequence[Sequence[int]]) -> list[str]:
        """Answer strings of the generated ids (special tokens dropped, `postprocess` applied)."""
        return [
            postprocess(tokenizer.decode(g, skip_special_tokens=True, clean_up_tokenization_spaces=False), s)
            for g, s in zip(gen, self.stop_newline)
        ]


def plan_answers(model, tokenizer, records: Sequence[Record], chat: bool | None, max_new_tokens: int | None = None) -> AnswerPlan:
    """The plan for greedy answers to `records`: rendered with `render(with_answer=False)`, budgets
    `max_new_tokens` (None = per task, `DEFAULT_MAX_NEW_TOKENS`), newline stops for short-answer
    tasks, EOS ids of `model` and `tokenizer`.

    Raises:
        NeedleworkError: a prompt is too long for the model; chat asked for without a template.
    """
    prompts = render_prompts(records, tokenizer, resolve_chat(chat, tokenizer))
    max_new = [answer_budget(r.task, max_new_tokens) for r in records]
    check_lengths(model, prompts, max_new, records)
    newline_ids, blank_ids = newline_and_blank_ids(tokenizer)
    return AnswerPlan(
        prompts,
        max_new,
        [r.task in NEWLINE_STOP_TASKS for r in records],
        eos_token_ids(model, tokenizer),
        newline_ids,
        blank_ids,
        pad_token_id(tokenizer),
    )


def greedy_answers(
    plan: AnswerPlan, make_step: Callable[[], Step], device, batch_size: int | str, progress: bool = True, desc: str = "generate"
) -> list[list[int]]:
    """Generated ids per row of `plan`, each batch decoded by a fresh `make_step()` (its own KV
    caches): `cached_step(model)` for plain evaluation, a lockstep pair for patching."""

    def decode_batch(idx: list[int]) -> list[list[int]]:
        return decode_loop(make_step(), [plan.prompts[i] for i in idx], plan.pad_id, device, plan.rules(idx))

    return decode_batched(plan.prompts, batch_size, decode_batch, desc, progress, device)
