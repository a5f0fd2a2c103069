"""Records -> token ids with answer-only targets, and micro-batches (right-padded or packed).

Each example is rendered with `needlework.data.render.render`, so training sees exactly the tokens
evaluation and head scoring see. The loss targets are the answer ids (incl. EOS): the hidden state
at position t predicts token t+1, so the target positions are prompt_len-1 .. n-2.

Batches carry no attention mask. Right padding needs none under a causal mask (real tokens never
see later pad tokens), and SDPA then runs its mask-free causal kernel. Packed rows carry
position_ids that restart at 0 for every example; transformers (>= 4.53, here 5.17) turns such
position_ids into a block-diagonal mask for eager/SDPA/flex (`masking_utils.find_packed_sequence_indices`)
and into cu_seqlens for FlashAttention, so packed examples never attend to each other.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass

import torch

from needlework.data.records import Record
from needlework.data.render import answer_text, render
from needlework.errors import NeedleworkError


@dataclass
class Example:
    """One rendered training example: `input_ids` = prompt + answer (+ EOS)."""

    id: str
    input_ids: list[int]
    prompt_len: int

    @property
    def n_answer(self) -> int:
        return len(self.input_ids) - self.prompt_len


@dataclass
class Batch:
    """A micro-batch. `rows`/`pos` index the hidden states that predict `targets` (flat, N answer tokens)."""

    input_ids: torch.Tensor  # b, t
    position_ids: torch.Tensor | None  # b, t (packed rows only)
    rows: torch.Tensor  # n
    pos: torch.Tensor  # n
    targets: torch.Tensor  # n

    @property
    def n_answer(self) -> int:
        return int(self.targets.numel())

    @property
    def n_tokens(self) -> int:
        return int(self.input_ids.numel())

    def labels(self) -> torch.Tensor:
        """Full-sequence labels (-100 outside answers), the common recipe's format; for tests and baselines."""
        labels = torch.full_like(self.input_ids, -100)
        labels[self.rows, self.pos + 1] = self.targets
        return labels

    def to(self, device) -> Batch:
        move = lambda v: v.to(device) if v is not None else None  # noqa: E731
        return Batch(move(self.input_ids), move(self.position_ids), move(self.rows), move(self.pos), move(self.targets))


def _drop_haystack(record: Record, n_drop: int) -> Record | None:
    """The record without its last `n_drop` non-gold documents (needle/gold/cited docs are kept)."""
    keep_ids = {record.documents[n.doc].id for n in record.needles} | set(record.citations)
    keep_ids |= {record.documents[g].id for g in record.gold_docs if 0 <= g < len(record.documents)}
    droppable = [i for i, d in enumerate(record.documents) if d.id not in keep_ids]
    if n_drop > len(droppable):
        return None
    dropped = set(droppable[len(droppable) - n_drop :])  # drop from the end: keeps gold depth stable
    new_index = {}
    docs = []
    for i, d in enumerate(record.documents):
        if i not in dropped:
            new_index[i] = len(docs)
            docs.append(d)
    needles = [dataclasses.replace(n, doc=new_index[n.doc]) for n in record.needles]
    gold = [new_index[g] for g in record.gold_docs if g in new_index]
    meta = dict(record.meta)
    if meta.get("unlocated_docs"):  # document indices: follow the documents
        meta["unlocated_docs"] = [new_index[g] for g in meta["unlocated_docs"] if g in new_index]
    return dataclasses.replace(record, documents=docs, needles=needles, gold_docs=gold, meta=meta)


def encode(record: Record, tokenizer, max_length: int, chat: bool = False, truncate_haystack: bool = False) -> Example:
    """Render one record for training.

    Raises:
        NeedleworkError: the record has no answer; it is longer than `max_length` (and
            `truncate_haystack` is off, or dropping every non-gold document is not enough).
    """
    if not record.answers or not answer_text(record).strip():
        raise NeedleworkError(
            f"record {record.id} has no answer to train on",
            "every training record needs a non-empty first entry in 'answers' (SummHay: citations)",
        )
    r = render(record, tokenizer, chat=chat, with_answer=True)
    if max_length and r.n_tokens > max_length:
        if not truncate_haystack:
            raise NeedleworkError(
                f"record {record.id} has {r.n_tokens} tokens, more than max_length {max_length}",
                "raise --max-length (and --rope-theta to extend context), or pass --truncate-haystack to drop non-gold documents",
            )
        lo, hi = 1, len(record.documents)  # binary search for the fewest documents to drop
        best = None
        while lo <= hi:
            mid = (lo + hi) // 2
            cand = _drop_haystack(record, mid)
            rr = render(cand, tokenizer, chat=chat, with_answer=True) if cand is not None else None
            if rr is not None and rr.n_tokens <= max_length:
                best, hi = rr, mid - 1
            else:
                lo = mid + 1
        if best is None:
            raise NeedleworkError(
                f"record {record.id} is longer than max_length {max_length} even without its non-gold documents",
                "raise --max-length; the gold documents and the answer are never truncated",
            )
        r = best
    if r.n_tokens == r.prompt_len:
        raise NeedleworkError(f"record {record.id}: the answer renders to no tokens", "check its answers")
    return Example(id=record.id, input_ids=r.input_ids, prompt_len=r.prompt_len)


def encode_all(
    records: list[Record], tokenizer, max_length: int, chat: bool = False, truncate_haystack: bool = False, progress: bool = False
) -> list[Example]:
    """Encode every record (see `encode`); raises NeedleworkError on an empty list."""
    if not records:
        raise NeedleworkError("no training records", "check the --data file; it holds no examples")
    from tqdm.auto import tqdm

    return [
        encode(r, tokenizer, max_length, chat, truncate_haystack) for r in tqdm(records, desc="tokenize", disable=not progress, leave=False)
    ]


def collate(rows_of_examples: list[list[Example]], pad_id: int, packed: bool = False) -> Batch:
    """Build one micro-batch: one row per inner list, right-padded to the longest row.

    Unpacked rows (one example each) get no position_ids: the default 0..t-1 is right under a
    causal mask. Packed rows get position_ids that restart at 0 for each example and for the pad
    tail, which transformers reads as sequence boundaries.
    """
    t = max(sum(len(e.input_ids) for e in row) for row in rows_of_examples)
    ids = torch.full((len(rows_of_examples), t), pad_id, dtype=torch.long)
    position_ids = torch.zeros((len(rows_of_examples), t), dtype=torch.long)
    rows: list[int] = []
    pos: list[int] = []
    targets: list[int] = []
    for i, row in enumerate(rows_of_examples):
        off = 0
        for e in row:
            n = len(e.input_ids)
            ids[i, off : off + n] = torch.tensor(e.input_ids)
            position_ids[i, off : off + n] = torch.arange(n)
            rows += [i] * e.n_answer
            pos += range(off + e.prompt_len - 1, off + n - 1)  # hidden at t predicts token t+1
            targets += e.input_ids[e.prompt_len :]
            off += n
        position_ids[i, off:] = torch.arange(t - off)  # the pad tail is a segment of its own
    return Batch(ids, position_ids if packed else None, torch.tensor(rows), torch.tensor(pos), torch.tensor(targets))


def pack(examples: list[Example], pack_length: int) -> list[list[Example]]:
    """Greedy first-fit packing in the given order; each group's total length <= pack_length."""
    groups: list[list[Example]] = []
    sizes: list[int] = []
    for e in examples:
        n = len(e.input_ids)
        for g, s in enumerate(sizes):
            if s + n <= pack_length:
                groups[g].append(e)
                sizes[g] += n
                break
        else:
            groups.append([e])
            sizes.append(n)
    return groups


def epoch_plan(
    examples: list[Example], epoch: int, seed: int, batch_size: int, packing: bool = False, pack_length: int = 0
) -> list[list[list[Example]]]:
    """The micro-batches of one epoch (each a list of rows, each row a list of examples), in a fixed
    order given (seed, epoch): every process and every resumed run computes the same plan, so the
    data position is just the step number. Collate each entry with `collate` when it is used."""
    order = list(range(len(examples)))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    shuffled = [examples[i] for i in order]
    rows = pack(shuffled, pack_length) if packing else [[e] for e in shuffled]
    return [rows[i : i + batch_size] for i in range(0, len(rows), batch_size)]
