"""Model parts named once: the site table, head ids, head sets and their one selection rule.

A head is `HeadId(layer, head)` with `head` a query-head index; a head set is a `HeadSet` (a
frozenset of HeadId). `SITES` names the two places needlework reads or changes a model:

- `head_output`: the input of the attention output projection (`o_proj` in Llama/Mistral/Qwen/
  Gemma), shaped `(b, q, n_heads * head_dim)` and split into `(b, q, n_heads, head_dim)`; reached
  by a forward pre-hook on the projection. Zero/mean knockout, patching and collection act there.
- `attention`: inside the attention function needlework registers with transformers
  (`models.instrument`): the pre-softmax scores of selected rows (probes) and the per-head output
  `(b, q, n_heads, head_dim)` with the call's query/key/value at hand (`uniform` knockout).

The direct path from a head to the logits (the output score) is named here too: `final_norm` (the
norm before the LM head), `attn_output_norms` (the norm some architectures put on the attention
output before the residual add: Gemma2/3, OLMo2) and `unembedding` (the LM head).

`select_heads` is the only ranking rule (top-k, threshold, explicit list): knockout, patching and
`heads compare` all pick "the top 10" through it (`rank_mask` is its vectorised core).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
from torch import nn

from needlework.errors import NeedleworkError

# Names of the output projection across architectures (first match wins).
OUT_PROJ_NAMES = ("o_proj", "out_proj", "dense", "c_proj")


@dataclass(frozen=True, order=True)
class HeadId:
    layer: int
    head: int

    def __str__(self) -> str:  # Wu et al.'s "L-H" key
        return f"{self.layer}-{self.head}"

    @classmethod
    def parse(cls, s: str) -> HeadId:
        try:
            layer, head = s.strip().split("-")
            return cls(int(layer), int(head))
        except ValueError:
            raise NeedleworkError(f"bad head id {s!r}", "write heads as LAYER-HEAD, e.g. 17-3") from None


class HeadSet(frozenset):
    """A set of query heads (frozenset of HeadId) with the views the stages need: per layer, as a
    layer-major bool mask, and as the key/value heads it reads (GQA)."""

    def by_layer(self) -> dict[int, list[int]]:
        """{layer: sorted query-head indices}: the unit hooks are installed per."""
        return heads_by_layer(self)

    def mask(self, n_layers: int, n_heads: int) -> np.ndarray:
        """(n_layers * n_heads,) bool, layer-major: the layout of `heads.compare.Scores.means`."""
        m = np.zeros(n_layers * n_heads, dtype=bool)
        m[[h.layer * n_heads + h.head for h in self]] = True
        return m

    @classmethod
    def from_mask(cls, mask: np.ndarray, n_heads: int) -> HeadSet:
        """The heads a layer-major mask (flat or (n_layers, n_heads)) marks."""
        return cls(HeadId(int(i) // n_heads, int(i) % n_heads) for i in np.flatnonzero(np.asarray(mask)))

    def kv_heads(self, shape: ModelShape) -> frozenset[tuple[int, int]]:
        """(layer, kv head) pairs the set reads: query head j uses kv head j // group."""
        return frozenset((h.layer, shape.kv_head(h.head)) for h in self)


def rank_mask(v: np.ndarray, top: int | None, threshold: float | None) -> np.ndarray:
    """Bool mask over the last axis of `v` (..., F), each row on its own: the `top` highest (ties:
    lower index first, i.e. lower layer, then lower head) or, with `top` None, those > `threshold`.
    NaN never passes a threshold and ranks last."""
    if top is None:
        return v > threshold
    order = np.argsort(-v, axis=-1, kind="stable")[..., :top]
    mask = np.zeros(v.shape, dtype=bool)
    np.put_along_axis(mask, order, True, axis=-1)
    return mask


def parse_head_list(text: str) -> HeadSet:
    """`"17-3,18-0"` -> {HeadId(17, 3), HeadId(18, 0)}; raises NeedleworkError on bad items."""
    items = [s for s in text.replace(" ", "").split(",") if s]
    if not items:
        raise NeedleworkError("empty head list", "write heads as LAYER-HEAD,..., e.g. 17-3,18-0")
    return HeadSet(HeadId.parse(s) for s in items)


def select_heads(
    grid: np.ndarray | None = None, top: int | None = None, threshold: float | None = None, heads: str | Iterable[HeadId] | None = None
) -> HeadSet:
    """The one head-set selection (SPEC §2): an explicit list `heads` when given, else every head
    whose score exceeds `threshold` (Wu et al. use 0.1), else the `top` highest scores.

    Args:
        grid: (n_layers, n_heads) mean scores, NaN where a head has no score (never selected by a
            threshold, ranked last by `top`); `heads.compare.Scores.grid()` gives it.
        top, threshold, heads: the rule; precedence list > threshold > top (the configs' "overrides").
    Raises:
        NeedleworkError: no rule, a negative `top`, or scores missing for a ranked rule.
    """
    if heads is not None:
        return parse_head_list(heads) if isinstance(heads, str) else HeadSet(heads)
    if top is None and threshold is None:
        raise NeedleworkError("no head-set rule given", "pass --top K, --threshold T or an explicit list L-H,...")
    if top is not None and top < 0 and threshold is None:
        raise NeedleworkError(f"--top must be >= 0, got {top}", "e.g. --top 10")
    if grid is None:
        raise NeedleworkError("no head scores given", "pass --heads SCORES, or an explicit --list L-H,...")
    grid = np.asarray(grid, dtype=float)
    mask = rank_mask(grid.reshape(-1), None if threshold is not None else top, threshold)
    return HeadSet.from_mask(mask, grid.shape[1])


@dataclass(frozen=True)
class ModelShape:
    n_layers: int
    n_heads: int  # query heads per layer
    n_kv_heads: int
    head_dim: int

    @property
    def group(self) -> int:
        """Query heads per key/value head (1 for MHA, n_heads for MQA)."""
        return self.n_heads // self.n_kv_heads

    def kv_head(self, head: int) -> int:
        return head // self.group

    def all_heads(self) -> list[HeadId]:
        """Every query head, layer-major."""
        return [HeadId(l, h) for l in range(self.n_layers) for h in range(self.n_heads)]

    def check(self, heads: Iterable[HeadId]) -> None:
        """Raise NeedleworkError for heads outside the model."""
        bad = [h for h in heads if not (0 <= h.layer < self.n_layers and 0 <= h.head < self.n_heads)]
        if bad:
            raise NeedleworkError(
                f"heads {', '.join(map(str, sorted(bad)[:5]))} do not exist in this model ({self.n_layers} layers x {self.n_heads} heads)",
                "check the head list or the score file: it may come from a model of another shape",
            )

    def to_dict(self) -> dict:
        return {"n_layers": self.n_layers, "n_heads": self.n_heads, "n_kv_heads": self.n_kv_heads, "head_dim": self.head_dim}


def _text_config(config):
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def model_shape(model) -> ModelShape:
    c = _text_config(model.config)
    n_heads = c.num_attention_heads
    n_kv = getattr(c, "num_key_value_heads", None) or n_heads
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // n_heads
    return ModelShape(c.num_hidden_layers, n_heads, n_kv, head_dim)


def attention_modules(model) -> list[nn.Module]:
    """The self-attention module of each layer, in layer order.

    Found as the modules that carry `layer_idx` and an output projection, which is how every
    transformers decoder names them; raises NeedleworkError when the model has none.
    """
    found: dict[int, nn.Module] = {}
    for _, m in model.named_modules():
        idx = getattr(m, "layer_idx", None)
        if isinstance(idx, int) and out_proj(m, required=False) is not None and hasattr(m, "head_dim"):
            found.setdefault(idx, m)
    shape = model_shape(model)
    if sorted(found) != list(range(shape.n_layers)):
        raise NeedleworkError(
            f"cannot find one attention module per layer in {type(model).__name__} "
            f"(found layers {sorted(found)[:8]}..., expected {shape.n_layers})",
            "this architecture's attention cannot be instrumented; use a Llama/Mistral/Qwen/Gemma-style model",
        )
    return [found[i] for i in range(shape.n_layers)]


def out_proj(attn: nn.Module, required: bool = True) -> nn.Module | None:
    """The output projection of an attention module (its input is the head-output site)."""
    for name in OUT_PROJ_NAMES:
        m = getattr(attn, name, None)
        if isinstance(m, nn.Module):
            return m
    if required:
        raise NeedleworkError(f"{type(attn).__name__} has no output projection ({'/'.join(OUT_PROJ_NAMES)})")
    return None


@dataclass(frozen=True)
class Site:
    """A named place in every decoder layer, resolved from the module tree (pyvene's site table).

    `modules(model)` gives the module per layer where it is reached: for `head_output` the output
    projection (a forward pre-hook sees its input), for `attention` the attention module (whose
    registered attention function `models.instrument` provides)."""

    name: str
    doc: str
    resolve: Callable[[nn.Module], list[nn.Module]]

    def modules(self, model: nn.Module) -> list[nn.Module]:
        """One module per layer, in layer order; NeedleworkError when the model has none."""
        return self.resolve(model)


SITES: dict[str, Site] = {
    "head_output": Site(
        "head_output",
        "input of the attention output projection, split (b, q, n_heads, head_dim)",
        lambda model: [out_proj(m) for m in attention_modules(model)],
    ),
    "attention": Site("attention", "inside the registered attention function: row scores and the per-head output", attention_modules),
}


def site(name: str) -> Site:
    """The site called `name`; NeedleworkError for an unknown one."""
    if name not in SITES:
        raise NeedleworkError(f"unknown site {name!r}", f"use one of {', '.join(SITES)}")
    return SITES[name]


def heads_by_layer(heads: Iterable[HeadId]) -> dict[int, list[int]]:
    """{layer: sorted query-head indices} of a head set."""
    out: dict[int, list[int]] = {}
    for h in sorted(heads):
        out.setdefault(h.layer, []).append(h.head)
    return out


def model_device(model):
    """The device of a model's (first) parameters: where its inputs go."""
    return next(model.parameters()).device


# --- the KV cache in a forward call: `past_key_values` up to transformers ~5.2x, `cache` after ----


def _forward_params(model) -> frozenset[str]:
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft wraps forward(*args, **kw)
    return frozenset(inspect.signature(type(base).forward).parameters)


def with_cache(model, cache) -> dict:
    """The keyword argument that passes `cache` to `model(...)` under this transformers version
    (newer ones name it `cache` and drop `past_key_values`, which older ones require)."""
    return {"cache" if "cache" in _forward_params(model) else "past_key_values": cache}


def cache_of(out):
    """The KV cache a forward returned (`out.cache`, or `out.past_key_values` on older versions)."""
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


# --- the direct path from a head's output to the logits (the output score) -----------------------

FINAL_NORM_NAMES = ("norm", "final_layernorm", "final_norm", "ln_f")


def decoder_trunk(model) -> nn.Module:
    """The decoder stack without the LM head (`model.model` in transformers' causal LMs)."""
    dec = model.get_decoder() if hasattr(model, "get_decoder") else None
    return dec if dec is not None else model.model


def final_norm(model) -> nn.Module:
    """The norm between the last decoder layer and the LM head; NeedleworkError when not found."""
    trunk = decoder_trunk(model)
    for name in FINAL_NORM_NAMES:
        m = getattr(trunk, name, None)
        if isinstance(m, nn.Module):
            return m
    raise NeedleworkError(
        f"cannot find the final norm of {type(model).__name__} (looked for {'/'.join(FINAL_NORM_NAMES)})",
        "the output score needs a Llama/Mistral/Qwen/Gemma-style decoder",
    )


def attn_output_norms(model) -> list[nn.Module | None]:
    """Per layer, the norm applied to the attention output before it joins the residual stream, or
    None. "Sandwich" layers (Gemma2/3, OLMo2) normalise both sublayers' outputs and have a
    `post_feedforward_layernorm`; there `post_attention_layernorm` acts on the attention output. In
    Llama/Mistral/Qwen the same name is the norm before the MLP, off the head's direct path."""
    attn = attention_modules(model)
    layer_of = {id(m): i for i, m in enumerate(attn)}
    out: list[nn.Module | None] = [None] * len(attn)
    for _, m in model.named_modules():
        i = layer_of.get(id(getattr(m, "self_attn", None)))
        if i is not None and isinstance(getattr(m, "post_feedforward_layernorm", None), nn.Module):
            out[i] = m.post_attention_layernorm
    return out


def unembedding(model) -> nn.Module:
    """The LM head (its weight is vocabulary x hidden)."""
    head = model.get_output_embeddings()
    if head is None or getattr(head, "weight", None) is None:
        raise NeedleworkError(f"{type(model).__name__} has no output embedding", "the output score needs a causal LM with an LM head")
    return head
