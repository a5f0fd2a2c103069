"""The study config: one YAML file names models, tasks, training sets, sizes and every stage's
options. Dataclass fields are the YAML keys; defaults live here or on the stage's own config.

The stage sections are typed by the stages' own config dataclasses (`train: TrainConfig`,
`eval: EvalConfig`, `score: ScoreConfig`; `knockout:` and `patch:` by `KnockoutSection` and
`PatchSection`, which add the study's keys to `KnockoutConfig` and `PatchConfig`), and everything is
built by one builder (`needlework.schema.build`, also behind every stage's `from_dict`). Validation
happens on load and names the key path (`tasks.mdqa.train_sets.ll.generate.concept`) and the fix:
unknown keys fail and name themselves (with the closest valid key), wrong types name the expected
type, and the values of a set's `generate:`/`load:` options go through the generator's and
loader's own checks (`data.generate.check_config`, `data.loaders.check_options`), so that a bad one
fails here, on load and in `--dry-run`, not when its data stage runs after other sets have trained.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from needlework.data.generate import GenerateConfig, check_config
from needlework.data.loaders import FORMATS, LoadConfig, check_options
from needlework.errors import NeedleworkError
from needlework.evaluate.config import EvalConfig
from needlework.heads.config import ScoreConfig
from needlework.interventions.config import KnockoutConfig, PatchConfig
from needlework.schema import build, key_error
from needlework.train.config import TrainConfig

__all__ = ["EarlySpec", "KnockoutSection", "PatchSection", "StudyConfig", "dump_config", "from_dict", "load_config", "stage_config"]

KINDS = ("synthetic", "limited", "real", "none")  # none: the model as it is, without fine-tuning
HEAD_RULES = ("top_k", "threshold")
PATCH_KINDS = ("intersection", "complement", "random", "all")  # head sets of SPEC §2 (and every head)
# Keys renamed to the code's names: old path -> new path (an old key fails and names the new one).
RENAMED = {"heads.k": "heads.top", "knockout.sets": "knockout.train_sets", "patch.sets": "patch.kinds"}
_HEADS_FIX = "choose heads with the `heads:` section (rule, top, threshold, criterion)"
_EVAL_FIX = "set evaluation options in the study-wide `eval:` section, the number of examples with `limit`"


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
    # GenerateConfig fields but task, n, length, tokenizer and seed, which the study fills in
    generate: dict[str, Any] | None = None
    load: dict[str, Any] | None = None  # format, path, and LoadConfig fields (limited, depth, ...)
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
    """The head-set rule of SPEC §2: the top heads, or every head with mean score above a threshold.
    Its keys are KnockoutConfig's and PatchConfig's (`top`, `threshold`, `criterion`), which the
    study fills. `criterion`: when the score stage scores several criteria (`score.criteria`), the
    one whose head sets the study compares as its main row, knocks out and patches (None: the
    score's primary `score`); the others are compared and analysed beside it."""

    rule: str = "top_k"  # top_k | threshold
    top: int = 10
    threshold: float = 0.1
    criterion: str | None = None  # the main criterion among the score's (None: `score.score` of each task)

    def selection(self) -> dict[str, Any]:
        """The `top`/`threshold` fields of a knockout or patch config for this rule."""
        return {"top": self.top, "threshold": None} if self.rule == "top_k" else {"top": None, "threshold": self.threshold}


@dataclass
class AnalysisSpec:
    n_boot: int = 1000
    alpha: float = 0.05
    seed: int = 0
    include_reference: bool = False  # put the reference set itself into the correlations


@dataclass
class EarlySpec:
    """`early:` predict each training set's final score from its head recall early in training.

    At each of `fractions` of the training steps the training run saves its weights (a snapshot)
    and scores its heads in teacher mode on the first `probe_n` evaluation examples, on the model in
    memory (at fraction 1 the final model's score stage stands in); the probe stage compares them
    with the reference model's final heads (the study's head rule); the
    analysis predicts each set's final score from its recall at each fraction (leave-one-out across
    sets) and names the earliest fraction whose predicted ranking agrees with the final one.

    stop_early: train the other sets in segments ending at each fraction from `min_fraction` on
        (below 1); after each, a gate stops every set whose recall interval's upper bound lies more
        than `margin` below the lower bound of the best set's interval (the reference is never
        stopped, nor compared). A stopped set's model is its snapshot at the stop.
    """

    fractions: list[float] = field(default_factory=list)  # fractions of training at which heads are probed (empty: off)
    probe_n: int | None = None  # evaluation examples scored per probe: the first N (None: all)
    agreement: float = 0.8  # the earliest fraction whose predicted scores rank the sets with Spearman >= this is reported
    cost_budget: float = 0.1  # the report flags monitoring (snapshots + probes) that takes more of the training time
    stop_early: bool = False  # stop training sets whose recall is clearly below the best set's (see above)
    min_fraction: float = 0.25  # stop_early: no gate before this fraction of training
    margin: float = 0.0  # stop_early: how far below the best set's lower bound the upper bound must lie

    def gates(self) -> list[float]:
        """The fractions after which stop_early gates decide (none when it is off)."""
        return sorted(f for f in self.fractions if self.min_fraction <= f < 1) if self.stop_early else []


@dataclass
class ScaleOut:
    """How the train and evaluate stages spread over processes (one per GPU). Not part of any
    stage's cache key: the processes share one global batch, so results do not depend on them."""

    processes: int | str = "auto"  # auto: every visible GPU (1 without CUDA); N: N processes (gloo on CPU)


@dataclass
class KnockoutSection(KnockoutConfig):
    """`knockout:`: KnockoutConfig's options plus which models the study knocks out. The head
    set (`top`, `threshold`, `heads`) comes from `heads:`, the evaluation options from `eval:`."""

    FILLED: ClassVar[dict[str, str]] = {
        "top": _HEADS_FIX,
        "threshold": _HEADS_FIX,
        "heads": _HEADS_FIX,
        "criterion": _HEADS_FIX,
        "eval": _EVAL_FIX,
    }
    enabled: bool = True
    train_sets: str | list[str] = "reference"  # training sets whose models are knocked out: reference | all | none | names
    limit: int | None = None  # evaluation examples (default: all of the evaluation set)


@dataclass
class PatchSection(PatchConfig):
    """`patch:`: PatchConfig's options plus the target models and the head-set kinds (the
    reference model is the source). The study fills `set` from `kinds`, `top`/`threshold` from
    `heads:` and the evaluation options from `eval:`."""

    FILLED: ClassVar[dict[str, str]] = {
        "set": "list the head-set kinds under `kinds`",
        "top": _HEADS_FIX,
        "threshold": _HEADS_FIX,
        "criterion": _HEADS_FIX,
        "eval": _EVAL_FIX,
    }
    enabled: bool = True
    targets: str | list[str] = "all"  # training sets patched into: all | none | names (never the reference)
    limit: int | None = None  # evaluation examples (default: all of the evaluation set)
    kinds: list[str] = field(default_factory=lambda: ["intersection", "complement", "random"])  # or "L-H,..." lists


@dataclass
class StudyConfig:
    models: dict[str, ModelSpec]
    tasks: dict[str, TaskSpec]
    name: str = "study"
    seed: int = 0
    sizes: Sizes = field(default_factory=Sizes)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    heads: HeadsSpec = field(default_factory=HeadsSpec)
    knockout: KnockoutSection = field(default_factory=KnockoutSection)
    patch: PatchSection = field(default_factory=PatchSection)
    analysis: AnalysisSpec = field(default_factory=AnalysisSpec)
    early: EarlySpec = field(default_factory=EarlySpec)
    scale_out: ScaleOut = field(default_factory=ScaleOut)

    def to_dict(self) -> dict[str, Any]:
        """The resolved config as plain data (what `from_dict` reads back), without filled keys."""
        d = dataclasses.asdict(self)
        d["train"] = self.train.to_dict()
        for name in ("knockout", "patch"):
            d[name] = section_dict(getattr(self, name))
        return d

    def task_score(self, task: str) -> ScoreConfig:
        """The score options of one task: the study-wide `score:` with the task's overrides."""
        over = self.tasks[task].score
        return dataclasses.replace(self.score, **over) if over else self.score

    def task_criteria(self, task: str) -> list[str]:
        """The criteria one task's score stage scores: its primary `score`, then `criteria`."""
        return self.task_score(task).all_criteria()

    def main_criterion(self, task: str) -> str:
        """The criterion whose head sets are the study's main ones for a task (`heads.criterion`,
        else the task's primary score)."""
        return self.heads.criterion or self.task_score(task).score


def section_dict(section: KnockoutSection | PatchSection) -> dict[str, Any]:
    """A knockout/patch section as its YAML keys (the fields the study fills left out)."""
    return {k: v for k, v in dataclasses.asdict(section).items() if k not in section.FILLED}


def stage_config(cls: type, section: Any, **filled: Any) -> Any:
    """The stage's own config from a study section typed by a subclass of it: its fields, with
    the ones the study fills (`filled`) replaced."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{**{k: getattr(section, k) for k in names}, **filled})


# ----------------------------------------------------------------------------------- validation

_err = key_error
# Data-set options the study fills in itself (per task, training set and model), with the fix.
_DATA_FIX = "set the task's `length`, the set's `n`/`seed`; the tokenizer is each model's own"
DATA_FILLED = {"generate": ("task", "n", "length", "tokenizer", "seed"), "load": ("length", "tokenizer", "limit", "seed")}
# Fields of a data section that the study fills in from elsewhere: where the config sets them.
_FILLED_FROM = {"task": "tasks.{task}", "length": "tasks.{task}.length"}


def check_data_values(section: str, opts: dict[str, Any], path: str, task: str, length: int) -> None:
    """Check every key and value of a set's `generate:`/`load:` options as the data stage will use
    them (with the task and length the study fills in): keys and types by the stage's dataclass,
    then the generator's / loader's own value check, so a bad value fails on load with its key path
    instead of when the data stage runs."""
    cls, check = (GenerateConfig, check_config) if section == "generate" else (LoadConfig, check_options)
    refused = dict.fromkeys(DATA_FILLED[section], _DATA_FIX)
    kw = {k: v for k, v in opts.items() if k not in ("format", "path")}
    try:
        build(cls, kw, path, refused=refused)  # keys and types
    except NeedleworkError as e:
        if section == "load" and "unknown key" in e.problem:  # format and path are keys there too
            raise _with_valid_keys(e, ("format", "path")) from None
        raise
    # the values as the data stage passes them (study.stages.data_stage), for the value check
    if isinstance(kw.get("limited"), list):
        kw["limited"] = tuple(kw["limited"])
    if section == "generate":
        args: tuple = (cls(**{**kw, "task": task, "n": 1, "length": length}),)
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
        where = _FILLED_FROM.get(key, f"{path}.{key}" if key else path).format(task=task)
        fix = e.fix or "fix the value"
        if key == "task":
            fix += f" (a generated set's task is its task's name under `tasks:`, here {task!r})"
        raise _err(where, e.problem, fix) from None
    if section == "load" and fmt in FORMATS and fmt != task:
        raise _err(
            f"{path}.format",
            f"format {fmt!r} reads {fmt} examples, but this set belongs to task {task!r}",
            f"use format {task} (or move the set under `tasks.{fmt}`)",
        )


def _with_valid_keys(e: NeedleworkError, extra: tuple[str, ...]) -> NeedleworkError:
    """An unknown-key error whose list of valid keys also names `extra` (keys outside the dataclass)."""
    fix = (e.fix or "").replace("valid keys there: ", f"valid keys there: {', '.join(extra)}, ")
    return NeedleworkError(e.problem, fix)


def _check_set(s: SetSpec, path: str, eval_set: bool = False, task: str = "", length: int = 1024, base_dir: Path | None = None) -> None:
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
        raise _err(
            path,
            "needs exactly one data source" + (f" (got {', '.join(sources)})" if sources else ""),
            "give one of `generate:` (synthetic options), `load:` (format + path of an official file) or `file:` (JSONL)",
        )
    if s.n is not None and s.n < 1:
        raise _err(f"{path}.n", f"must be at least 1 (got {s.n})", "set a positive number of examples")
    if s.generate is not None:
        hay = s.generate.get("haystack")
        if isinstance(hay, str) and base_dir and not Path(hay).is_absolute() and (base_dir / hay).exists():
            s.generate["haystack"] = str((base_dir / hay).resolve())  # relative to the config file, as file:/load.path
        check_data_values("generate", s.generate, f"{path}.generate", task, length)
    if s.load is not None:
        for k in ("format", "path"):
            if k not in s.load:
                raise _err(f"{path}.load.{k}", "is missing", "load: needs `format` (mdqa|musique|summhay|hf:NAME) and `path`")
        check_data_values("load", s.load, f"{path}.load", task, length)
    if s.kind == "real" and s.generate is not None:
        raise _err(f"{path}.kind", "a `real` set cannot be generated", "use kind synthetic (or limited), or load: real data")


def _resolve_paths(s: SetSpec, base_dir: Path | None) -> None:
    """Data files named relative to the config file's folder (when they exist there)."""
    if base_dir is None:
        return
    if s.file and not Path(s.file).is_absolute() and (base_dir / s.file).exists():
        s.file = str((base_dir / s.file).resolve())
    if s.load and not Path(str(s.load["path"])).is_absolute() and (base_dir / str(s.load["path"])).exists():
        s.load["path"] = str((base_dir / str(s.load["path"])).resolve())


def _check_task(cfg: StudyConfig, tname: str, t: TaskSpec, base_dir: Path | None) -> None:
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
        _resolve_paths(s, base_dir)
    if t.score:  # the task's overrides, checked as the ScoreConfig they make
        _check_score(build(ScoreConfig, {**dataclasses.asdict(cfg.score), **t.score}, f"{p}.score"), f"{p}.score")


def _check_score(score: ScoreConfig, path: str) -> None:
    try:
        score.check()
    except NeedleworkError as e:
        raise NeedleworkError(f"config section `{path}`: {e.problem}", e.fix) from None


def _check_criterion(cfg: StudyConfig) -> None:
    """`heads.criterion` must be scored for every task (its primary `score` or one of `criteria`)."""
    c = cfg.heads.criterion
    if c is None:
        return
    for tname in cfg.tasks:
        held = cfg.task_criteria(tname)
        if c not in held:
            where = "`score.criteria`" + (f" (or `tasks.{tname}.score`)" if cfg.tasks[tname].score else "")
            raise _err(
                "heads.criterion",
                f"{c!r} is not scored for task {tname} (its score stage scores {', '.join(held)})",
                f"add {c} to {where}, pick one of {', '.join(held)}, or leave heads.criterion unset (the primary score)",
            )


def _check_selection(cfg: StudyConfig, name: str, key: str) -> None:
    """`knockout.train_sets` / `patch.targets`: all, reference, none, or training set names."""
    sets = getattr(getattr(cfg, name), key)
    if isinstance(sets, list):
        for tname, t in cfg.tasks.items():
            missing = [s for s in sets if s not in t.train_sets and s != "reference"]
            if missing:
                raise _err(
                    f"{name}.{key}",
                    f"{', '.join(map(repr, missing))} name(s) no training set of task {tname}",
                    f'use "all", "reference" or names from {", ".join(t.train_sets)}',
                )
    elif sets not in ("all", "reference", "none"):
        raise _err(
            f"{name}.{key}",
            f"{sets!r} is not all, reference, none or a list",
            "write all, reference, none, or a list of training set names",
        )


def validate(cfg: StudyConfig, base_dir: Path | None = None) -> StudyConfig:
    """Cross-field and value checks; resolves data file paths against the config file's folder."""
    if cfg.heads.rule not in HEAD_RULES:
        raise _err("heads.rule", f"{cfg.heads.rule!r} is not one of {', '.join(HEAD_RULES)}", "use top_k or threshold")
    if cfg.heads.top < 1:
        raise _err("heads.top", f"must be at least 1 (got {cfg.heads.top})", "set the number of top heads")
    for sz in ("n_train", "n_eval"):
        if getattr(cfg.sizes, sz) < 1:
            raise _err(f"sizes.{sz}", f"must be at least 1 (got {getattr(cfg.sizes, sz)})", "set a positive size")
    _check_score(cfg.score, "score")
    for tname, t in cfg.tasks.items():
        _check_task(cfg, tname, t, base_dir)
    _check_criterion(cfg)
    _check_selection(cfg, "knockout", "train_sets")
    _check_selection(cfg, "patch", "targets")
    n = cfg.scale_out.processes
    if (isinstance(n, str) and n != "auto") or (isinstance(n, int) and n < 1):
        raise _err("scale_out.processes", f"{n!r} is neither auto nor a positive number", "write auto (every visible GPU) or a count")
    _check_early(cfg.early)
    for i, kind in enumerate(cfg.patch.kinds):
        if kind not in PATCH_KINDS and "-" not in kind:
            raise _err(f"patch.kinds[{i}]", f"{kind!r} is not a head-set kind", f"use {', '.join(PATCH_KINDS)} or a list L-H,...")
    return cfg


def _check_early(e: EarlySpec) -> None:
    for i, f in enumerate(e.fractions):
        if not 0 < f <= 1:
            raise _err(f"early.fractions[{i}]", f"{f} is not a fraction of training in (0, 1]", "write fractions such as 0.1, 0.25, 0.5, 1")
        if f in e.fractions[:i]:
            raise _err(f"early.fractions[{i}]", f"{f} is listed twice", "list each fraction once")
    if e.probe_n is not None and e.probe_n < 1:
        raise _err("early.probe_n", f"must be at least 1 (got {e.probe_n})", "set a number of examples, or null for all")
    if not -1 <= e.agreement <= 1:
        raise _err("early.agreement", f"{e.agreement} is not a Spearman correlation", "use a value in [-1, 1], e.g. 0.8")
    if not 0 < e.min_fraction < 1:
        raise _err("early.min_fraction", f"{e.min_fraction} is not a fraction in (0, 1)", "use e.g. 0.25")
    if e.margin < 0:
        raise _err("early.margin", f"must not be negative (got {e.margin})", "use 0 (intervals apart) or a positive recall margin")
    if e.cost_budget <= 0:
        raise _err("early.cost_budget", f"must be positive (got {e.cost_budget})", "use a share of the training time, e.g. 0.1")
    if e.stop_early and not e.gates():
        raise _err(
            "early.stop_early",
            f"no fraction in early.fractions {e.fractions} lies in [min_fraction {e.min_fraction}, 1): no gate could stop a set",
            "add such a fraction (e.g. 0.25), lower early.min_fraction, or turn stop_early off",
        )


def _check_renamed(data: dict[str, Any]) -> None:
    """An old key name fails and names its new one."""
    for old, new in RENAMED.items():
        section, key = old.split(".")
        if isinstance(data.get(section), dict) and key in data[section]:
            raise NeedleworkError(f"config key `{old}` was renamed to `{new}`", f"write `{new.split('.')[1]}:` under `{section}:`")


def from_dict(data: Any, base_dir: Path | None = None) -> StudyConfig:
    """Build and validate a StudyConfig from a parsed YAML mapping."""
    if not isinstance(data, dict):
        raise NeedleworkError("the study config must be a mapping of keys", "start from configs/demo.yaml")
    _check_renamed(data)
    refused = {"knockout": KnockoutSection.FILLED, "patch": PatchSection.FILLED}
    for name, filled in refused.items():  # keys the study fills: refused before building the section
        if isinstance(data.get(name), dict):
            for k in data[name]:
                if k in filled:
                    raise _err(f"{name}.{k}", "is set by the study itself", filled[k])
    cfg = build(StudyConfig, data, "")
    return validate(cfg, base_dir)


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """`KEY.PATH=VALUE` settings over a config mapping (torchtune's command-line overrides): VALUE
    is read as YAML (`100`, `[0.25, 0.5, 1.0]`, `true`, `null`, `bfloat16`), missing sections are
    made, and the caller validates the result whole, as any config (an unknown key named by its path)."""
    import copy

    import yaml

    out = copy.deepcopy(data) if data else {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        parts = key.strip().split(".")
        if not sep or not all(parts):
            raise NeedleworkError(
                f"override {item!r} is not KEY.PATH=VALUE", "write e.g. sizes.n_train=100 or early.fractions=[0.25,0.5,1.0]"
            )
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as e:
            raise NeedleworkError(
                f"override {item!r}: its value is not YAML ({e})", "quote strings with spaces, write lists as [a, b]"
            ) from None
        node = out
        for i, k in enumerate(parts[:-1]):
            if node.get(k) is None:
                node[k] = {}
            if not isinstance(node[k], dict):
                raise NeedleworkError(
                    f"override {item!r}: {'.'.join(parts[: i + 1])} is a value, not a section", "set that key itself, or a key of a section"
                )
            node = node[k]
        node[parts[-1]] = value
    return out


def load_config(path: str | os.PathLike, overrides: Sequence[str] = ()) -> StudyConfig:
    """Read and validate a study YAML file, with `overrides` (`apply_overrides`) applied first.

    Raises:
        NeedleworkError: missing file, YAML syntax error (with line), a malformed override, or a
            bad key (named by its path).
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
    data = apply_overrides(data, overrides) if overrides else data
    try:
        return from_dict(data, base_dir=p.parent)
    except NeedleworkError as e:
        given = f" (with {' '.join(overrides)})" if overrides else ""
        raise NeedleworkError(f"{p}{given}: {e.problem}", e.fix) from None


def dump_config(cfg: StudyConfig) -> str:
    """The resolved config as YAML (saved with the outputs)."""
    import yaml

    return yaml.safe_dump(cfg.to_dict(), sort_keys=False, allow_unicode=True)
