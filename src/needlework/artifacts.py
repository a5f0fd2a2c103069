"""Declared artifacts: what one stage hands the next, each with one writer and one reader.

Every result folder needlework writes is one of the classes below. An artifact knows its files,
their columns or keys (checked on write and on read), and the model it came from: its header
(`meta`, `summary` or `result`) carries `model_config` (the ModelConfig as loaded) and `shape`
(layers, query heads, kv heads, head dim) wherever a model produced it. `write(dir)` removes any
old manifest first, writes every file atomically, and writes `artifact.json` (kind, schema version,
files, model config, shape) LAST, so a folder without a manifest is unfinished and `read` refuses it.

This module is the only place a result file name is spelled: stages, the study and the report
import the classes (or the few folder-level names at the bottom), never a string.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from needlework.errors import NeedleworkError
from needlework.io import atomic_path, write_json, write_parquet, write_text

__all__ = [
    "MANIFEST",
    "VERSION",
    "Analysis",
    "Artifact",
    "Comparison",
    "DataSet",
    "EvalResult",
    "File",
    "Gate",
    "HeadScores",
    "KnockoutResult",
    "PatchResult",
    "Probe",
    "TrainRun",
    "STUDY_INDEX",
    "STAGE_DONE",
    "STAGE_INFO",
    "STUDY_RESULTS",
]

MANIFEST = "artifact.json"
VERSION = 1

# Folder-level names of a study (written by study.engine, read by the report and the study CLI).
STUDY_INDEX = "study.json"
STAGES = "stages"  # a stage's results: <study>/stages/<stage>/<key>
STAGE_DONE = "done.json"
STAGE_INFO = "stage.json"
# The report's study-level table (one row per model x task x training set), beside its page.
STUDY_RESULTS = "results.csv"


@dataclass(frozen=True)
class File:
    """One file of an artifact: its name, how it is stored, and what it must contain.

    codec: `table` (DataFrame as Parquet), `rows` (DataFrame as JSON lines, NaN as null), `json`
    (a dict), `records` (needlework Records as JSONL), `text`.
    required: columns (tables, rows) or top-level keys (json) that must be present.
    """

    name: str
    codec: str
    required: tuple[str, ...] = ()
    optional: bool = False


def versions() -> dict[str, str | None]:
    """The versions of needlework and the libraries that decide its numbers (read from the installed
    packages' metadata, without importing them) and the `device` (`device_name`), recorded in
    every manifest (left out of the study's output hashes: the same results on another machine)."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in ("needlework", "torch", "transformers", "peft", "accelerate"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    out["device"] = device_name()
    return out


def device_name() -> str:
    """The hardware that computed the results, recorded in every manifest: the GPU's name (with
    their count) when this process used CUDA, else `cpu: <the CPU's model name>`. torch is not
    imported for this: a process that never imported it computed on the CPU."""
    import platform
    import sys

    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        n, name = torch.cuda.device_count(), torch.cuda.get_device_name(0)
        return f"{n} x {name}" if n > 1 else name
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return f"cpu: {cpu}"


def _finite_or_none(obj: Any) -> Any:
    """NaN/inf become null, so JSON files are strict JSON (readable outside Python)."""
    if isinstance(obj, dict):
        return {k: _finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite_or_none(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _write_rows(path: Path, df) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for row in df.to_dict(orient="records"):
            f.write(json.dumps(_finite_or_none(row), ensure_ascii=False, default=str) + "\n")


def _read_rows(path: Path):
    import pandas as pd

    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return pd.DataFrame(rows)


def in_study(d: Path) -> bool:
    """Whether folder `d` is a stage's result folder of a study (<study>/stages/<stage>/<key>),
    told by the layout alone: the study's index may not be written yet when the first stage ends."""
    return Path(d).absolute().parent.parent.name == STAGES


def path_root(d: Path) -> Path:
    """What paths in an artifact's JSON are written relative to: the study folder the artifact
    lies in, else the folder above it (a command's --out)."""
    d = Path(d).absolute()
    return d.parents[2] if in_study(d) else d.parent


def _relative(obj: Any, root: Path) -> Any:
    """Absolute paths under `root` made relative to it (POSIX form), so that a result moved or
    published with its folder names its inputs; paths elsewhere (a model cache) stay as they are."""
    if isinstance(obj, dict):
        return {k: _relative(v, root) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_relative(v, root) for v in obj]
    if isinstance(obj, str) and os.path.isabs(obj):
        try:
            return Path(obj).relative_to(root).as_posix()
        except ValueError:
            return obj
    return obj


def _encode(path: Path, codec: str, value: Any) -> None:
    if codec == "table":
        write_parquet(path, value)
    elif codec == "rows":
        _write_rows(path, value)
    elif codec == "json":
        write_json(path, _relative(_finite_or_none(value), path_root(path.parent)))
    elif codec == "records":
        from needlework.data.records import write_jsonl

        write_jsonl(path, value)
    else:
        write_text(path, value)


def _decode(path: Path, codec: str) -> Any:
    if codec == "table":
        import pandas as pd

        return pd.read_parquet(path)
    if codec == "rows":
        return _read_rows(path)
    if codec == "json":
        return json.loads(path.read_text(encoding="utf-8"))
    if codec == "records":
        from needlework.data.records import read_jsonl

        return read_jsonl(path)
    return path.read_text(encoding="utf-8")


def _missing(value: Any, f: File) -> list[str]:
    if not f.required:
        return []
    have = set(value.columns) if hasattr(value, "columns") else set(value) if isinstance(value, dict) else set()
    if hasattr(value, "columns") and len(value) == 0:
        return []  # an empty table may lack columns (nothing was produced)
    return [k for k in f.required if k not in have]


@dataclass
class Artifact:
    """Base of every artifact: subclasses declare KIND, FILES (field -> File) and HEADER (the dict
    field that carries `model_config` and `shape`)."""

    KIND: ClassVar[str] = ""
    FILES: ClassVar[dict[str, File]] = {}
    HEADER: ClassVar[str | None] = None

    path: Path | None = field(default=None, init=False, repr=False, compare=False)

    # ---------------------------------------------------------------- what it carries
    @property
    def header(self) -> dict:
        return (getattr(self, self.HEADER) or {}) if self.HEADER else {}

    @property
    def model_config(self) -> dict | None:
        return self.header.get("model_config")

    @property
    def shape(self) -> dict | None:
        return self.header.get("shape")

    def file(self, name: str) -> Path:
        """The path of one of this artifact's files (after write or read)."""
        if self.path is None:
            raise NeedleworkError(f"this {self.KIND} artifact has not been written or read", "call write(dir) or read(dir) first")
        return self.path / self.FILES[name].name

    # ---------------------------------------------------------------- checks
    def check(self, where: str = "") -> None:
        """Every non-optional file present with its required columns/keys."""
        for name, f in self.FILES.items():
            value = getattr(self, name)
            if value is None:
                if not f.optional:
                    raise NeedleworkError(f"{self.KIND} artifact{where}: {f.name} is missing", "rerun the stage that writes it")
                continue
            missing = _missing(value, f)
            if missing:
                raise NeedleworkError(
                    f"{self.KIND} artifact{where}: {f.name} lacks {', '.join(missing)}",
                    "it was written by another needlework version or by hand; rerun the stage that writes it",
                )

    # ---------------------------------------------------------------- io
    def write(self, directory: str | os.PathLike) -> Path:
        """Write every file atomically, then the manifest; returns the folder."""
        d = Path(directory)
        self.check(f" for {d}")
        d.mkdir(parents=True, exist_ok=True)
        (d / MANIFEST).unlink(missing_ok=True)  # a crash below leaves the folder visibly unfinished
        written = []
        for name, f in self.FILES.items():
            value = getattr(self, name)
            if value is None:
                (d / f.name).unlink(missing_ok=True)  # never leave an old run's file beside new ones
                continue
            _encode(d / f.name, f.codec, value)
            written.append(f.name)
        where = "the study folder" if in_study(d) else "the folder above this one"
        write_json(
            d / MANIFEST,
            {
                "kind": self.KIND,
                "version": VERSION,
                "files": written,
                "model_config": _relative(self.model_config, path_root(d)),
                "shape": self.shape,
                "versions": versions(),
                "paths": f"relative to {where}",
            },
        )
        self.path = d
        return d

    @classmethod
    def exists(cls, directory: str | os.PathLike) -> bool:
        """A finished artifact of this kind is in `directory`."""
        p = Path(directory) / MANIFEST
        if not p.exists():
            return False
        try:
            return json.loads(p.read_text()).get("kind") == cls.KIND
        except ValueError:
            return False

    @classmethod
    def read(cls, directory: str | os.PathLike):
        """Read and check the artifact in `directory`.

        Raises:
            NeedleworkError: no finished artifact of this kind there, a newer schema, a file
                missing or lacking a column/key.
        """
        d = Path(directory)
        p = d / MANIFEST
        if not p.exists():
            raise NeedleworkError(
                f"{d} holds no finished {cls.KIND} result (no {MANIFEST})",
                "point at a folder a needlework stage finished writing, or rerun that stage",
            )
        man = json.loads(p.read_text())
        if man.get("kind") != cls.KIND:
            raise NeedleworkError(f"{d} holds a {man.get('kind')!r} result, not {cls.KIND!r}", f"point at a {cls.KIND} folder")
        if int(man.get("version", 0)) > VERSION:
            raise NeedleworkError(
                f"{d} was written with artifact schema {man['version']}; this needlework reads up to {VERSION}", "upgrade needlework"
            )
        values = {}
        for name, f in cls.FILES.items():
            fp = d / f.name
            values[name] = _decode(fp, f.codec) if f.name in man.get("files", []) and fp.exists() else None
        art = cls(**values)
        art.check(f" in {d}")
        art.path = d
        return art


# ------------------------------------------------------------------------------------ data and training


@dataclass
class DataSet(Artifact):
    """A data set as a study's data stage made it: the records and what they are."""

    KIND: ClassVar[str] = "data"
    FILES: ClassVar[dict[str, File]] = {
        "records": File("records.jsonl", "records"),
        "info": File("data.json", "json", ("n", "kind", "task", "length")),
    }
    records: list = field(default_factory=list)
    info: dict = field(default_factory=dict)


@dataclass
class TrainRun:
    """A `needlework train` output folder. Training writes it step by step (log lines, checkpoints)
    and resumes from it, so it is not written in one piece; these are its names and its reader."""

    ADAPTER: ClassVar[str] = "adapter"
    MODEL: ClassVar[str] = "model"
    LOG: ClassVar[str] = "log.jsonl"
    CONFIG: ClassVar[str] = "train_config.json"
    CHECKPOINTS: ClassVar[str] = "checkpoints"
    TRACKING: ClassVar[str] = "tracking"  # `report_to` trackers' files (TensorBoard event files)
    # weights saved at fractions of the training steps (TrainConfig.snapshots): SNAPSHOTS/<fraction>/
    # holds what ADAPTER (or MODEL) holds at the end, plus SNAPSHOT_INFO, written last
    SNAPSHOTS: ClassVar[str] = "snapshots"
    SNAPSHOT_INFO: ClassVar[str] = "snapshot.json"
    # a study's probe of the snapshot, scored during training on the model in memory: HeadScores
    SNAPSHOT_HEADS: ClassVar[str] = "heads"
    STOPPED: ClassVar[str] = "stopped.json"  # a study's stop_early gate stopped this run (fraction, step)

    path: Path

    @property
    def adapter(self) -> Path | None:
        p = self.path / self.ADAPTER
        return p if p.exists() else None

    @property
    def model(self) -> Path | None:
        p = self.path / self.MODEL
        return p if p.exists() else None

    def log(self) -> list[dict]:
        """The training log (one dict per logged step; empty when there is none)."""
        p = self.path / self.LOG
        return [json.loads(line) for line in p.read_text().splitlines() if line.strip()] if p.exists() else []

    @staticmethod
    def snapshot_name(fraction: float) -> str:
        """The folder name of a snapshot: the fraction as written (`0.25`, `1`)."""
        return f"{float(fraction):g}"

    def snapshot_dir(self, fraction: float) -> Path:
        return self.path / self.SNAPSHOTS / self.snapshot_name(fraction)

    def snapshots(self) -> dict[float, Path]:
        """Finished snapshots (with their SNAPSHOT_INFO, not a hidden temporary folder) by fraction, in order."""
        root = self.path / self.SNAPSHOTS
        found = [p for p in root.iterdir() if not p.name.startswith(".") and (p / self.SNAPSHOT_INFO).exists()] if root.is_dir() else []
        return dict(sorted((float(json.loads((p / self.SNAPSHOT_INFO).read_text())["fraction"]), p) for p in found))

    def snapshot_info(self, fraction: float) -> dict:
        """A snapshot's `fraction`, `step`, `total_steps` and `save_seconds`."""
        return json.loads((self.snapshot_dir(fraction) / self.SNAPSHOT_INFO).read_text())

    def stopped(self) -> dict | None:
        """`{"fraction", "step"}` when a stop_early gate stopped this run, else None."""
        p = self.path / self.STOPPED
        return json.loads(p.read_text()) if p.exists() else None

    def seconds(self) -> dict[str, float]:
        """Measured time from the log: `train` (the loop, snapshot saving excluded, over resumes)
        and `snapshots` (saving them)."""
        rows = self.log()
        train = [r["train_seconds"] for r in rows if "train_seconds" in r]
        return {"train": float(train[-1]) if train else 0.0, "snapshots": float(sum(r.get("snapshot_seconds", 0.0) for r in rows))}


# ------------------------------------------------------------------------------------ model results


@dataclass
class HeadScores(Artifact):
    """Per-head scores (`heads score`, the study's score stage, `heads import`).

    heads: layer, head, mean, std, n. per_example (optional: imports of means only): example_id,
    layer, head, score, kept, ... meta: shape, model_config (null for imports), options, counts.
    Both tables are the scores of the primary criterion (`options.score`). With `options.criteria`
    the other criteria, scored on the same examples, sit in `criteria_heads` and
    `criteria_per_example` (the same columns plus `criterion`) and their counts in
    `meta["criteria"]`; `criterion(name)` gives any of them as a HeadScores of its own, so that
    comparison, knockout and patching take a head set from any criterion.
    """

    KIND: ClassVar[str] = "head_scores"
    FILES: ClassVar[dict[str, File]] = {
        "heads": File("heads.parquet", "table", ("layer", "head", "mean")),
        "per_example": File("per_example.parquet", "table", ("example_id", "layer", "head", "score"), optional=True),
        "criteria_heads": File("criteria_heads.parquet", "table", ("criterion", "layer", "head", "mean"), optional=True),
        "criteria_per_example": File(
            "criteria_per_example.parquet", "table", ("criterion", "example_id", "layer", "head", "score"), optional=True
        ),
        "meta": File("meta.json", "json", ("shape",)),
    }
    HEADER: ClassVar[str] = "meta"
    heads: Any = None
    per_example: Any = None
    criteria_heads: Any = None
    criteria_per_example: Any = None
    meta: dict = field(default_factory=dict)

    @property
    def primary(self) -> str:
        """The criterion of the main tables (`retrieval` for imports, which record none)."""
        return (self.meta.get("options") or {}).get("score") or "retrieval"

    def criteria(self) -> list[str]:
        """Every criterion held: the primary first, then the others in the order they were asked for."""
        others = list((self.meta.get("options") or {}).get("criteria") or [])
        return [self.primary, *[c for c in others if c != self.primary]]

    def criterion(self, name: str | None) -> HeadScores:
        """The scores of one criterion as a HeadScores of its own (None or the primary: self), its
        `options.score` set to `name` and its counts those of that criterion."""
        if name is None or name == self.primary:
            return self
        if name not in self.criteria() or self.criteria_heads is None:
            where = f" in {self.path}" if self.path else ""
            raise NeedleworkError(
                f"no {name!r} head scores{where} (it holds {', '.join(self.criteria())})",
                f"score heads with `criteria: [{name}]` (heads score --criteria {name}), or pick one of those",
            )

        def pick(t):
            return None if t is None else t[t["criterion"] == name].drop(columns="criterion").reset_index(drop=True)

        meta = {**self.meta, **(self.meta.get("criteria") or {}).get(name, {})}
        meta["options"] = {**(self.meta.get("options") or {}), "score": name, "criteria": []}
        meta.pop("criteria", None)
        out = HeadScores(heads=pick(self.criteria_heads), per_example=pick(self.criteria_per_example), meta=meta)
        out.path = self.path
        return out


@dataclass
class EvalResult(Artifact):
    """Predictions and scores of one model on one data set (`evaluate`)."""

    KIND: ClassVar[str] = "eval"
    FILES: ClassVar[dict[str, File]] = {
        "predictions": File("predictions.jsonl", "rows", ("id", "task", "output")),
        "summary": File("summary.json", "json", ("model_config", "shape", "tasks", "options")),
    }
    HEADER: ClassVar[str] = "summary"
    predictions: Any = None
    summary: dict = field(default_factory=dict)

    def primary(self, task: str) -> dict[str, Any]:
        """The task's primary metric with its interval and n."""
        t = self.summary["tasks"][task]
        m = t["metrics"][t["primary"]]
        return {"metric": t["primary"], "score": m["mean"], "score_lo": m["lo"], "score_hi": m["hi"], "n_eval": t["n"]}


@dataclass
class KnockoutResult(Artifact):
    """Scores with no heads, the chosen heads and random sets knocked out (`knockout`)."""

    KIND: ClassVar[str] = "knockout"
    FILES: ClassVar[dict[str, File]] = {
        "per_example": File("per_example.parquet", "table", ("condition",)),
        "summary": File("summary.json", "json", ("model_config", "shape", "n", "conditions", "random_mean")),
    }
    HEADER: ClassVar[str] = "summary"
    per_example: Any = None
    summary: dict = field(default_factory=dict)
    FIGURE: ClassVar[str] = "knockout.png"  # a view written beside it, not part of the artifact


@dataclass
class PatchResult(Artifact):
    """Source, target, and target patched with the source's head outputs per head set (`patch`).
    `patch.csv` and `patch.md` are views of `summary["table"]` for people."""

    KIND: ClassVar[str] = "patch"
    FILES: ClassVar[dict[str, File]] = {
        "per_example": File("per_example.parquet", "table", ("condition",)),
        "summary": File("summary.json", "json", ("model_config", "source", "target", "shape", "n", "sets", "table")),
        "csv": File("patch.csv", "text", optional=True),
        "markdown": File("patch.md", "text", optional=True),
    }
    HEADER: ClassVar[str] = "summary"
    per_example: Any = None
    summary: dict = field(default_factory=dict)
    csv: str | None = None
    markdown: str | None = None

    def rows(self) -> list[dict]:
        """The table's rows, each with `kind`: the head-set kind (random sets pooled as `random`)."""
        return [{**r, "kind": "random" if r["condition"].startswith("random_") else r["condition"]} for r in self.summary["table"]]


# ------------------------------------------------------------------------------------ study analyses


@dataclass
class Comparison(Artifact):
    """One model's head set against the reference model's (the study's compare stage)."""

    KIND: ClassVar[str] = "comparison"
    FILES: ClassVar[dict[str, File]] = {
        "result": File("compare.json", "json", ("recall", "precision", "jaccard", "cosine", "spearman", "n_heads", "n_above_threshold"))
    }
    HEADER: ClassVar[str] = "result"
    result: dict = field(default_factory=dict)


@dataclass
class Analysis(Artifact):
    """Per model and task: a row per training set and the correlations across sets."""

    KIND: ClassVar[str] = "analysis"
    FILES: ClassVar[dict[str, File]] = {
        "result": File("analysis.json", "json", ("model", "task", "reference", "rows", "recall_vs_score", "cosine_vs_score", "loo")),
    }
    HEADER: ClassVar[str] = "result"
    result: dict = field(default_factory=dict)


# ------------------------------------------------------------------------------------ early prediction


@dataclass
class Probe(Artifact):
    """Heads of one training snapshot against the reference model's final heads (the study's probe
    stage): recall/precision/jaccard/cosine/spearman as {mean, lo, hi}, `fraction`, `step`,
    `n_examples`, the measured `probe_seconds`/`snapshot_seconds`, and where the scores came from
    (`probed`: "training", the model in memory; "final score", the final model's score stage, at
    fraction 1; "snapshot", the saved snapshot scored by the probe stage). A set that a stop_early
    gate stopped before this fraction has no snapshot: `stopped_at` is that fraction and the
    statistics are null."""

    KIND: ClassVar[str] = "probe"
    FILES: ClassVar[dict[str, File]] = {"result": File("probe.json", "json", ("set", "fraction", "stopped_at", "recall", "cosine"))}
    HEADER: ClassVar[str] = "result"
    result: dict = field(default_factory=dict)


@dataclass
class Gate(Artifact):
    """One stop_early decision over a task's training sets at one fraction of training: `rows`
    (set, recall with its interval, decision), `best`, and `stopped` (every set stopped so far,
    with the fraction it stopped at)."""

    KIND: ClassVar[str] = "gate"
    FILES: ClassVar[dict[str, File]] = {"result": File("gate.json", "json", ("fraction", "rows", "best", "stopped"))}
    result: dict = field(default_factory=dict)
