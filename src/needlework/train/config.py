"""TrainConfig: every training setting in one dataclass whose fields are the YAML/CLI keys.

Defaults live here and nowhere else; an unknown key fails and names itself. The resolved config is
written to `out/train_config.json` and into every checkpoint.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from needlework.errors import NeedleworkError
from needlework.schema import build, int_or_auto

METHODS = ("lora", "attn", "full")  # LoRA adapters | full fine-tuning of attention weights only | everything
SCHEDULES = ("cosine", "linear", "constant", "constant_with_warmup")
ATTN_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]

TRACKERS = ("none", "tensorboard", "wandb", "trackio")  # accelerate's names


@dataclass
class TrainConfig:
    """Supervised fine-tuning settings (loss on answer tokens only). Fields are YAML keys."""

    # what to train
    method: str = "lora"  # lora | attn (full fine-tuning of `targets` only) | full
    lora_r: int = 16  # LoRA rank
    lora_alpha: int = 32  # LoRA scale numerator (the update is scaled by alpha / r)
    lora_dropout: float = 0.0  # dropout on the LoRA input
    targets: list[str] = field(default_factory=lambda: list(ATTN_TARGETS))  # module names for lora/attn (comma-separated)
    # optimisation
    lr: float = 2e-4  # peak learning rate
    weight_decay: float = 0.0  # AdamW weight decay
    betas: tuple[float, float] = (0.9, 0.999)  # AdamW betas (YAML only)
    max_grad_norm: float = 1.0  # 0 disables clipping
    schedule: str = "cosine"  # cosine | linear | constant | constant_with_warmup (transformers.get_scheduler)
    warmup_steps: int = 0  # warm-up steps of the schedule
    warmup_ratio: float = 0.0  # warm-up as a fraction of the steps, used when warmup_steps is 0
    epochs: float = 1.0  # passes over the training records
    max_steps: int = 0  # > 0 overrides epochs
    batch_size: int = 1  # micro-batch rows per process
    grad_accum: int = 1  # micro-batches per optimizer step per process
    # rows in one forward/backward pass, regrouped from a step's micro-batches: the step's loss is
    # its answer tokens' summed NLL / their count, so the regrouping leaves the maths unchanged
    # (only the order of summation). 0: batch_size (one pass per micro-batch); N; auto: as many as
    # fit on the GPU (halved on out-of-memory; one process only, else batch_size)
    rows_per_pass: int | str = 0
    seed: int = 0  # seeds the LoRA init, dropout and the order of the micro-batches
    # data
    max_length: int = 0  # longest example in tokens (0: the model's max_position_embeddings)
    truncate_haystack: bool = False  # drop non-gold documents of too-long examples (never the answer)
    packing: bool = False  # pack short examples into rows of `pack_length` tokens (position_ids reset)
    pack_length: int = 0  # packed row length (0: max_length)
    chat: bool | None = None  # render with the tokenizer's chat template (None: when it has one, as every stage)
    # memory
    gradient_checkpointing: bool = True  # recompute layer activations in backward
    # with gradient checkpointing, keep each layer's attention-kernel outputs instead of recomputing
    # them in backward (train/checkpointing.py): 1.10x faster at 32K tokens for 2*T*hidden bytes a layer
    save_attention: bool = True  # with checkpointing, keep attention outputs instead of recomputing them
    # bookkeeping
    log_every: int = 1  # write a log.jsonl line every N steps
    report_to: str = "none"  # also send log lines to a tracker (accelerate): none | tensorboard (OUT/tracking/) | wandb | trackio
    eval_every: int = 0  # evaluate every N steps (0: only at the end, when eval records are given)
    save_every: int = 0  # checkpoint every N steps (0: no intermediate checkpoints)
    # save the trained weights (adapter or model) at these fractions of the steps, to OUT/snapshots/<fraction>/
    # (YAML only; the study's `early.fractions` sets them): loadable as adapters, for early head probes
    snapshots: list[float] = field(default_factory=list)
    keep_checkpoints: int = 2  # newest checkpoints kept (0 keeps all)
    resume: str = "auto"  # auto (resume when out/checkpoints has one) | never | a checkpoint directory
    progress: bool = True  # show progress bars (main process only)

    def __post_init__(self) -> None:
        if isinstance(self.targets, str):
            self.targets = [t.strip() for t in self.targets.split(",") if t.strip()]
        self.betas = tuple(float(b) for b in self.betas)  # type: ignore[assignment]
        problems = []
        if self.method not in METHODS:
            problems.append(f"method {self.method!r} is not one of {', '.join(METHODS)}")
        if self.report_to not in TRACKERS:
            problems.append(f"report_to {self.report_to!r} is not one of {', '.join(TRACKERS)}")
        if self.schedule not in SCHEDULES:
            problems.append(f"schedule {self.schedule!r} is not one of {', '.join(SCHEDULES)}")
        if self.batch_size < 1 or self.grad_accum < 1:
            problems.append("batch_size and grad_accum must be >= 1")
        try:
            self.rows_per_pass = int_or_auto(self.rows_per_pass, "rows_per_pass", least=0)
        except NeedleworkError as e:
            problems.append(e.problem)
        if self.epochs <= 0 and self.max_steps <= 0:
            problems.append("set epochs > 0 or max_steps > 0")
        bad = [f for f in self.snapshots if not 0 < f <= 1]
        if bad or len(set(self.snapshots)) != len(self.snapshots):
            problems.append(f"snapshots must be distinct fractions of training in (0, 1], not {self.snapshots}")
        if self.method != "full" and not self.targets:
            problems.append(f"method {self.method} needs at least one target module name")
        if problems:
            raise NeedleworkError("bad training config: " + "; ".join(problems), "fix the value(s); see `needlework train --help`")

    def snapshot_steps(self, total_steps: int) -> dict[int, list[float]]:
        """The step at which each snapshot fraction is saved: step -> its fractions."""
        out: dict[int, list[float]] = {}
        for f in sorted(self.snapshots):
            out.setdefault(snapshot_step(f, total_steps), []).append(f)
        return out

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Build from a dict (YAML section); unknown keys and wrong types raise NeedleworkError naming them."""
        if isinstance(d.get("targets"), str):  # `q_proj,v_proj`, as the command line writes it
            d = {**d, "targets": [t.strip() for t in d["targets"].split(",") if t.strip()]}
        return build(cls, d, what="training config key")


def snapshot_step(fraction: float, total_steps: int) -> int:
    """The first step by which `fraction` of the training steps are done (at least 1): where a
    snapshot at that fraction is saved and where a run told to stop there stops."""
    return min(total_steps, max(1, math.ceil(fraction * total_steps - 1e-9)))


def load_train_config(path: str | os.PathLike, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Read a YAML file (its `train:` section, or the whole file) and apply CLI overrides."""
    import yaml

    p = Path(path)
    if not p.exists():
        raise NeedleworkError(f"config file {p} not found", "check the path")
    data = yaml.safe_load(p.read_text()) or {}
    if not isinstance(data, dict):
        raise NeedleworkError(f"{p}: expected a mapping of keys", "write `key: value` lines")
    data = dict(data.get("train", data))
    data.update(overrides or {})
    return TrainConfig.from_dict(data)
