"""Attention instrumentation through transformers' attention-function registry.

`instrumented(model)` switches every attention layer to a registered function
`needlework_<backend>` that (1) computes the layer's output with the wrapped fast backend (SDPA by
default) and (2) on the side, only for the query rows a `RowProbe` selects, computes the
pre-softmax logits of those rows against all keys: the per-head argmax key and the attention mass
on a key span. The full (q × k) attention matrix is never built.

Interventions (pyvene's `ZeroIntervention`/`CollectIntervention`/`VanillaIntervention` idea) are
small objects with one call, `iv(x, heads, call) -> new x or None`: x is one layer's site tensor
(b, q, n_heads, head_dim), `heads` the query heads of that layer to act on, `call` the layer and,
at the attention site, the attention call's inputs. `Zero`, `Mean`, `Patch` and `Collect` act on
the `head_output` site (the input of `o_proj`, a forward pre-hook); `Uniform` on the `attention`
site (it needs the values and the mask). `intervened(model, iv, heads)` installs one on the layers
`heads` touch and removes it in `finally`, whichever the site.

`row_outputs(model, probe)` keeps, at the probe's rows only, the per-head outputs and the norm
inputs on a head's direct path to the logits (the output score's direct logit attribution).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from needlework.errors import NeedleworkError
from needlework.models.sites import HeadId, attention_modules, attn_output_norms, final_norm, heads_by_layer, model_shape, site

PREFIX = "needlework_"
_STATE = "_needlework_state"


@dataclass
class RowProbe:
    """What to measure at selected query rows of every (or some) layer(s) during one forward.

    rows: (b, r) long, indices into the query positions of the current call; -1 marks padding.
        None means every query row of the call (a decoding step has one).
    span_mask: (b, k) bool over key positions; when given, the probability mass each head puts on
        those keys is recorded. Keys past its width count as outside the span.
    seq_len: tokens in the sequence so far, this call's included. Layers with a sliding-window
        cache hold only the last keys; with `seq_len` set, key indices are made absolute.
    key_masks: named (b, k) bool key sets; the log of the mass on each goes to
        `log_masses[name][l]` (b, h, r), -inf where none of its keys is visible (the query score's
        gold documents and all documents, from one logits computation; logs, so that a ratio of
        two tiny masses stays exact).
    Results (per layer index): `argmax[l]` (b, h, r) long absolute key position; `mass[l]` (b, h, r).
    `row_outputs(model, probe)` fills, at the same rows: `head_out[l]` (b, r, n_heads, head_dim),
    the head_output site; `attn_norm_in[l]` (b, r, hidden), the input of the norm that sandwich
    layers (Gemma2) put on the attention output; `final_in` (b, r, hidden), the final norm's input.
    """

    rows: torch.Tensor | None = None
    span_mask: torch.Tensor | None = None
    want_argmax: bool = True
    layers: frozenset[int] | None = None
    seq_len: int | None = None
    argmax: dict[int, torch.Tensor] = field(default_factory=dict)
    mass: dict[int, torch.Tensor] = field(default_factory=dict)
    key_masks: dict[str, torch.Tensor] = field(default_factory=dict)
    log_masses: dict[str, dict[int, torch.Tensor]] = field(default_factory=dict)
    head_out: dict[int, torch.Tensor] = field(default_factory=dict)
    attn_norm_in: dict[int, torch.Tensor] = field(default_factory=dict)
    final_in: torch.Tensor | None = None

    def clear(self) -> None:
        self.argmax.clear()
        self.mass.clear()
        self.log_masses.clear()
        self.head_out.clear()
        self.attn_norm_in.clear()
        self.final_in = None

    def wants_logits(self) -> bool:
        """Whether the attention side has anything to compute (argmax or a mass)."""
        return self.want_argmax or self.span_mask is not None or bool(self.key_masks)


@dataclass
class SiteCall:
    """What a site hands an intervention besides the tensor: the layer and, at the `attention`
    site, the attention function's inputs (None at `head_output`)."""

    layer: int
    query: torch.Tensor | None = None  # (b, h, q, d)
    key: torch.Tensor | None = None  # (b, kvh, k, d)
    value: torch.Tensor | None = None  # (b, kvh, k, d)
    attention_mask: torch.Tensor | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)


class Intervention(Protocol):
    """One call for every intervention; returning None keeps x."""

    site: str  # a key of `models.sites.SITES`

    def __call__(self, x: torch.Tensor, heads: Sequence[int], call: SiteCall) -> torch.Tensor | None: ...


@dataclass
class LayerState:
    probe: RowProbe | None = None
    edits: list[tuple[Intervention, tuple[int, ...]]] = field(default_factory=list)  # attention-site interventions


def _state(module) -> LayerState:
    st = getattr(module, _STATE, None)
    if st is None:
        st = LayerState()
        setattr(module, _STATE, st)
    return st


def _visible(attention_mask, b, q_rows, k, q_len, sliding_window, device) -> torch.Tensor:
    """(b, 1, r, k) bool: which keys the query rows `q_rows` (b, r) may attend to; `q_rows` None means
    every row (r = q_len), read straight off the mask without a gather."""
    if attention_mask is not None:
        m = attention_mask[..., :k]
        if q_rows is not None:
            idx = q_rows.clamp(min=0)[:, None, :, None].expand(m.shape[0], m.shape[1], -1, k)
            m = torch.gather(m, 2, idx)
        return m if m.dtype == torch.bool else m > torch.finfo(m.dtype).min / 2
    # No mask: transformers skipped it because the call is plainly causal (queries are the last q_len keys).
    rows = q_rows.clamp(min=0) if q_rows is not None else torch.arange(q_len, device=device)[None]
    abs_q = rows + (k - q_len)  # (b, r)
    keys = torch.arange(k, device=device)
    vis = keys[None, None, :] <= abs_q[:, :, None]
    if sliding_window:
        vis &= keys[None, None, :] > abs_q[:, :, None] - sliding_window
    return vis[:, None]


def row_logits(module, query, key, attention_mask, scaling, rows, kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """Pre-softmax logits (b, h, r, k) in float32 for the selected query rows, masked with -inf,
    and the row indices used. Grouped-query heads are handled without repeating keys."""
    b, h, q_len, d = query.shape
    kvh, k = key.shape[1], key.shape[2]
    if rows is None:
        rows = torch.arange(q_len, device=query.device).expand(b, q_len)
    r = rows.shape[1]
    qs = torch.gather(query, 2, rows.clamp(min=0)[:, None, :, None].expand(b, h, r, d))  # b, h, r, d
    g = h // kvh
    # query head j uses key head j // g (repeat_kv's layout), so group query heads by key head
    logits = torch.matmul(qs.reshape(b, kvh, g * r, d), key.transpose(-1, -2))  # b, kvh, g*r, k
    logits = logits.reshape(b, h, r, k).float() * (scaling if scaling is not None else d**-0.5)
    softcap = kwargs.get("softcap")
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    window = kwargs.get("sliding_window") or None
    vis = _visible(attention_mask, b, rows, k, q_len, window, query.device)  # b, 1, r, k
    return logits.masked_fill(~vis, float("-inf")), rows


def _probe(module, query, key, attention_mask, scaling, kwargs, probe: RowProbe) -> None:
    layer = module.layer_idx
    logits, _ = row_logits(module, query, key, attention_mask, scaling, probe.rows, kwargs)
    k = logits.shape[-1]
    offset = max(0, probe.seq_len - k) if probe.seq_len is not None else 0  # sliding-window caches
    if probe.want_argmax:
        probe.argmax[layer] = logits.argmax(-1) + offset  # b, h, r
    if probe.span_mask is None and not probe.key_masks:
        return
    total = torch.logsumexp(logits, -1)
    if probe.span_mask is not None:
        probe.mass[layer] = torch.exp(_log_mass_on(logits, total, probe.span_mask, offset)).nan_to_num(0.0)  # b, h, r
    for name, keys in probe.key_masks.items():
        probe.log_masses.setdefault(name, {})[layer] = _log_mass_on(logits, total, keys, offset)


def _log_mass_on(logits: torch.Tensor, total: torch.Tensor, mask: torch.Tensor, offset: int) -> torch.Tensor:
    """(b, h, r) log of the attention probability on the keys `mask` (b, >= offset + k) marks, from
    row logits (b, h, r, k) and their logsumexp `total`; mask columns past its width count as
    outside; -inf when no marked key is visible."""
    k = logits.shape[-1]
    span = mask[:, offset : offset + k]
    if span.shape[1] < k:
        span = torch.nn.functional.pad(span, (0, k - span.shape[1]), value=False)
    inside = torch.logsumexp(logits.masked_fill(~span[:, None, None, :], float("-inf")), -1)
    return inside - total


def _uniform(out: torch.Tensor, heads: Sequence[int], call: SiteCall) -> torch.Tensor:
    """Replace `heads` of `out` (b, q, h, d) by the mean of their values over visible keys.

    One (b, q, k) weight matrix serves every head, and one matmul every key-value head the chosen
    heads read; `out` (the kernel's fresh output) is written in place unless autograd needs it."""
    query, key, value, attention_mask, kwargs = call.query, call.key, call.value, call.attention_mask, call.kwargs
    b, h, q_len, d = query.shape
    kvh, k = key.shape[1], key.shape[2]
    g = h // kvh
    vis = _visible(attention_mask, b, None, k, q_len, kwargs.get("sliding_window") or None, query.device)
    w = vis.to(value.dtype)  # (b|1, 1, q, k)
    w = w / w.sum(-1, keepdim=True).clamp(min=1)  # uniform weights over the visible prefix
    kv = sorted({hd // g for hd in heads})
    mixed = torch.matmul(w, value[:, kv])  # (b, len(kv), q, d)
    if out.requires_grad and torch.is_grad_enabled():
        out = out.clone()
    for hd in heads:
        out[:, :, hd] = mixed[:, kv.index(hd // g)]
    return out


def _make_attention(backend: str) -> Callable:
    from transformers import AttentionInterface

    def needlework_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        inner = AttentionInterface._global_mapping[backend] if backend != "eager" else _eager(module)
        out, weights = inner(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)
        st: LayerState | None = getattr(module, _STATE, None)
        if st is not None:
            if st.probe is not None and st.probe.wants_logits() and (st.probe.layers is None or module.layer_idx in st.probe.layers):
                with torch.no_grad():
                    _probe(module, query, key, attention_mask, scaling, kwargs, st.probe)
            if st.edits:
                call = SiteCall(module.layer_idx, query, key, value, attention_mask, kwargs)
                for iv, heads in st.edits:
                    y = iv(out, heads, call)
                    out = out if y is None else y
        return out, weights

    return needlework_attention


def _eager(module):
    """The eager attention function of the module's own modeling file (Gemma's adds softcap)."""
    import sys

    fn = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
    if fn is None:
        from transformers.models.llama.modeling_llama import eager_attention_forward as fn
    return fn


def _ensure_registered(backend: str) -> str:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    name = PREFIX + backend
    if name not in AttentionInterface._global_mapping:
        if backend != "eager" and backend not in AttentionInterface._global_mapping:
            raise NeedleworkError(
                f"attention backend {backend!r} is not available in transformers",
                "use sdpa (default), eager, or an installed flash_attention_2",
            )
        AttentionInterface.register(name, _make_attention(backend))
        AttentionMaskInterface.register(name, AttentionMaskInterface._global_mapping[backend])
    return name


def base_backend(model) -> str:
    impl = model.config._attn_implementation or "sdpa"
    return impl[len(PREFIX) :] if impl.startswith(PREFIX) else impl


@contextlib.contextmanager
def instrumented(model, backend: str | None = None) -> Iterator[list]:
    """Route every attention layer through needlework's function for the duration of the block.

    Yields the attention modules in layer order (set probes with `set_probe`). Restores the
    model's attention implementation and clears all layer state on exit.
    """
    mods = attention_modules(model)  # raises a clear error when the model has none
    old = model.config._attn_implementation
    backend = backend or base_backend(model)
    name = _ensure_registered(backend)
    model.set_attn_implementation(name)
    try:
        yield mods
    finally:
        for m in mods:
            if hasattr(m, _STATE):
                delattr(m, _STATE)
        model.set_attn_implementation(old)


def set_probe(model, probe: RowProbe | None) -> None:
    for m in attention_modules(model):
        _state(m).probe = probe


def _gather_rows(x: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
    """x (b, q, ...) at the rows (b, r) of each batch row (-1, padding, reads row 0); None: every
    row, copied (a decoding step has one; a later in-place intervention must not reach the copy)."""
    if rows is None:
        return x.detach().clone()
    idx = rows.clamp(min=0).reshape(*rows.shape, *([1] * (x.dim() - 2))).expand(*rows.shape, *x.shape[2:])
    return torch.gather(x.detach(), 1, idx)


@contextlib.contextmanager
def row_outputs(model, probe: RowProbe) -> Iterator[None]:
    """Record, at the query rows `probe.rows` selects (the rows the attention probes read), what a
    head's direct path to the logits goes through: every layer's per-head outputs (the head_output
    site, a pre-hook on the output projection), the input of sandwich layers' attention-output norm
    (Gemma2) and the final norm's input. Only the selected rows are kept, never the whole sequence.
    Hooks are removed on exit, also after an exception."""
    shape = model_shape(model)

    def keep(store: dict[int, torch.Tensor] | None, layer: int, split: bool) -> Callable:
        def pre_hook(_mod, args):
            x = _gather_rows(args[0], probe.rows)
            if split:
                x = x.reshape(*x.shape[:2], shape.n_heads, shape.head_dim)  # b, r, h, d
            if store is None:
                probe.final_in = x
            else:
                store[layer] = x

        return pre_hook

    hooks = [(proj, keep(probe.head_out, l, True)) for l, proj in enumerate(site("head_output").modules(model))]
    hooks += [(norm, keep(probe.attn_norm_in, l, False)) for l, norm in enumerate(attn_output_norms(model)) if norm is not None]
    hooks.append((final_norm(model), keep(None, -1, False)))
    handles = []
    try:
        for module, hook in hooks:
            handles.append(module.register_forward_pre_hook(hook))
        yield
    finally:
        for hd in handles:
            hd.remove()


def write_heads(x: torch.Tensor, heads: Sequence[int], value: torch.Tensor | float) -> torch.Tensor:
    """x (b, q, h, d) with heads `heads` set to `value`, broadcast to (b, q, len(heads), d).

    Written in place when no gradient flows through x (evaluation): x is the output projection's
    freshly made input, read by nothing else, so a copy of the whole layer output would be waste.
    Under autograd a copy keeps the graph intact.
    """
    out = x.clone() if (x.requires_grad and torch.is_grad_enabled()) else x
    out[:, :, list(heads)] = value if not torch.is_tensor(value) else value.to(x.dtype)
    return out


class Zero:
    """The heads' outputs before the output projection set to 0."""

    site = "head_output"

    def __call__(self, x: torch.Tensor, heads: Sequence[int], call: SiteCall) -> torch.Tensor:
        return write_heads(x, heads, 0.0)


@dataclass
class Mean:
    """Each head replaced by its mean output over a reference set; `means` (n_layers, n_heads, d)."""

    means: torch.Tensor
    site = "head_output"

    def __call__(self, x: torch.Tensor, heads: Sequence[int], call: SiteCall) -> torch.Tensor:
        return write_heads(x, heads, self.means[call.layer][list(heads)].to(x.device))


@dataclass
class Collect:
    """Keeps each layer's site tensor in `store` (no copy: the site's own tensor, which nothing
    modifies afterwards in a model that is not patched itself)."""

    store: dict[int, torch.Tensor] = field(default_factory=dict)
    site = "head_output"

    def __call__(self, x: torch.Tensor, heads: Sequence[int], call: SiteCall) -> None:
        self.store[call.layer] = x
        return None


@dataclass
class Patch:
    """The heads replaced by another run's head outputs at the same layer, read from `store`
    (a `Collect`'s, filled by the source forward just before), shaped like x."""

    store: dict[int, torch.Tensor]
    site = "head_output"

    def __call__(self, x: torch.Tensor, heads: Sequence[int], call: SiteCall) -> torch.Tensor:
        return write_heads(x, heads, self.store[call.layer][:, :, list(heads)])


class Uniform:
    """The head attends uniformly over its visible (causal, windowed) prefix: its output becomes
    the mean of the values it may see. Lives at the attention site, where values and mask are."""

    site = "attention"

    def __call__(self, x: torch.Tensor, heads: Sequence[int], call: SiteCall) -> torch.Tensor:
        return _uniform(x, heads, call)


def _head_output_hook(iv: Intervention, layer: int, heads: tuple[int, ...], n_heads: int, head_dim: int) -> Callable:
    call = SiteCall(layer)

    def pre_hook(_mod, args):
        x = args[0]
        b, q, _ = x.shape
        y = iv(x.view(b, q, n_heads, head_dim), heads, call)
        if y is None:
            return None
        return (y.reshape(b, q, n_heads * head_dim),) + tuple(args[1:])

    return pre_hook


@contextlib.contextmanager
def intervened(model, iv: Intervention, heads: Iterable[HeadId]) -> Iterator[None]:
    """Run `iv` on `heads` (only the layers they touch get a hook) for the duration of the block,
    in every forward (prefill and decoding); hooks and attention state are removed on exit, also
    after an exception. An empty head set changes nothing.

    Raises:
        NeedleworkError: an unknown site, or a model whose attention cannot be instrumented.
    """
    by_layer = {l: tuple(hs) for l, hs in heads_by_layer(heads).items()}
    where = site(iv.site)  # raises for an unknown site
    if where.name == "attention":
        if not by_layer:
            yield
            return
        with instrumented(model) as mods:  # restores the attention implementation and clears state on exit
            for m in mods:
                if m.layer_idx in by_layer:
                    _state(m).edits.append((iv, by_layer[m.layer_idx]))
            yield
        return
    shape = model_shape(model)
    handles = []
    try:
        for layer, proj in enumerate(where.modules(model)):
            if layer in by_layer:  # untouched layers get no hook at all
                hook = _head_output_hook(iv, layer, by_layer[layer], shape.n_heads, shape.head_dim)
                handles.append(proj.register_forward_pre_hook(hook))
        yield
    finally:
        for hd in handles:
            hd.remove()
