"""Model parts named once: attention modules, the head-output site, head ids and the GQA map.

A head is `HeadId(layer, head)` with `head` a query-head index; a head set is a
`frozenset[HeadId]`. The *head output* site is the input of the attention output projection
(`o_proj` in Llama/Mistral/Qwen/Gemma), shaped `(b, q, n_heads * head_dim)`, which splits into
`(b, q, n_heads, head_dim)`: knockout and patching act there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

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
    def parse(cls, s: str) -> "HeadId":
        try:
            layer, head = s.strip().split("-")
            return cls(int(layer), int(head))
        except ValueError:
            raise NeedleworkError(f"bad head id {s!r}", "write heads as LAYER-HEAD, e.g. 17-3") from None


HeadSet = frozenset  # frozenset[HeadId]


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
        return [HeadId(l, h) for l in range(self.n_layers) for h in range(self.n_heads)]

    def check(self, heads: Iterable[HeadId]) -> None:
        """Raise NeedleworkError for heads outside the model."""
        bad = [h for h in heads if not (0 <= h.layer < self.n_layers and 0 <= h.head < self.n_heads)]
        if bad:
            raise NeedleworkError(
                f"heads {', '.join(map(str, sorted(bad)[:5]))} do not exist in this model "
                f"({self.n_layers} layers x {self.n_heads} heads)",
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


def heads_by_layer(heads: Iterable[HeadId]) -> dict[int, list[int]]:
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
