"""`needlework evaluate`: a thin wrapper over `needlework.evaluate.evaluate.evaluate`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def evaluate_cmd(
    model: str = typer.Option("smollm2", "--model", "-m", help="Hub id, local folder, .gguf file, or smollm2."),
    data: Path = typer.Option(..., "--data", "-d", help="Records to evaluate (JSONL)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder for predictions.jsonl and summary.json."),
    adapter: Optional[Path] = typer.Option(None, "--adapter", help="LoRA adapter: a `needlework train` output folder or its adapter/ (its saved RoPE settings apply)."),
    batch_size: int = typer.Option(4, "--batch-size", min=1, help="Examples per forward pass."),
    max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", min=1,
                                                 help="Generation budget; default per task (mdqa/musique/kv 32, summhay 64)."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Evaluate only the first N records."),
    chat: Optional[bool] = typer.Option(None, "--chat/--no-chat", help="Use the chat template (default: when the tokenizer has one, as train does)."),
    logprob: bool = typer.Option(True, "--logprob/--no-logprob", help="Also score the gold answer's teacher-forced log-probability."),
    n_boot: int = typer.Option(1000, "--n-boot", min=1, help="Bootstrap resamples for confidence intervals."),
    seed: int = typer.Option(0, "--seed", help="Bootstrap seed."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    dtype: str = typer.Option("auto", "--dtype", help="auto (bf16 on GPU, fp32 on CPU), float32, bfloat16, float16."),
    rope_theta: Optional[float] = typer.Option(None, "--rope-theta", help="RoPE base (default: the adapter's saved value; a different value is an error)."),
    max_position_embeddings: Optional[int] = typer.Option(None, "--max-position-embeddings", help="Position limit (default: the adapter's saved value)."),
) -> None:
    """Generate answers greedily and score them with the task metrics, with bootstrap intervals.

    Example:

        needlework evaluate --model smollm2 --data data/mdqa_test.jsonl --out runs/eval_base --limit 50

    With a fine-tuned adapter:

        needlework evaluate --model smollm2 --adapter runs/train_mdqa --data data/mdqa_test.jsonl --out runs/eval_ft
    """
    from needlework.evaluate.evaluate import EvalConfig, evaluate
    from needlework.models.load import ModelConfig

    mcfg = ModelConfig(name=model, device=device, dtype=dtype, adapter=str(adapter) if adapter else None,
                       rope_theta=rope_theta, max_position_embeddings=max_position_embeddings)
    cfg = EvalConfig(batch_size=batch_size, max_new_tokens=max_new_tokens, chat=chat, limit=limit,
                     n_boot=n_boot, seed=seed, logprob=logprob)
    _, summary = evaluate(mcfg, data, cfg, out)
    for task, t in summary["tasks"].items():
        parts = [f"{m} {v['mean']:.3f} [{v['lo']:.3f}, {v['hi']:.3f}]" for m, v in t["metrics"].items()]
        typer.echo(f"{task} (n={t['n']}, primary {t['primary']}): " + "; ".join(parts))
    typer.echo(f"wrote {out / 'predictions.jsonl'} and {out / 'summary.json'} ({summary['examples_per_s']:.2f} examples/s)")


def register(app: typer.Typer) -> None:
    app.command("evaluate")(evaluate_cmd)
