"""Evaluation options, in a module of their own so that the decoding callers (knockout, patching,
the evaluate stage itself) can share them without importing the stage."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from needlework.schema import build, int_or_auto

__all__ = ["EvalConfig", "config_with_eval"]


@dataclass
class EvalConfig:
    """Evaluation options; the fields are the YAML keys of a study config's `eval:` section."""

    batch_size: int | str = 4  # examples per forward pass, or auto: as many as fit on the GPU (models/batching.py)
    max_new_tokens: int | None = None  # None: per task (mdqa/musique/kv 32, summhay 64)
    chat: bool | None = None  # None: use the chat template when the tokenizer has one
    limit: int | None = None  # evaluate only the first `limit` records
    n_boot: int = 1000  # bootstrap resamples for the confidence intervals
    alpha: float = 0.05  # 1 - confidence level
    seed: int = 0  # bootstrap seed (generation is greedy, hence deterministic)
    logprob: bool = True  # also compute the teacher-forced log-probability of the gold answer

    def __post_init__(self) -> None:
        self.batch_size = int_or_auto(self.batch_size, "batch_size")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EvalConfig:
        """Build from a config mapping; an unknown key is an error that names itself."""
        return build(cls, d, what="eval option")


def config_with_eval(cls, d: dict[str, Any], what: str):
    """Build a stage config dataclass whose `eval` field is an EvalConfig, from a mapping (YAML),
    failing on unknown keys and wrong types at both levels (knockout and patching share this)."""
    return build(cls, d, what=f"{what} option")
