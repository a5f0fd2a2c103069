"""The study's plan vocabulary: a `Node` (one stage of one model, task and training set) and the
`StageContext` a stage function gets. Its own module so that the engine, the stage functions and
the process launcher share it without importing each other in a circle."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from needlework.study.config import StudyConfig

__all__ = ["Node", "StageContext", "StageFn"]


@dataclass
class Node:
    """One stage of one (model, task, training set); `deps` maps an input name to its node."""

    stage: str
    label: str  # model/task/set, for status lines and the manifest
    slice: dict[str, Any]  # the config that determines this node's output
    deps: dict[str, Node] = field(default_factory=dict)
    model: str = ""
    task: str = ""
    set: str = ""
    key: str | None = None  # set once every dep is done
    status: str = "pending"  # pending | cached | done | skipped | blocked | failed
    output_hash: str | None = None
    seconds: float = 0.0


@dataclass
class StageContext:
    """What a stage function gets: its node, the study config, its work dir and its inputs' dirs."""

    node: Node
    cfg: StudyConfig
    out: Path  # the work dir to write into
    inputs: dict[str, Path]  # dep name -> that dep's done dir
    study_dir: Path


StageFn = Callable[[StageContext], None]
