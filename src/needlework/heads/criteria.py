"""The two head criteria beyond SPEC §2's argmax/mass scores (issue 14), computed from what one
instrumented forward records at a few query rows (`models.instrument.RowProbe`, `row_outputs`).

- `query` (QRHead's detection score, Zhang et al. 2025, without its null-query calibration): the
  attention the question's tokens put on the gold documents, as a share of the attention they put
  on all documents (`query_norm="documents"`) or as a mean mass per question token (`"none"`).
- `output` (direct logit attribution): the logit of the next answer token that a head's output
  writes through the output projection, the attention-output norm of sandwich layers, the final
  norm and the unembedding, with every RMSNorm's scale frozen at the model's own residual (a
  linearisation; see `logit_attribution`).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from needlework.errors import NeedleworkError
from needlework.models.sites import attention_modules, attn_output_norms, final_norm, out_proj, unembedding

__all__ = ["check_output_path", "logit_attribution", "query_tally", "rms_gamma", "rms_scale", "unembedding_mean"]


def query_tally(gold: torch.Tensor, docs: torch.Tensor, n_rows: int, norm: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-head hits and score of the query score for one example.

    gold, docs: (L, h, r) log of the attention mass of each question row on the gold documents'
    tokens and on all documents' tokens (rows past `n_rows` are padding). hits = the gold mass
    summed over the question rows; score = hits / (the document mass summed over them) with norm
    `documents` (0 where no document is visible, e.g. a sliding window that ends before them), or
    hits / n_rows with `none`. Sums and the ratio are taken in log space (float64), so that masses
    below float32's range still give their ratio. Returns (hits, score), each (L, h)."""
    g = torch.logsumexp(gold[..., :n_rows].double(), -1)  # log of the summed gold mass
    hits = torch.exp(g)
    if norm == "none":
        return hits.numpy(), (hits / max(n_rows, 1)).numpy()
    d = torch.logsumexp(docs[..., :n_rows].double(), -1)
    share = torch.where(torch.isfinite(d), torch.exp(g - d), torch.zeros_like(d))
    return hits.numpy(), share.numpy()


# ---------------------------------------------------------------------------- direct logit attribution


def _eps(norm: nn.Module) -> float:
    for name in ("variance_epsilon", "eps"):
        v = getattr(norm, name, None)
        if isinstance(v, (int, float)):
            return float(v)
    raise NeedleworkError(
        f"{type(norm).__name__} has no epsilon (variance_epsilon/eps): not an RMSNorm needlework knows",
        "the output score linearises RMSNorms (Llama, Mistral, Qwen, Gemma)",
    )


def rms_gamma(norm: nn.Module) -> tuple[torch.Tensor, float]:
    """(gamma, eps) of an RMSNorm y = gamma * x / sqrt(mean(x^2) + eps): `weight` (Llama, Mistral,
    Qwen) or `1 + weight` (Gemma), told apart by running the module on a constant vector; gamma in
    the weight's own precision (at least float32). NeedleworkError when neither form fits."""
    eps, w = _eps(norm), getattr(norm, "weight", None)
    if not isinstance(w, torch.Tensor):
        raise NeedleworkError(f"{type(norm).__name__} has no weight", "the output score linearises RMSNorms (Llama, Mistral, Qwen, Gemma)")
    f = torch.promote_types(w.dtype, torch.float32)
    with torch.no_grad():
        seen = norm(torch.ones(w.shape[-1], dtype=f, device=w.device)).to(f) * math.sqrt(1 + eps)  # = gamma
        forms = (w.to(f), 1 + w.to(f))  # the two forms differ by 1 everywhere: the closer one is it
        gamma = min(forms, key=lambda g: float((seen - g).abs().max()))
        # a fit within 8 roundings of the module's arithmetic (float32 at best: transformers' RMSNorms
        # compute in float32 whatever the weights' dtype; bf16 weights round to their own precision)
        ulp = max(torch.finfo(w.dtype).eps, torch.finfo(torch.float32).eps)
        if bool(((seen - gamma).abs() <= 8 * ulp * (1 + gamma.abs())).all()):
            return gamma, eps
    raise NeedleworkError(
        f"{type(norm).__name__} is neither weight * x / rms(x) nor (1 + weight) * x / rms(x)",
        "the output score linearises RMSNorms (Llama, Mistral, Qwen, Gemma); LayerNorm models are not supported",
    )


def rms_scale(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """gamma / sigma(x) (..., d): the RMSNorm as a linear map with its scale frozen at the inputs x
    (..., d) the model fed it, so that norm(x) = rms_scale * x and a part c of x contributes
    rms_scale * c (the linearisation: sigma is computed from the full residual, not from c)."""
    gamma, eps = rms_gamma(norm)
    xf = x.to(torch.promote_types(x.dtype, gamma.dtype))
    return gamma * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)


def check_output_path(model) -> None:
    """Fail before any forward when the output score cannot follow a head to the logits: no LM head,
    or a final (or attention-output) norm that is not an RMSNorm (`rms_gamma` raises)."""
    unembedding(model)
    for norm in [final_norm(model), *attn_output_norms(model)]:
        if norm is not None:
            rms_gamma(norm)


def unembedding_mean(model) -> torch.Tensor:
    """The mean row of the unembedding (d,), summed in float32 chunks (no vocab x d copy)."""
    w = unembedding(model).weight
    f = torch.promote_types(w.dtype, torch.float32)
    total = torch.zeros(w.shape[1], dtype=f, device=w.device)
    for i in range(0, w.shape[0], 8192):
        total += w[i : i + 8192].to(f).sum(0)
    return total / w.shape[0]


def _per_head(proj: nn.Module, z: torch.Tensor) -> torch.Tensor:
    """Each head's output through the output projection: (b, r, h, d_head) -> (b, r, h, hidden).

    One call of the projection module on a block-diagonal input (head j's slot holds z_j, the
    others 0), minus the projection of 0 (its bias, which belongs to no head). Calling the module
    keeps any adapter on it (LoRA) in the product."""
    b, r, h, dh = z.shape
    blocks = torch.zeros(b, r, h, h, dh, dtype=z.dtype, device=z.device)
    idx = torch.arange(h, device=z.device)
    blocks[:, :, idx, idx] = z  # blocks[b, r, j, j] = z[b, r, j]
    out = proj(blocks.reshape(b, r, h, h * dh))
    return out - proj(torch.zeros(1, h * dh, dtype=z.dtype, device=z.device))


@torch.no_grad()
def logit_attribution(
    model,
    head_out: dict[int, torch.Tensor],
    attn_norm_in: dict[int, torch.Tensor],
    final_in: torch.Tensor,
    targets: torch.Tensor,
    baseline: torch.Tensor | None = None,
) -> torch.Tensor:
    """Direct logit attribution of every head onto `targets`, (L, b, h, r), in logits.

    For head (l, j) at a row with final residual x and target token a:
        DLA = (W_U[a] - baseline) . (gamma_f / sigma_f(x)) * P_l(W_O[:, j] z_j)
    where z_j is the head's output before the output projection W_O (bias excluded), P_l is the
    identity or, in sandwich layers (Gemma2), the attention-output RMSNorm with its scale frozen at
    the whole attention output of that row, and gamma_f / sigma_f(x) the final RMSNorm's scale
    frozen at x. With every scale frozen the map is linear, so the heads' terms plus the other
    components' (embeddings, MLPs, biases) add up to the model's logit (before any final-logit
    softcapping, which is left out: the attribution is in pre-cap logits).

    Args:
        head_out: layer -> (b, r, h, d_head) head outputs at the scored rows (`row_outputs`).
        attn_norm_in: layer -> (b, r, hidden) inputs of sandwich layers' attention-output norm.
        final_in: (b, r, hidden) final-norm inputs at those rows.
        targets: (b, r) token ids (any value where a row is padding).
        baseline: (hidden,) subtracted from the target's unembedding row (`unembedding_mean`: the
            logit minus the mean logit over the vocabulary), or None.
    """
    w_u = unembedding(model).weight
    scale = rms_scale(final_norm(model), final_in)  # b, r, d
    u = w_u[targets.clamp(min=0)].to(scale.dtype)  # b, r, d
    if baseline is not None:
        u = u - baseline.to(scale.dtype)
    w = u * scale
    norms = attn_output_norms(model)
    out = []
    for layer, attn in enumerate(attention_modules(model)):
        z = head_out[layer]
        wl = w * rms_scale(norms[layer], attn_norm_in[layer]) if norms[layer] is not None else w
        c = _per_head(out_proj(attn), z).to(wl.dtype)  # b, r, h, d
        out.append(torch.einsum("brhd,brd->bhr", c, wl))
    return torch.stack(out)
