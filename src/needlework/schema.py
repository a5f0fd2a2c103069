"""One builder from a parsed mapping (YAML, JSON, CLI options) to a config dataclass, used by every
stage config's `from_dict` and by the study config, so a key is checked the same way everywhere.

`build` fails on unknown keys (naming the closest valid key), on missing required fields, and on
values of the wrong type (naming the expected type and the key path); nested dataclass fields are
built recursively. Value rules (ranges, choices) stay in the dataclasses' own checks.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

from needlework.errors import NeedleworkError

__all__ = ["AUTO", "build", "coerce", "int_or_auto", "key_error", "type_name", "unknown_keys"]

T = TypeVar("T")


def key_error(path: str, problem: str, fix: str) -> NeedleworkError:
    """An error about one config key, named by its dotted path."""
    return NeedleworkError(f"config key `{path}`: {problem}", fix)


def type_name(tp: Any) -> str:
    """A readable name of a type annotation (`int or null`, `list[str]`, `a mapping`)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(type_name(a) for a in typing.get_args(tp))
    if origin is not None:
        args = ", ".join(type_name(a) for a in typing.get_args(tp))
        return f"{getattr(origin, '__name__', str(origin))}[{args}]"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return {type(None): "null", dict: "a mapping", list: "a list"}.get(tp, getattr(tp, "__name__", str(tp)))


def unknown_keys(path: str, keys: Iterable[str], known: Iterable[str], what: str = "key") -> NeedleworkError:
    """The error for keys that are not fields: each named, with the closest valid key as a hint."""
    known = list(known)
    bad = sorted(set(keys) - set(known))
    hints = []
    for k in bad:
        close = difflib.get_close_matches(k, known, n=1)
        hints.append(f"`{k}`" + (f" (did you mean `{close[0]}`?)" if close else ""))
    where = f" in `{path}`" if path else (" in the top level" if what == "key" else "")
    return NeedleworkError(
        f"unknown {what}(s){where}: {', '.join(hints)}", f"remove or rename them; valid keys there: {', '.join(sorted(known))}"
    )


def _coerce_union(value: Any, tp: Any, path: str) -> Any:
    args = typing.get_args(tp)
    if value is None and type(None) in args:
        return None
    last: NeedleworkError | None = None
    for a in args:
        if a is type(None):
            continue
        try:
            return coerce(value, a, path)
        except NeedleworkError as e:
            last = e
    if all(a in (int, float, str, bool, type(None)) for a in args):  # scalars: name every choice
        raise key_error(path, f"expected {type_name(tp)}, got {type(value).__name__} {value!r}", "fix the value")
    raise last or key_error(path, f"expected {type_name(tp)}, got {value!r}", "fix the value")


def _coerce_container(value: Any, tp: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    if origin is dict:
        _, vt = typing.get_args(tp)
        if not isinstance(value, dict):
            raise key_error(path, f"expected a mapping, got {type(value).__name__} {value!r}", "write `name: value` lines under it")
        if not value:
            raise key_error(path, "is empty", "give at least one entry")
        return {str(k): coerce(v, vt, f"{path}.{k}") for k, v in value.items()}
    et = typing.get_args(tp)[0]
    if not isinstance(value, (list, tuple)):
        raise key_error(path, f"expected a list, got {type(value).__name__} {value!r}", "write it as [a, b] or as `- a` lines")
    items = [coerce(v, et, f"{path}[{i}]") for i, v in enumerate(value)]
    return tuple(items) if origin is tuple else items


def coerce(value: Any, tp: Any, path: str) -> Any:
    """Check `value` against the annotation `tp`, recursing into containers and dataclasses.

    Returns the value as the field stores it (ints widened to float, mappings built into their
    dataclass). Raises NeedleworkError naming `path` and the expected type.
    """
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        return _coerce_union(value, tp, path)
    if dataclasses.is_dataclass(tp):
        return value if isinstance(value, tp) else build(tp, value, path)
    if origin is dict or origin is list or (origin is tuple and typing.get_args(tp)[-1:] == (Ellipsis,)):
        return _coerce_container(value, tp, path)
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise key_error(
            path, f"expected a number, got {type(value).__name__} {value!r}", "write a number (YAML reads 1e-3 as text: write 1.0e-3)"
        )
    if tp in (int, str, bool) and (type(value) is not tp):
        raise key_error(
            path,
            f"expected {type_name(tp)}, got {type(value).__name__} {value!r}",
            f"write a {type_name(tp)}" + (" (true/false)" if tp is bool else ""),
        )
    if tp is dict and not isinstance(value, dict):
        raise key_error(path, f"expected a mapping, got {type(value).__name__} {value!r}", "write `key: value` lines under it")
    return value


def build(cls: type[T], data: Mapping[str, Any] | None, path: str = "", what: str = "key", refused: Mapping[str, str] | None = None) -> T:
    """Build dataclass `cls` from a mapping, checking every key and value type.

    Args:
        cls: the config dataclass; its fields are the keys, its defaults fill what is not given.
        data: the mapping (None: every default).
        path: the key path of `data` in its file, for messages (`knockout.eval`).
        what: the noun of the unknown-key message (`eval option` -> "unknown eval option(s)").
        refused: fields the study fills in itself: key -> the fix to show when a mapping sets one.
    Raises:
        NeedleworkError: an unknown, refused or missing key, or a value of the wrong type.
    """
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise key_error(path or "(top)", f"expected a mapping, got {type(data).__name__} {data!r}", "write `key: value` lines")
    hints = typing.get_type_hints(cls)
    fs = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    refused = refused or {}
    if set(data) - set(fs):
        raise unknown_keys(path, data, [k for k in fs if k not in refused], what)
    for k in data:
        if k in refused:
            raise key_error(f"{path}.{k}" if path else k, "is set by the study itself", refused[k])
    kw = {}
    for name, f in fs.items():
        sub = f"{path}.{name}" if path else name
        if name in data:
            kw[name] = coerce(data[name], hints[name], sub)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise key_error(sub, "is missing", f"add `{name}:` (a {type_name(hints[name])})")
    try:
        return cls(**kw)
    except NeedleworkError as e:  # the dataclass's own value checks (__post_init__)
        if not path:
            raise
        raise NeedleworkError(f"config section `{path}`: {e.problem}", e.fix) from None


AUTO = "auto"


def int_or_auto(value: Any, name: str, least: int = 1) -> int | str:
    """A batch-size-like value: an integer >= `least`, or "auto" (sized to the GPU's memory).
    The command line passes every value as text, so "8" becomes 8.

    Raises:
        NeedleworkError: anything else, naming the field.
    """
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if value == AUTO or (isinstance(value, int) and not isinstance(value, bool) and value >= least):
        return value
    raise NeedleworkError(f"{name} must be {AUTO} or an integer >= {least}, not {value!r}", f"pass {name}: {AUTO} or a number")
