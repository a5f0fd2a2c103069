"""The slow, obvious references of the query and output scores (issue 14): eager attention with
output_attentions, per-head outputs rebuilt from the attention probabilities and the values, each
head's slice of the output projection, the unembedding, and Python loops over layers, heads and
rows. The fast path (`heads.score`, `heads.criteria`) must equal them.

Each reference also returns what the tests derive their tolerances from: the document mass it
divided by (query), the same sums in absolute values (output), and `logit_bound`."""

from __future__ import annotations

import torch

from heads_reference import eager_attentions
from needlework.models.sites import cache_of, with_cache  # the cache keyword's name differs across transformers versions
from numerics import UNIT_ROUNDOFF_F64

U32, U64 = 2.0**-24, UNIT_ROUNDOFF_F64  # unit roundoffs
FLT_MIN = torch.finfo(torch.float32).tiny  # below it float32 probabilities lose relative precision


def by_head(df, example_id: str, col: str) -> dict:
    """{(layer, head): value of `col`} of one example of a per-example score table."""
    return {(int(r.layer), int(r.head)): getattr(r, col) for r in df[df.example_id == example_id].itertuples()}


def query_rtol(model, e) -> float:
    """The query score's relative tolerance (test_criteria.py's docstring): the float32 row logits
    of the fast path and of eager's softmax, each log-mass off by 2 * u32 * (3M + k + 2) with M =
    `logit_bound`, a ratio of two masses doubling it."""
    return 4 * U32 * (4 * logit_bound(model, e.prompt_ids) + 3 * len(e.prompt_ids) + 6)


def query_tol(rtol: float, e, want: float, denom: float) -> float:
    """`rtol` relative, plus float32's minimum normal per summed term (rows x keys) where eager's
    probabilities underflow, relative to the mass divided by."""
    return rtol * abs(want) + len(e.query_rows) * len(e.prompt_ids) * FLT_MIN / max(denom, FLT_MIN**2)


def output_tol(model, n_keys: int, size: float) -> float:
    """The output score's tolerance: float64 sums in two orders, the longest chain of roundings
    (keys, head_dim, twice the hidden size, a few scalings) times u64 times the same sum in
    absolute values (`reference_output`'s second result)."""
    head_dim = model.get_decoder().layers[0].self_attn.head_dim
    return (n_keys + head_dim + 2 * model.config.hidden_size + 8) * U64 * size


def reference_query(model, prompt: list[int], rows: list[int], gold: list[int], docs: list[int], norm: str) -> tuple[dict, dict, dict]:
    """({(layer, head): score}, {(layer, head): hits}, {(layer, head): document mass}): the
    attention mass of the question rows on the gold documents' keys, summed over the rows (hits),
    divided by their mass on all documents' keys (`documents`; 0 when that is 0) or by the number
    of rows (`none`)."""
    att = eager_attentions(model, prompt)  # L x (1, h, q, k)
    score, hits, doc_mass = {}, {}, {}
    for layer, a in enumerate(att):
        for h in range(a.shape[1]):
            g = d = 0.0
            for q in rows:
                g += float(a[0, h, q, gold].double().sum())
                d += float(a[0, h, q, docs].double().sum())
            score[(layer, h)] = (g / d if d > 0 else 0.0) if norm == "documents" else g / len(rows)
            hits[(layer, h)], doc_mass[(layer, h)] = g, d
    return score, hits, doc_mass


def logit_bound(model, ids: list[int]) -> float:
    """An upper bound on |pre-softmax attention logit| over every layer, head, row and key of `ids`:
    scaling * max |q| * max |k| (Cauchy-Schwarz; RoPE keeps norms; q and k read after the q/k norms
    where a model has them, Gemma3), or the softcap when smaller."""
    trunk, norms = model.get_decoder(), {}
    handles = []
    for layer, dl in enumerate(trunk.layers):
        for name in ("q_proj", "k_proj"):
            module = getattr(dl.self_attn, name[0] + "_norm", None) or getattr(dl.self_attn, name)
            hook = lambda _m, _a, out, key=(layer, name): norms.__setitem__(key, out[0].detach())  # noqa: E731
            handles.append(module.register_forward_hook(hook))
    try:
        eager_attentions(model, ids)
    finally:
        for h in handles:
            h.remove()
    bound = 0.0
    for layer, dl in enumerate(trunk.layers):
        attn, dh = dl.self_attn, dl.self_attn.head_dim
        q = norms[(layer, "q_proj")].double().reshape(len(ids), -1, dh).norm(dim=-1).max()
        k = norms[(layer, "k_proj")].double().reshape(len(ids), -1, dh).norm(dim=-1).max()
        b = float(attn.scaling * q * k)
        cap = getattr(model.config, "attn_logit_softcapping", None)
        bound = max(bound, min(b, cap) if cap else b)
    return bound


def _is_gemma_norm(norm) -> bool:
    return "Gemma" in type(norm).__name__  # Gemma's RMSNorm scales by (1 + weight)


def _rms(norm, x: torch.Tensor) -> torch.Tensor:
    """The RMSNorm written out: gamma * x / sqrt(mean(x^2) + eps), in float64."""
    eps = getattr(norm, "variance_epsilon", getattr(norm, "eps", None))
    gamma = norm.weight.detach().double() + (1.0 if _is_gemma_norm(norm) else 0.0)
    return gamma / torch.sqrt(x.double().pow(2).mean() + eps)  # the scale vector (d,)


def _captured_forward(model, ids: list[int]):
    """Eager forward with output_attentions, keeping each layer's value projection output and the
    final norm's input (the residual stream after the last layer)."""
    trunk = model.get_decoder()
    keep: dict = {"v": {}}
    handles = [trunk.norm.register_forward_pre_hook(lambda _m, args: keep.__setitem__("final", args[0][0].detach()))]
    for layer, dl in enumerate(trunk.layers):
        handles.append(dl.self_attn.v_proj.register_forward_hook(lambda _m, _a, out, layer=layer: keep["v"].__setitem__(layer, out[0])))
    try:
        att = eager_attentions(model, ids)
    finally:
        for h in handles:
            h.remove()
    return att, keep


def _captured_decode(model, ids: list[int], p0: int):
    """What `_captured_forward` gives, from the forwards greedy generation runs instead of one: an
    eager prefill of ids[:p0], then one token a step with the model's own KV cache. Each step's
    attention row is written at its keys' absolute positions (a sliding-window layer's cache holds
    only the window's keys; the keys it dropped get 0, as the full forward's mask gives them), each
    layer's values and the final norm's inputs are the calls' outputs in order."""
    trunk, n = model.get_decoder(), len(ids)
    vs: dict[int, list] = {layer: [] for layer in range(len(trunk.layers))}
    finals: list = []
    handles = [trunk.norm.register_forward_pre_hook(lambda _m, args: finals.append(args[0][0].detach()))]
    for layer, dl in enumerate(trunk.layers):
        handles.append(dl.self_attn.v_proj.register_forward_hook(lambda _m, _a, out, layer=layer: vs[layer].append(out[0].detach())))
    old = model.config._attn_implementation
    model.set_attn_implementation("eager")
    att = [torch.zeros(1, model.config.num_attention_heads, n, n, dtype=torch.float64) for _ in trunk.layers]
    try:
        with torch.no_grad():
            out = model(torch.tensor([ids[:p0]]), use_cache=True, output_attentions=True)
            for layer, a in enumerate(out.attentions):
                att[layer][:, :, :p0, :p0] = a.double()
            for j in range(p0, n):
                out = model(torch.tensor([[ids[j]]]), use_cache=True, output_attentions=True, **with_cache(model, cache_of(out)))
                for layer, a in enumerate(out.attentions):  # (1, h, 1, keys of the cache): keys ..j
                    k = a.shape[-1]
                    assert k <= j + 1, (layer, j, k)
                    att[layer][:, :, j, j + 1 - k : j + 1] = a[:, :, 0].double()
    finally:
        model.set_attn_implementation(old)
        for h in handles:
            h.remove()
    return att, {"v": {layer: torch.cat(v) for layer, v in vs.items()}, "final": torch.cat(finals)}


def reference_output(
    model, ids: list[int], rows: list[int], targets: list[int], baseline: str, decode_from: int | None = None
) -> tuple[dict, dict]:
    """({(layer, head): summed DLA over the rows}, {(layer, head): the same sum computed with
    absolute values throughout}) for the query rows `rows` of `ids` and their target tokens. The
    second is the scale of every rounding error on the way (tolerances derive from it).

    The attribution is of the forward(s) the fast path attributes: one forward of `ids` (teacher
    mode), or with `decode_from` = the prompt length, greedy generation's prefill and cached steps
    (`_captured_decode`; one example at a time, as the generate-mode tests score). The two differ by
    float32 roundings (test_criteria.py's docstring), not only by float64 ones.

    Per head and row: z = attention row @ values of the head's kv group; c = W_O[:, head slice] @ z;
    in sandwich layers (Gemma2) c is scaled by the attention-output norm at the whole attention
    output of the row (the sum of every head's c: o_proj has no bias in these models); then
    DLA = sum_i (W_U[target] - baseline)_i * gamma_f,i / sigma_f(x) * c_i, x the final residual."""
    att, keep = _captured_forward(model, ids) if decode_from is None else _captured_decode(model, ids, decode_from)
    trunk, w_u = model.get_decoder(), model.get_output_embeddings().weight.detach().double()
    mean = w_u.mean(0) if baseline == "mean" else torch.zeros(w_u.shape[1], dtype=torch.float64)
    n_heads = model.config.num_attention_heads
    out, size = {}, {}
    for layer, dl in enumerate(trunk.layers):
        attn = dl.self_attn
        w_o, dh = attn.o_proj.weight.detach().double(), attn.head_dim
        v = keep["v"][layer].detach().double().view(len(ids), -1, dh)  # k, kvh, dh
        group = n_heads // v.shape[1]
        sandwich = hasattr(dl, "post_feedforward_layernorm")
        for t, target in zip(rows, targets):
            cs, cs_abs = [], []
            for h in range(n_heads):
                p, vh = att[layer][0, h, t, : t + 1].double(), v[: t + 1, h // group]  # keys 0..t
                w_h = w_o[:, h * dh : (h + 1) * dh]
                cs.append(w_h @ (p @ vh))
                cs_abs.append(w_h.abs() @ (p.abs() @ vh.abs()))
            post = _rms(dl.post_attention_layernorm, sum(cs)) if sandwich else torch.ones(1, dtype=torch.float64)
            w = (w_u[target] - mean) * _rms(trunk.norm, keep["final"][t])
            for h in range(n_heads):
                out[(layer, h)] = out.get((layer, h), 0.0) + float((w * post * cs[h]).sum())
                size[(layer, h)] = size.get((layer, h), 0.0) + float((w.abs() * post.abs() * cs_abs[h]).sum())
    return out, size
