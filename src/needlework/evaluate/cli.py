"""`needlework evaluate`: a thin wrapper over `needlework.evaluate.evaluate.evaluate`.

Its options are EvalConfig's and ModelConfig's fields (`needlework.cli_options`)."""

from __future__ import annotations

from pathlib import Path

import typer

from needlework.cli_options import MODEL, Options, with_options
from needlework.evaluate.config import EvalConfig
from needlework.models.load import ModelConfig

EVAL = Options(
    EvalConfig,
    minimum={"max_new_tokens": 1, "limit": 1, "n_boot": 1},
    help={"batch_size": "examples per forward pass, or auto (as many as fit on the GPU)"},
)


@with_options(model=MODEL, cfg=EVAL)
def evaluate_cmd(
    data: Path = typer.Option(..., "--data", "-d", help="Records to evaluate (JSONL)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder: predictions (one row per example) and a summary with intervals."),
    model: ModelConfig = MODEL,
    cfg: EvalConfig = EVAL,
) -> None:
    """Generate answers greedily and score them with the task metrics, with bootstrap intervals.

    Example:

        needlework evaluate --model smollm2 --data data/mdqa_test.jsonl --out runs/eval_base --limit 50

    With a fine-tuned adapter:

        needlework evaluate --model smollm2 --adapter runs/train_mdqa --data data/mdqa_test.jsonl --out runs/eval_ft
    """
    from needlework.evaluate.evaluate import evaluate

    result = evaluate(model, data, cfg, out)
    summary = result.summary
    for task, t in summary["tasks"].items():
        parts = [f"{m} {v['mean']:.3f} [{v['lo']:.3f}, {v['hi']:.3f}]" for m, v in t["metrics"].items()]
        typer.echo(f"{task} (n={t['n']}, primary {t['primary']}): " + "; ".join(parts))
    typer.echo(f"wrote {result.path} ({summary['examples_per_s']:.2f} examples/s)")


def register(app: typer.Typer) -> None:
    app.command("evaluate")(evaluate_cmd)
