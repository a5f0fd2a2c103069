"""The slow, obvious reference of SPEC §2: eager attention with output_attentions, one example at
a time, Python loops over layers, heads and answer steps. The fast path must equal it."""

import torch

from numerics import assert_clear_argmax


def eager_attentions(model, ids: list[int]):
    old = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            return model(torch.tensor([ids]), output_attentions=True).attentions  # L x (1, h, q, k)
    finally:
        model.set_attn_implementation(old)


def reference_hits(model, prompt: list[int], emitted: list[int], span: list[int], score: str = "retrieval", same=None):
    """{(layer, head): hits} (retrieval: copies; insight: steps in S; mass: summed mass on S) for the
    answer tokens `emitted` that follow `prompt`. `same(a, b)`: the token identity test (default ==)."""
    same = same or (lambda a, b: a == b)
    ids = prompt + emitted
    att = eager_attentions(model, ids)
    S = set(span)
    out = {}
    for layer, a in enumerate(att):
        for h in range(a.shape[1]):
            total = 0.0
            for k, tok in enumerate(emitted):
                row = a[0, h, len(prompt) - 1 + k]  # the query that emits answer token k
                j = assert_clear_argmax(row)
                if score == "retrieval":
                    total += int(j in S and same(ids[j], tok))
                elif score == "insight":
                    total += int(j in S)
                else:
                    total += float(row[sorted(S)].sum())
            out[(layer, h)] = total
    return out
