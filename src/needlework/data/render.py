"""Render a record for one tokenizer: prompt text, token ids, prompt/answer boundary and needle
token spans. Training, head scoring and evaluation all go through `render`, so they see the same
tokens.

Needle token spans come from the tokenizer's character offsets (`return_offsets_mapping`): a token
belongs to a needle when its character range overlaps the needle's. We never search for the
answer's token subsequence, which breaks when the same string tokenises differently in context.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

from needlework.data.records import Record
from needlework.errors import NeedleworkError, OptionError

INSTRUCTIONS = {
    "mdqa": (
        "Write a high-quality answer for the given question using only the provided search "
        "results (some of which might be irrelevant). Answer with a short phrase only."
    ),
    "musique": (
        "Answer the question using only the provided documents (some of which might be "
        "irrelevant). The question needs facts from several documents. Answer with a short phrase only."
    ),
    "summhay": (
        "Below are documents. Some of them contain the insight given after them. List the "
        "numbers of every document that contains the insight, as [i] separated by spaces, and nothing else."
    ),
    "kv": ("Extract the value corresponding to the specified key from the documents below. Answer with the value only."),
}
QUESTION_LABEL = {"summhay": "Insight", "kv": "Key"}


@dataclass
class Rendered:
    """A record rendered for one tokenizer.

    `input_ids` = prompt ids + answer ids; `prompt_len` is the boundary (the first answer token is
    `input_ids[prompt_len]`). `needle_spans[i]` = (start, end) token positions (end exclusive) of
    needle i in the prompt, or None when no token overlaps it.
    """

    text: str  # the prompt as a string (chat template applied when asked)
    input_ids: list[int]
    prompt_len: int
    needle_spans: list[tuple[int, int] | None]
    needle_chars: list[tuple[int, int]] = field(default_factory=list)  # needle char spans in `text`
    needle_roles: list[str] = field(default_factory=list)  # role of needle i (missing entries: "answer")
    # token spans (start, end exclusive) of each document's block "Document [i] (Title: ...) text"
    # and of the question text (the query and output scores' query rows and keys); None: no token
    doc_spans: list[tuple[int, int] | None] = field(default_factory=list)
    question_span: tuple[int, int] | None = None

    def role(self, i: int) -> str:
        return self.needle_roles[i] if i < len(self.needle_roles) else "answer"

    @property
    def prompt_ids(self) -> list[int]:
        return self.input_ids[: self.prompt_len]

    @property
    def answer_ids(self) -> list[int]:
        return self.input_ids[self.prompt_len :]

    @property
    def n_tokens(self) -> int:
        return len(self.input_ids)

    def needle_positions(self, roles: tuple[str, ...] | None = None) -> list[int]:
        """Prompt token positions covered by the needles whose role is in `roles` (None: every
        needle), sorted. With roles=("answer",) this is the set S of SPEC §2."""
        pos: set[int] = set()
        for i, s in enumerate(self.needle_spans):
            if s is not None and (roles is None or self.role(i) in roles):
                pos.update(range(*s))
        return sorted(pos)

    def doc_positions(self, docs=None) -> list[int]:
        """Prompt token positions of the documents `docs` (indices; None: every document), sorted:
        the key sets of the query score (gold documents vs all documents)."""
        pos: set[int] = set()
        for i, s in enumerate(self.doc_spans):
            if s is not None and (docs is None or i in docs):
                pos.update(range(*s))
        return sorted(pos)

    def question_positions(self) -> list[int]:
        """Prompt token positions of the question text (the query score's query rows)."""
        return list(range(*self.question_span)) if self.question_span is not None else []


def answer_text(record: Record) -> str:
    """The completion for a record: the canonical answer (SummHay: cited document numbers)."""
    if record.task == "summhay":
        index = {d.id: i for i, d in enumerate(record.documents)}
        return " ".join(f"[{index[c] + 1}]" for c in sorted(record.citations, key=lambda c: index[c]))
    return record.answers[0]


def build_prompt(record: Record) -> tuple[str, list[tuple[int, int]]]:
    """The task prompt as text, and each needle's character span inside it."""
    text, needle_chars, _docs, _question = prompt_layout(record)
    return text, needle_chars


def prompt_layout(record: Record) -> tuple[str, list[tuple[int, int]], list[tuple[int, int]], tuple[int, int]]:
    """`build_prompt`'s text and needle character spans, plus the character span of each document's
    block (its `Document [i] (Title: ...) ` header and text, without the newline after it) and of
    the question text."""
    parts: list[str] = [INSTRUCTIONS.get(record.task, INSTRUCTIONS["mdqa"]), "\n\n"]
    pos = sum(len(p) for p in parts)
    doc_start: list[int] = []
    doc_chars: list[tuple[int, int]] = []
    for i, d in enumerate(record.documents):
        head = f"Document [{i + 1}] (Title: {d.title}) " if d.title else f"Document [{i + 1}] "
        doc_chars.append((pos, pos + len(head) + len(d.text)))
        parts.append(head)
        pos += len(head)
        doc_start.append(pos)
        parts.append(d.text)
        parts.append("\n")
        pos += len(d.text) + 1
    label = QUESTION_LABEL.get(record.task, "Question")
    tail = f"\n{label}: {record.question}\n" + ("Documents:" if record.task == "summhay" else "Answer:")
    q0 = pos + len(f"\n{label}: ")
    parts.append(tail)
    needle_chars = [(doc_start[n.doc] + n.start, doc_start[n.doc] + n.end) for n in record.needles]
    return "".join(parts), needle_chars, doc_chars, (q0, q0 + len(record.question))


def to_messages(record: Record) -> list[dict[str, str]]:
    """Chat-format rendering ("messages") for fine-tuning tools."""
    prompt, _ = build_prompt(record)
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer_text(record)}]


def _token_spans(offsets, char_spans) -> list[tuple[int, int] | None]:
    spans: list[tuple[int, int] | None] = []
    for cs, ce in char_spans:
        hit = [t for t, (a, b) in enumerate(offsets) if b > a and a < ce and b > cs]
        spans.append((hit[0], hit[-1] + 1) if hit else None)
    return spans


def _block_spans(offsets, char_spans) -> list[tuple[int, int] | None]:
    """`_token_spans` for many spans (every document of a long prompt) in O(n log n): tokens are
    in text order, so the overlapping ones form a run found by bisection. Falls back to the linear
    scan when a tokenizer's offsets are not monotone."""
    toks = [(t, a, b) for t, (a, b) in enumerate(offsets) if b > a]
    starts, ends = [a for _t, a, _b in toks], [b for _t, _a, b in toks]
    if any(x > y for x, y in zip(starts, starts[1:])) or any(x > y for x, y in zip(ends, ends[1:])):
        return _token_spans(offsets, char_spans)
    spans: list[tuple[int, int] | None] = []
    for cs, ce in char_spans:
        first, last = bisect.bisect_right(ends, cs), bisect.bisect_left(starts, ce) - 1  # end > cs, start < ce
        spans.append((toks[first][0], toks[last][0] + 1) if first <= last else None)
    return spans


def resolve_chat(chat: bool | None, tokenizer) -> bool:
    """The rendering every stage uses: `None` (the default of train, evaluate, heads score, knockout
    and patch) means the chat template when the tokenizer has one; True/False force it."""
    return bool(getattr(tokenizer, "chat_template", None)) if chat is None else bool(chat)


def length_ceiling(length: int, tolerance: int, max_tokens: int = 0) -> int:
    """The most tokens a record fitted to `length` may have: `length + tolerance`, or `max_tokens`
    when that is lower (a study's ceiling, so that records fit the model). The generator and the
    real-data loader fit to it alike."""
    return min(max_tokens or length + tolerance, length + tolerance)


def check_max_tokens(max_tokens: int, length: int | None) -> None:
    """A ceiling below the length it caps cannot be met: refused, naming both options."""
    if max_tokens and length and max_tokens < length:
        raise OptionError(
            "max_tokens",
            f"--max-tokens {max_tokens} is below --length {length}",
            "give 0 (no ceiling beyond the tolerance) or a ceiling of at least --length (e.g. the model's context)",
        )


def render(record: Record, tokenizer, chat: bool = False, with_answer: bool = True) -> Rendered:
    """Render `record` for `tokenizer`.

    Args:
        chat: wrap the prompt in the tokenizer's chat template (user turn + generation prompt).
        with_answer: append the answer tokens (and EOS) after the prompt.
    Raises:
        NeedleworkError: the tokenizer has no offset mapping, or a chat template was asked for and
            the tokenizer has none.
    """
    prompt, needle_chars, doc_chars, question_chars = prompt_layout(record)
    if chat:
        if not getattr(tokenizer, "chat_template", None):
            raise NeedleworkError(
                "chat rendering asked for, but the tokenizer has no chat template",
                "render without --chat, or use an instruction-tuned model's tokenizer",
            )
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
        shift = text.find(prompt)  # our own content string, located once in the templated text
        if shift < 0:
            raise NeedleworkError("the chat template altered the prompt text", "render without --chat")
        needle_chars = [(a + shift, b + shift) for a, b in needle_chars]
        doc_chars = [(a + shift, b + shift) for a, b in doc_chars]
        question_chars = (question_chars[0] + shift, question_chars[1] + shift)
        add_special = False  # the template writes its own special tokens
    else:
        text = prompt
        add_special = True
    try:
        enc = tokenizer(text, add_special_tokens=add_special, return_offsets_mapping=True)
    except NotImplementedError:
        raise NeedleworkError(
            "the tokenizer cannot return character offsets (a slow Python tokenizer)",
            "use a fast tokenizer (tokenizers library); most hub models ship one",
        ) from None
    ids = list(enc["input_ids"])
    spans = _token_spans(enc["offset_mapping"], needle_chars)
    *doc_spans, question_span = _block_spans(enc["offset_mapping"], [*doc_chars, question_chars])
    prompt_len = len(ids)
    if with_answer:
        ans = answer_text(record)
        ans_ids = tokenizer(ans if chat else " " + ans, add_special_tokens=False)["input_ids"]
        ids += list(ans_ids)
        if tokenizer.eos_token_id is not None:
            ids.append(tokenizer.eos_token_id)
    return Rendered(
        text=text,
        input_ids=ids,
        prompt_len=prompt_len,
        needle_spans=spans,
        needle_chars=needle_chars,
        needle_roles=[n.role for n in record.needles],
        doc_spans=doc_spans,
        question_span=question_span,
    )
