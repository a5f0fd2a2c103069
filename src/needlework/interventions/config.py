"""The knockout and patch stages' options, kept apart from the intervention code so that the CLI and
the study config read them without importing torch."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from needlework.evaluate.config import EvalConfig, config_with_eval


@dataclass
class KnockoutConfig:
    """Knockout options; the fields are the YAML keys of a study config's `knockout:` section."""

    top: int | None = 10  # ablate the top-k heads by mean score ...
    threshold: float | None = None  # ... or every head scoring above this (overrides top)
    heads: str | None = None  # ... or an explicit list "L-H,..." (overrides both)
    criterion: str | None = None  # whose scores rank the heads, in a folder scored with several criteria (default: its `score`)
    mode: str = "zero"  # zero | mean | uniform
    random_seeds: int = 5  # layer-matched random control sets, seeds 0..N-1
    mean_reference: str | None = None  # JSONL of reference records for `mean` (default: the eval records)
    eval: EvalConfig = field(default_factory=lambda: EvalConfig(logprob=False))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> KnockoutConfig:
        return config_with_eval(cls, d, "knockout")


@dataclass
class PatchConfig:
    """Patching options; the fields are the YAML keys of a study config's `patch:` section."""

    set: str = "intersection"  # intersection | complement | random | all | "L-H,..."
    top: int | None = 10  # retrieval heads of each model = its top-k ...
    threshold: float | None = None  # ... or its heads above this score (overrides top)
    criterion: str | None = None  # whose scores rank the heads, in folders scored with several criteria (default: their `score`)
    random_seeds: int = 3  # random sets per controlled set, seeds 0..N-1
    # which set the random sets match in size and layers: each (a control per intersection /
    # complement, `random_<kind>_<seed>`) | complement | intersection (one control, `random_<seed>`)
    random_like: str = "each"
    eval: EvalConfig = field(default_factory=lambda: EvalConfig(logprob=False))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PatchConfig:
        return config_with_eval(cls, d, "patch")
