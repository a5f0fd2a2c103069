"""Tiny random models (built by tests/models/conftest.py's `_build`) and hand-made token-level
examples whose needle spans are full of answer tokens, so that copies actually happen.
(A uniquely named module: `from conftest import` would be ambiguous across test packages.)"""

import importlib.util
from pathlib import Path

import torch

from needlework.heads.score import Example

_spec = importlib.util.spec_from_file_location("_models_conftest", Path(__file__).parents[1] / "models" / "conftest.py")
_mod = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_mod)
build = _mod._build
ARCHS = _mod.ARCHS
VOCAB = _mod.VOCAB


def make_example(seed: int, n_prompt: int, answer=(7, 9, 7, 11), span_at: int = 5, span_len: int = 12) -> Example:
    """Random prompt tokens with a needle span filled with the answer's tokens (so argmaxes into the
    span copy often), followed by the gold answer."""
    g = torch.Generator().manual_seed(seed)
    prompt = torch.randint(3, VOCAB, (n_prompt,), generator=g)
    fill = torch.tensor(answer)[torch.randint(0, len(answer), (span_len,), generator=g)]
    prompt[span_at : span_at + span_len] = fill
    span = list(range(span_at, span_at + span_len))
    return Example(id=f"ex{seed}", prompt_ids=prompt.tolist(), answer_ids=list(answer), span=span, answer_text="")


def scored_result(tmp_path, name="a", seed=0, L=2, H=4, K=2, n=5, order=None):
    """A written HeadScores folder with random per-example scores (deeper layers score higher);
    `order` numbers the example ids, so that ids need not sort in scoring order (e10 < e2)."""
    import numpy as np
    import pandas as pd

    from needlework.artifacts import HeadScores
    from needlework.heads.score import head_table

    rng = np.random.default_rng(seed)
    ids = [f"e{i}" for i in (order if order is not None else range(n))]
    rows = [
        {"example_id": e, "layer": l, "head": h, "hits": 1.0, "n_steps": 3, "span_tokens": 4, "success": True, "answer": "x"}
        | {"score": float(rng.random() * (l + 1) / 4), "kept": True}
        for e in ids
        for l in range(L)
        for h in range(H)
    ]
    per = pd.DataFrame(rows)
    out = tmp_path / name
    HeadScores(heads=head_table(per), per_example=per, meta={"shape": {"n_layers": L, "n_heads": H, "n_kv_heads": K}}).write(out)
    return out


FILLER = [
    "The harbour town woke slowly, its fishing boats knocking against the old stone pier while gulls argued overhead.",
    "In the valley the orchards were heavy with apples, and the farmers spoke of little but the coming frost.",
    "A small museum near the station keeps maps of railways that were planned but never built.",
]


def needle_record(i: int, answer: str, fact: str, question: str):
    """A short MDQA record for the real model: three documents of filler, the fact in the second
    one (gold: it holds the needle), the answer's span located in it. Its attention has no near-tie
    at an argmax (test_smollm2.py checks), so the kernels' rounding cannot flip a hit."""
    from needlework.data.records import Document, Needle, Record

    text = f"{FILLER[i % 3]} {fact} {FILLER[(i + 1) % 3]}"
    start = text.index(answer)
    docs = [
        Document("d0", "Notes", FILLER[(i + 2) % 3] + " " + FILLER[i % 3]),
        Document("d1", "Facts", text),
        Document("d2", "More", FILLER[(i + 1) % 3]),
    ]
    return Record(f"r{i}", "mdqa", "high", "high", docs, question, [answer], [Needle(1, start, start + len(answer))])


def needle_records() -> list:
    """Two records of different lengths (batches of them are padded)."""
    return [
        needle_record(0, "Marlowe", "The lighthouse keeper of Quillby was named Marlowe.", "Who kept the lighthouse of Quillby?"),
        needle_record(1, "Tarragon Bay", "The painter Ilse Varn was born in Tarragon Bay.", "Where was Ilse Varn born?"),
    ]
