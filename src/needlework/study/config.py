"""The study config: one YAML file names models, tasks, training sets, sizes and every stage's
options. Dataclass fields are the YAML keys; defaults live here.

Validation happens on load and names the key path (`tasks.mdqa.train_sets.ll.generate.concept`)
and the fix: unknown keys fail and name themselves (with the closest valid key), wrong types name
the expected type. Sections that belong to other stages (`train`, `eval`, `score`, `knockout`,
`patch`, generator options) are checked against those stages' own config dataclasses, and the
values of a set's `generate:`/`load:` options by the generator's and loader's own checks
(`data.generate.check_config`, `data.loaders.check_options`), so that a bad one fails here, on
load and in `--dry-run`, not when its data stage runs after other sets have trained.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from needlework.errors import NeedleworkError

KINDS = ("synthetic", "limited", "real", "none")  # none: the model as it is, without fine-tuning
HEAD_RULES = ("top_k", "threshold")
PATCH_KINDS = ("intersection", "complement", "random", "all")  # head sets of SPEC §2 (and every head)
# Stage configs owned by other packages: YAML section -> (module, class). Checked when importable.
FOREIGN = {
    "train": ("needlework.train.config", "TrainConfig"),
    "eval": ("needlework.evaluate.evaluate", "EvalConfig"),
    "score": ("needlework.heads.score", "ScoreConfig"),
    "knockout": ("needlework.interventions.knockout", "KnockoutConfig"),
    "patch": ("needlework.interventions.patch", "PatchConfig"),
    "generate": ("needlework.data.generate", "GenerateConfig"),
    "load": ("needlework.data.loaders", "LoadConfig"),
}
# Keys of foreign sections that the study fills in itself (per task / training set), so a config
# must not set them there.
STUDY_FILLED = {
    "generate": ("task", "n", "length", "tokenizer", "seed"),
    "load": ("length", "tokenizer", "limit", "seed"),
    "knockout": ("top", "threshold", "heads"),
    "patch": ("set", "top", "threshold"),
}


@dataclass
class ModelSpec:
    """A base model of the study (the `ModelConfig` fields, without the adapter the study trains)."""

    name: str = "smollm2"
    dtype: str = "auto"
    device: str = "auto"
    attn_implementation: str = "sdpa"
    rope_theta: float | None = None
    max_position_embeddings: int | None = None


@dataclass
class SetSpec:
    """A data set: generated (`generate:` options), loaded from an official file (`load:` with
    `format` and `path`), or a JSONL file of records (`file:`). Exactly one of the three."""

    kind: str = "synthetic"  # synthetic | limited | real | none (no fine-tuning: the base model)
    generate: dict[str, Any] | None = None  # generator options (concept, context, relations, haystack, depth, ...)
    load: dict[str, Any] | None = None  # format, path, and loader options (limited, depth, ...)
    file: str | None = None  # JSONL of needlework records
    n: int | None = None  # examples; default sizes.n_train (sizes.n_eval for the evaluation set)
    seed: int | None = None  # default: the study seed (evaluation set: seed + 1000)
    label: str | None = None  # display name in the report


@dataclass
class TaskSpec:
    """One task: its evaluation set, its training sets, and which of them is the reference."""

    eval_set: SetSpec
    train_sets: dict[str, SetSpec]
    reference: str
    length: int = 1024  # tokens per example (of each model's tokenizer)
    # ScoreConfig fields for this task over the study-wide `score:` section, e.g. SummHay's
    # `{score: insight}`: its needles are evidence spans, which the retrieval score never uses (SPEC §2)
    score: dict[str, Any] | None = None


@dataclass
class Sizes:
    n_train: int = 48
    n_eval: int = 24


@dataclass
class HeadsSpec:
    """The head-set rule of SPEC §2: the top-k heads, or every head with mean score above a threshold."""

    rule: str = "top_k"  # top_k | threshold
    k: int = 10
    threshold: float = 0.1


@dataclass
class AnalysisSpec:
    n_boot: int = 1000
    alpha: float = 0.05
    seed: int = 0
    include_reference: bool = False  # put the reference set itself into the correlations


@dataclass
class ScaleOut:
    """How the train and evaluate stages spread over processes (one per GPU). Not part of any
    stage's cache key: the processes share one global batch, so results do not depend on them."""

    processes: int | str = "auto"  # auto: every visible GPU (1 without CUDA); N: N processes (gloo on CPU)


@dataclass
class StudyConfig:
    models: dict[str, ModelSpec]
    tasks: dict[str, TaskSpec]
    name: str = "study"
    seed: int = 0
    sizes: Sizes = field(default_factory=Sizes)
    train: dict[str, Any] = field(default_factory=dict)  # TrainConfig fields
    eval: dict[str, Any] = field(default_factory=dict)  # EvalConfig fields
    score: dict[str, Any] = field(default_factory=dict)  # ScoreConfig fields
    heads: HeadsSpec = field(default_factory=HeadsSpec)
    # knockout: `enabled`, `sets` (training sets whose models are knocked out: "reference", "all", or
    # a list), `limit` (evaluation examples), and KnockoutConfig fields.
    knockout: dict[str, Any] = field(default_factory=dict)
    # patch: `enabled`, `targets` ("all" or a list of training sets; the reference is the source),
    # `limit`, `sets` (head-set kinds, default [intersection, complement, random]), PatchConfig fields.
    patch: dict[str, Any] = field(default_factory=dict)
    analysis: AnalysisSpec = field(default_factory=AnalysisSpec)
    scale_out: ScaleOut = field(default_factory=ScaleOut)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


STUDY_OWN = {
    "knockout": {"enabled": bool, "sets": (str, list), "limit": (int, type(None))},
    "patch": {"enabled": bool, "targets": (str, list), "limit": (int, type(None)), "sets": list},
}


# ----------------------------------------------------------------------------------- validation


def _err(path: str, problem: str, fix: str) -> NeedleworkError:
    return NeedleworkError(f"config key `{path}`: {problem}", fix)


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is not None:
        args = ", ".join(_type_name(a) for a in typing.get_args(tp))
        return f"{getattr(origin, '__name__', str(origin))}[{args}]"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return {type(None): "null", dict: "a mapping", list: "a list"}.get(tp, getattr(tp, "__name__", str(tp)))


def _unknown(path: str, keys, known) -> NeedleworkError:
    bad = sorted(set(keys) - set(known))
    hints = []
    for k in bad:
        close = difflib.get_close_matches(k, list(known), n=1)
        hints.append(f"`{k}`" + (f" (did you mean `{close[0]}`?)" if close else ""))
    where = f"`{path}`" if path else "the top level"
    return NeedleworkError(
        f"unknown key(s) in {where}: {', '.join(hints)}",
        f"remove or rename them; valid keys there: {', '.join(sorted(known))}",
    )


def _coerce(value: Any, tp: Any, path: str) -> Any:
    """Check `value` against the annotation `tp` (recursing into containers and dataclasses)."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        last: NeedleworkError | None = None
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, path)
            except NeedleworkError as e:
                last = e
        if all(a in (int, float, str, bool, type(None)) for a in args):  # scalars: name every choice
            raise _err(path, f"expected {_type_name(tp)}, got {type(value).__name__} {value!r}", "fix the value")
        raise last or _err(path, f"expected {_type_name(tp)}, got {value!r}", "fix the value")
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, path)
    if origin is dict:
        _, vt = typing.get_args(tp)
        if not isinstance(value, dict):
            raise _err(path, f"expected a mapping, got {type(value).__name__} {value!r}", "write `name: value` lines under it")
        if not value:
            raise _err(path, "is empty", "give at least one entry")
        return {str(k): _coerce(v, vt, f"{path}.{k}") for k, v in value.items()}
    if origin is list or (origin is tuple and typing.get_args(tp)[-1:] == (Ellipsis,)):
        et = typing.get_args(tp)[0]
        if not isinstance(value, (list, tuple)):
            raise _err(path, f"expected a list, got {type(value).__name__} {value!r}", "write it as [a, b] or as `- a` lines")
        return [_coerce(v, et, f"{path}[{i}]") for i, v in enumerate(value)]
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise _err(path, f"expected a number, got {type(value).__name__} {value!r}",
                   "write a number (YAML reads 1e-3 as text: write 1.0e-3)")
    if tp in (int, str, bool) and (type(value) is not tp):
        raise _err(path, f"expected {_type_name(tp)}, got {type(value).__name__} {value!r}",
                   f"write a {_type_name(tp)}" + (" (true/false)" if tp is bool else ""))
    if tp is dict and not isinstance(value, dict):
        raise _err(path, f"expected a mapping, got {type(value).__name__} {value!r}", "write `key: value` lines under it")
    return value


def _build(cls, data: Any, path: str):
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise _err(path or "(top)", f"expected a mapping, got {type(data).__name__} {data!r}", "write `key: value` lines")
    hints = typing.get_type_hints(cls)
    fs = {f.name: f for f in dataclasses.fields(cls)}
    if set(data) - set(fs):
        raise _unknown(path, data, fs)
    kw = {}
    for name, f in fs.items():
        sub = f"{path}.{name}" if path else name
        if name in data:
            kw[name] = _coerce(data[name], hints[name], sub)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:  # type: ignore[misc]
            raise _err(sub, "is missing", f"add `{name}:` (a {_type_name(hints[name])})")
    return cls(**kw)


def _foreign_class(section: str):
    mod, name = FOREIGN[section]
    try:
        return getattr(importlib.import_module(mod), name)
    except (ImportError, AttributeError):
        return None  # that stage is not installed: its options are checked when it runs


def check_foreign(section: str, opts: dict[str, Any], path: str, own: dict[str, Any] | None = None) -> None:
    """Check a stage's options against its config dataclass: unknown keys, keys the study fills."""
    own = own or {}
    filled = [k for k in opts if k in STUDY_FILLED.get(section, ())]
    if filled:
        raise _err(f"{path}.{filled[0]}", "is set by the study itself", _FILLED_FIX.get(section, "remove it"))
    for k, tp in own.items():
        if k in opts and not isinstance(opts[k], tp):
            raise _err(f"{path}.{k}", f"expected {' or '.join(_type_name(t) for t in (tp if isinstance(tp, tuple) else (tp,)))}, "
                       f"got {type(opts[k]).__name__} {opts[k]!r}", "fix the value")
    cls = _foreign_class(section)
    if cls is None:
        return
    known = {f.name for f in dataclasses.fields(cls)} | set(own)
    if section == "load":
        known |= {"format", "path"}
    if set(opts) - known:
        raise _unknown(path, opts, known - set(STUDY_FILLED.get(section, ())))
    kw = {k: v for k, v in opts.items() if k not in own and not (section == "load" and k in ("format", "path"))}
    try:
        obj = cls.from_dict(kw) if hasattr(cls, "from_dict") else cls(**kw)
        if callable(getattr(obj, "check", None)):  # values, not only keys (ScoreConfig checks in check())
            obj.check()
    except NeedleworkError as e:
        raise NeedleworkError(f"config section `{path}`: {e.problem}", e.fix) from None
    except (TypeError, ValueError) as e:
        raise _err(path, str(e), "fix the value(s)") from None


# Value checks of the data sections, owned by the generator and the loader (one source of truth):
# section -> (module, function). They raise `OptionError`, whose `key` names the bad field.
DATA_CHECKS = {
    "generate": ("needlework.data.generate", "check_config"),
    "load": ("needlework.data.loaders", "check_options"),
}
# Fields of a data section that the study fills in from elsewhere: where the config sets them.
_FILLED_FROM = {"task": "tasks.{task}", "length": "tasks.{task}.length"}


def check_data_values(section: str, opts: dict[str, Any], path: str, task: str, length: int) -> None:
    """Check every value of a set's `generate:`/`load:` options as the data stage will use them
    (with the task, length and size the study fills in): types against the stage's dataclass, then
    the generator's / loader's own value check, so a bad value fails on load with its key path
    instead of when the data stage runs."""
    cls = _foreign_class(section)
    try:
        check = getattr(importlib.import_module(DATA_CHECKS[section][0]), DATA_CHECKS[section][1])
    except (ImportError, AttributeError):
        check = None
    if cls is None or check is None:
        return  # that stage is not installed: its options are checked when it runs
    hints = typing.get_type_hints(cls)
    kw = {}
    for k, v in opts.items():
        if k in ("format", "path"):
            continue
        _coerce(v, hints[k], f"{path}.{k}")
        kw[k] = tuple(v) if section == "load" and k == "limited" and isinstance(v, list) else v
    args: tuple = ()
    if section == "generate":
        args = (cls(**{**kw, "task": task, "n": 1, "length": length}),)
    else:
        fmt = opts["format"]
        if not isinstance(fmt, str):
            raise _err(f"{path}.format", f"expected str, got {type(fmt).__name__} {fmt!r}", "write mdqa, musique, summhay or hf:NAME")
        if not isinstance(opts["path"], str):
            raise _err(f"{path}.path", f"expected str, got {type(opts['path']).__name__} {opts['path']!r}", "write the file's path")
        args = (fmt, cls(**{**kw, "length": length}))
    try:
        check(*args)
    except NeedleworkError as e:
        key = getattr(e, "key", None)
        where = _FILLED_FROM.get(key, "{path}.%s" % key if key else "{path}").format(task=task, path=path)
        fix = e.fix or "fix the value"
        if key == "task":
            fix += f" (a generated set's task is its task's name under `tasks:`, here {task!r})"
        raise _err(where, e.problem, fix) from None
    if section == "load" and fmt in _loader_formats() and fmt != task:
        raise _err(f"{path}.format", f"format {fmt!r} reads {fmt} examples, but this set belongs to task {task!r}",
                   f"use format {task} (or move the set under `tasks.{fmt}`)")


def _loader_formats() -> tuple[str, ...]:
    from needlework.data.loaders import FORMATS

    return FORMATS


_FILLED_FIX = {
    "generate": "set the task's `length`, the set's `n`/`seed`; the tokenizer is each model's own",
    "load": "set the task's `length`, the set's `n`/`seed`; the tokenizer is each model's own",
    "knockout": "choose heads with the `heads:` section (rule, k, threshold)",
    "patch": "choose heads with the `heads:` section; patching runs intersection, complement and random",
}


def _check_set(s: SetSpec, path: str, eval_set: bool = False, task: str = "", length: int = 1024,
               base_dir: Path | None = None) -> None:
    if s.kind not in KINDS:
        raise _err(f"{path}.kind", f"{s.kind!r} is not one of {', '.join(KINDS)}", "use real, limited or synthetic")
    sources = [k for k in ("generate", "load", "file") if getattr(s, k) is not None]
    if s.kind == "none":
        if eval_set:
            raise _err(f"{path}.kind", "the evaluation set cannot be `none`", "give it generate:, load: or file:")
        if sources:
            raise _err(path, "kind `none` (the base model, no fine-tuning) takes no data", f"remove `{sources[0]}:`")
        return
    if len(sources) != 1:
        raise _err(path, "needs exactly one data source" + (f" (got {', '.join(sources)})" if sources else ""),
                   "give one of `generate:` (synthetic options), `load:` (format + path of an official file) or `file:` (JSONL)")
    if s.n is not None and s.n < 1:
        raise _err(f"{path}.n", f"must be at least 1 (got {s.n})", "set a positive number of examples")
    if s.generate is not None:
        check_foreign("generate", s.generate, f"{path}.generate")
        hay = s.generate.get("haystack")
        if isinstance(hay, str) and base_dir and not Path(hay).is_absolute() and (base_dir / hay).exists():
            s.generate["haystack"] = str((base_dir / hay).resolve())  # relative to the config file, as file:/load.path
        check_data_values("generate", s.generate, f"{path}.generate", task, length)
    if s.load is not None:
        for k in ("format", "path"):
            if k not in s.load:
                raise _err(f"{path}.load.{k}", "is missing", "load: needs `format` (mdqa|musique|summhay|hf:NAME) and `path`")
        check_foreign("load", s.load, f"{path}.load")
        check_data_values("load", s.load, f"{path}.load", task, length)
    if s.kind == "real" and s.generate is not None:
        raise _err(f"{path}.kind", "a `real` set cannot be generated", "use kind synthetic (or limited), or load: real data")


def validate(cfg: StudyConfig, base_dir: Path | None = None) -> StudyConfig:
    """Cross-field checks; resolves data file paths against the config file's folder."""
    if cfg.heads.rule not in HEAD_RULES:
        raise _err("heads.rule", f"{cfg.heads.rule!r} is not one of {', '.join(HEAD_RULES)}", "use top_k or threshold")
    if cfg.heads.k < 1:
        raise _err("heads.k", f"must be at least 1 (got {cfg.heads.k})", "set the number of top heads")
    for sz in ("n_train", "n_eval"):
        if getattr(cfg.sizes, sz) < 1:
            raise _err(f"sizes.{sz}", f"must be at least 1 (got {getattr(cfg.sizes, sz)})", "set a positive size")
    for tname, t in cfg.tasks.items():
        p = f"tasks.{tname}"
        if t.reference not in t.train_sets:
            raise _err(f"{p}.reference", f"{t.reference!r} names no training set", f"use one of {', '.join(t.train_sets)}")
        if t.train_sets[t.reference].kind == "none":
            raise _err(f"{p}.reference", "the reference must be a fine-tuned training set, not kind none", "pick another set")
        if t.length < 16:
            raise _err(f"{p}.length", f"{t.length} tokens is too short", "use at least a few hundred tokens")
        _check_set(t.eval_set, f"{p}.eval_set", eval_set=True, task=tname, length=t.length, base_dir=base_dir)
        for sname, s in t.train_sets.items():
            if not sname.replace("_", "").replace("-", "").isalnum():
                raise _err(f"{p}.train_sets.{sname}", "set names may only hold letters, digits, - and _", "rename it")
            _check_set(s, f"{p}.train_sets.{sname}", task=tname, length=t.length, base_dir=base_dir)
        for s in [t.eval_set, *t.train_sets.values()]:
            for src in ("file",):
                if getattr(s, src) and base_dir and not Path(s.file).is_absolute():
                    s.file = str((base_dir / s.file).resolve()) if (base_dir / s.file).exists() else s.file
            if s.load and base_dir and not Path(str(s.load["path"])).is_absolute() and (base_dir / str(s.load["path"])).exists():
                s.load["path"] = str((base_dir / str(s.load["path"])).resolve())
    for name in ("train", "eval", "score"):
        check_foreign(name, getattr(cfg, name), name)
    for tname, t in cfg.tasks.items():
        if t.score:
            check_foreign("score", {**cfg.score, **t.score}, f"tasks.{tname}.score")
    for name in ("knockout", "patch"):
        sec = getattr(cfg, name)
        check_foreign(name, sec, name, own=STUDY_OWN[name])
        sets = sec.get("sets" if name == "knockout" else "targets", "all")
        if isinstance(sets, list):
            for tname, t in cfg.tasks.items():
                missing = [s for s in sets if s not in t.train_sets and s != "reference"]
                if missing:
                    raise _err(f"{name}.{'sets' if name == 'knockout' else 'targets'}",
                               f"{', '.join(map(repr, missing))} name(s) no training set of task {tname}",
                               f"use \"all\", \"reference\" or names from {', '.join(t.train_sets)}")
        elif sets not in ("all", "reference", "none"):
            raise _err(f"{name}.{'sets' if name == 'knockout' else 'targets'}", f"{sets!r} is not all, reference, none or a list",
                       "write all, reference, none, or a list of training set names")
    n = cfg.scale_out.processes
    if (isinstance(n, str) and n != "auto") or (isinstance(n, int) and n < 1):
        raise _err("scale_out.processes", f"{n!r} is neither auto nor a positive number", "write auto (every visible GPU) or a count")
    for i, kind in enumerate(cfg.patch.get("sets", [])):
        if not isinstance(kind, str) or (kind not in PATCH_KINDS and "-" not in kind):
            raise _err(f"patch.sets[{i}]", f"{kind!r} is not a head-set kind", f"use {', '.join(PATCH_KINDS)} or a list L-H,...")
    return cfg


def from_dict(data: Any, base_dir: Path | None = None) -> StudyConfig:
    """Build and validate a StudyConfig from a parsed YAML mapping."""
    if not isinstance(data, dict):
        raise NeedleworkError("the study config must be a mapping of keys", "start from configs/demo.yaml")
    cfg = _build(StudyConfig, data, "")
    return validate(cfg, base_dir)


def load_config(path: str | os.PathLike) -> StudyConfig:
    """Read and validate a study YAML file.

    Raises:
        NeedleworkError: missing file, YAML syntax error (with line), or a bad key (named by its path).
    """
    import yaml

    p = Path(path)
    if not p.exists():
        raise NeedleworkError(f"study config {p} not found", "check the path; examples are in configs/")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise NeedleworkError(f"{p}: YAML syntax error{where}: {getattr(e, 'problem', e)}", "fix the YAML syntax") from None
    try:
        return from_dict(data, base_dir=p.parent)
    except NeedleworkError as e:
        raise NeedleworkError(f"{p}: {e.problem}", e.fix) from None


def dump_config(cfg: StudyConfig) -> str:
    """The resolved config as YAML (saved with the outputs)."""
    import yaml

    return yaml.safe_dump(cfg.to_dict(), sort_keys=False, allow_unicode=True)
