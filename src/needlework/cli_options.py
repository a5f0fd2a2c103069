"""Command-line options derived from the config dataclasses.

A setting is written down once, as a dataclass field with its type, default and a trailing comment
(or `metadata={"help": ...}`); the study YAML, the library and every command read that one
definition. `Options(SomeConfig, ...)` turns fields into typer options (`--field-name`, the
dataclass default, the help text), and `with_options` puts them in a command's signature and hands
the command the built config instead of loose values. `MODEL` is the one model-options group of
every command that loads a model.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import re
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import typer

from needlework.models.load import ModelConfig

__all__ = ["MODEL", "MODEL_SHARED", "Options", "field_help", "with_options"]

_SCALARS = (bool, int, float, str)


@functools.cache
def _comments(cls: type) -> dict[str, str]:
    """Each field's help from the class source: its trailing `# comment`, else the `name: text`
    paragraph of the class docstring (the two places the dataclasses document fields)."""
    out: dict[str, str] = {}
    try:
        src = inspect.getsource(cls)
    except (OSError, TypeError):
        return out
    for m in re.finditer(r"^    (\w+)\s*:[^#\n]*?#\s*(.+)$", src, flags=re.M):
        out.setdefault(m.group(1), m.group(2).strip())
    doc = inspect.getdoc(cls) or ""
    for m in re.finditer(r"^(\w+): (.+?)(?=^\w+: |\Z)", doc, flags=re.M | re.S):
        out.setdefault(m.group(1), " ".join(m.group(2).split()))
    return out


def field_help(cls: type, name: str) -> str:
    """The help text of a field: `metadata["help"]`, its trailing comment, or its docstring entry."""
    f = {f.name: f for f in dataclasses.fields(cls)}[name]
    return str(f.metadata.get("help") or _comments(cls).get(name, ""))


def _cli_type(hint: Any) -> tuple[type, type | None] | None:
    """The typer type of a field's type hint and its container (list or tuple: comma-separated on
    the command line); None for types the command line does not take (nested configs, pairs)."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        if len(args) == 1:
            return _cli_type(args[0])
        return (str, None) if all(a in _SCALARS for a in args) else None  # e.g. depth: float | str
    if typing.get_origin(hint) in (list, tuple) and args and args[0] is str and (len(args) == 1 or args[1] is Ellipsis):
        return str, typing.get_origin(hint)
    return (hint, None) if hint in _SCALARS else None


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return ...


@dataclass(frozen=True)
class Options:
    """The command-line options of one config dataclass.

    Args:
        cls: the config dataclass.
        fields: the fields offered, in this order (None: every field of a type the CLI can take).
        exclude: fields not offered.
        flags: field -> its flag names, where they differ from `--field-name`.
        help: field -> help, where the command says more than the field's comment.
        minimum: field -> least value the command line accepts (a usage error before anything loads).
        given_only: options default to None and only the given ones are collected, as a dict
            (they are merged over a YAML file, or checked for conflicts); the dataclass default is
            shown in the help.
        prefix: parameter-name prefix, so that two groups of one class fit in one command.
    """

    cls: type
    fields: tuple[str, ...] | None = None
    exclude: tuple[str, ...] = ()
    flags: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    help: Mapping[str, str] = field(default_factory=dict)
    minimum: Mapping[str, int] = field(default_factory=dict)
    given_only: bool = False
    prefix: str = ""

    def _fields(self) -> list[tuple[dataclasses.Field, type, type | None]]:
        hints = typing.get_type_hints(self.cls)
        by_name = {f.name: f for f in dataclasses.fields(self.cls)}
        names = self.fields or tuple(by_name)
        out = []
        for name in names:
            t = _cli_type(hints[name])
            if name in self.exclude or (t is None and self.fields is None):
                continue
            if t is None:
                raise TypeError(f"{self.cls.__name__}.{name} has a type the command line cannot take")
            out.append((by_name[name], *t))
        return out

    def parameters(self) -> list[inspect.Parameter]:
        """The typer parameters of the offered fields."""
        params = []
        for f, typ, container in self._fields():
            default = _default(f)
            # "None: x" in a field's comment is what an unset option does on the command line
            text = (self.help.get(f.name) or field_help(self.cls, f.name)).replace("None: ", "default: ")
            flag = "--" + f.name.replace("_", "-")
            names = self.flags.get(f.name) or ((f"{flag}/--no-{flag[2:]}",) if typ is bool else (flag,))
            unset = self.given_only or container is not None  # lists: unset keeps the dataclass default
            optional = unset or default is None
            if unset and default is not None:
                shown = (",".join(default) or "none") if isinstance(default, (list, tuple)) else default
                text += f" (default: {shown})"
            opt = typer.Option(None if unset else default, *names, help=text, show_default=not optional, min=self.minimum.get(f.name))
            annotation = typing.Optional[typ] if optional else typ  # noqa: UP045  (typ is a runtime value)
            params.append(inspect.Parameter(self.prefix + f.name, inspect.Parameter.KEYWORD_ONLY, default=opt, annotation=annotation))
        return params

    def collect(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """Take this group's values out of a command's keyword arguments, as {field: value}."""
        out = {}
        for f, _, container in self._fields():
            v = kwargs.pop(self.prefix + f.name)
            if container is not None and isinstance(v, str):
                v = container(s.strip() for s in v.split(",") if s.strip())
            if not ((self.given_only or container is not None) and v is None):
                out[f.name] = v
        return out


def with_options(**groups: Options) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Give a command the options of config dataclasses: each keyword names a parameter of the
    command that receives the built config (a dict of the given values for `given_only` groups);
    its options replace it in the signature typer reads."""

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        sig = inspect.signature(fn, eval_str=True)
        own = [p for name, p in sig.parameters.items() if name not in groups]
        extra = [p for g in groups.values() for p in g.parameters()]
        names = [p.name for p in own + extra]
        if len(set(names)) < len(names):
            raise TypeError(f"{fn.__name__}: options named twice: {sorted({n for n in names if names.count(n) > 1})}")

        @functools.wraps(fn)
        def command(**kwargs: Any) -> Any:
            for name, g in groups.items():
                values = g.collect(kwargs)
                kwargs[name] = values if g.given_only else g.cls(**values)
            return fn(**kwargs)

        command.__signature__ = sig.replace(parameters=[p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own] + extra)
        command.__annotations__ = {}  # typer reads the types from __signature__
        del command.__wrapped__  # typer must read this signature, never fn's
        return command

    return decorate


_MODEL_FIELDS = ("name", "adapter", "device", "dtype", "attn_implementation", "rope_theta", "max_position_embeddings")

# the model options of every command that loads one model: --model/-m, --adapter, --device, ...
MODEL = Options(ModelConfig, fields=_MODEL_FIELDS, flags={"name": ("--model", "-m")})
# the settings two models of one command share (patch: --source/--target name them and their adapters)
MODEL_SHARED = Options(ModelConfig, fields=_MODEL_FIELDS[2:])
