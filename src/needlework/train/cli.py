"""`needlework train`: a thin layer over `needlework.train.sft.train`.

The options are TrainConfig's and ModelConfig's fields (`needlework.cli_options`): defaults and help
live in the dataclasses. Training options default to unset so that they override a --config YAML.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from needlework.cli_options import MODEL, Options, with_options
from needlework.models.load import ModelConfig
from needlework.train.config import TrainConfig

HELP = """Fine-tune a model on records, the loss on answer tokens only (LoRA on q,k,v,o by default).

Writes OUT/log.jsonl, OUT/train_config.json, OUT/checkpoints/step-N and OUT/adapter (LoRA) or
OUT/model (attn/full). Rerunning with the same --out resumes from the newest checkpoint.
Beside the weights, needlework_model_config.json keeps the base model, its RoPE settings and the
rendering (chat template or not): `evaluate`, `heads score`, `knockout` and `patch` take OUT as
--adapter and apply them (pass no --rope-theta there; a different value is an error).

Examples:

  needlework train --model smollm2 --data train.jsonl --eval dev.jsonl --out runs/lora --max-steps 200

  needlework train --model meta-llama/Meta-Llama-3-8B-Instruct --data long.jsonl --out runs/l3 \\
      --rope-theta 2000000 --max-length 32768 --lr 1e-4 --grad-accum 8 --save-every 100

  accelerate launch --num_processes 4 -m needlework.cli train --model M --data d.jsonl --out runs/ddp

  accelerate launch --num_processes 8 --use_fsdp --fsdp_version 2 -m needlework.cli train --model M ...
"""


# every TrainConfig field the command line can take; betas is a pair (YAML only)
TRAIN = Options(TrainConfig, given_only=True)


@with_options(model=MODEL, given=TRAIN)
def train_cmd(
    data: Path = typer.Option(..., "--data", help="training records (JSONL)"),
    out: Path = typer.Option(..., "--out", help="output directory"),
    eval_file: Path | None = typer.Option(None, "--eval", help="held-out records for periodic teacher-forced evaluation"),
    config: Path | None = typer.Option(None, "--config", help="YAML file of TrainConfig keys (a `train:` section or top level)"),
    model: ModelConfig = MODEL,
    given: dict[str, Any] = TRAIN,
) -> None:
    """Train with the given options (over --config), then print the result `train` returns."""
    from needlework.data.records import read_jsonl
    from needlework.train.config import load_train_config
    from needlework.train.sft import train

    cfg = load_train_config(config, given) if config else TrainConfig.from_dict(given)
    result = train(model, read_jsonl(data), cfg, out, eval_records=read_jsonl(eval_file) if eval_file else None)
    typer.echo(f"trained {result.steps} steps, final loss {result.final_loss:.4f}; saved {result.saved}")
    if result.eval:
        typer.echo("eval: " + ", ".join(f"{k}={v:.4f}" for k, v in result.eval.items()))


def register(app: typer.Typer) -> None:
    app.command("train", help=HELP)(train_cmd)
