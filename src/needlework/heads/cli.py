"""`needlework heads score|compare|plot|export|import`: thin wrappers over needlework.heads."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

heads_app = typer.Typer(help="Score attention heads (retrieval / insight / mass), compare, plot, export.",
                        no_args_is_help=True)


@heads_app.command("score")
def score_cmd(
    model: str = typer.Option("smollm2", help="hub id, local folder, .gguf file, or smollm2"),
    data: Path = typer.Option(..., help="JSONL records"),
    mode: str = typer.Option("teacher", help="teacher (one forward over prompt + gold answer) | generate (greedy)"),
    score: str = typer.Option("retrieval", help="retrieval | insight | mass"),
    out: Path = typer.Option(..., help="parent directory; the result goes to OUT/<hash of inputs>"),
    batch_size: int = typer.Option(1, help="examples per forward (padded)"),
    limit: Optional[int] = typer.Option(None, help="score only the first N records"),
    device: str = typer.Option("auto", help="auto | cpu | cuda | cuda:N"),
    dtype: str = typer.Option("auto", help="auto | float32 | bfloat16 | float16"),
    adapter: Optional[str] = typer.Option(None, help="LoRA adapter: a `needlework train` output folder or its adapter/ (its saved RoPE settings apply)"),
    rope_theta: Optional[float] = typer.Option(None, help="RoPE base (default: the adapter's saved value; a different one is an error)"),
    max_position_embeddings: Optional[int] = typer.Option(None, help="position limit (default: the adapter's saved value)"),
    keep_failed: bool = typer.Option(False, help="generate: keep examples whose answer fails the ROUGE-1 gate"),
    match: Optional[str] = typer.Option(None, help="id (exact token ids) | loose (decoded, stripped, lower-cased); default: loose with the chat template, id without"),
    chat: Optional[bool] = typer.Option(None, "--chat/--no-chat", help="chat template (default: if the tokenizer has one, as train and evaluate)"),
    max_new_tokens: int = typer.Option(32, help="generate: answer tokens at most"),
    spans: str = typer.Option("auto", help="needle roles forming the span set S: auto (retrieval: answer; insight: "
                              "evidence, else answer; mass: all) | answer | evidence | all (retrieval: answer only)"),
    force: bool = typer.Option(False, help="recompute even if identical inputs were scored"),
) -> None:
    """Score every head on a data set.

    Example: needlework heads score --model smollm2 --data mdqa.jsonl --mode teacher --score retrieval --out runs/heads

    A fine-tuned model: needlework heads score --model smollm2 --adapter runs/lora --data mdqa.jsonl --out runs/heads
    """
    from needlework.heads.run import run_score
    from needlework.heads.score import ScoreConfig
    from needlework.models.load import ModelConfig

    cfg = ScoreConfig(mode=mode, score=score, batch_size=batch_size, limit=limit, chat=chat,
                      max_new_tokens=max_new_tokens, keep_failed=keep_failed, match=match, spans=spans)
    run_score(ModelConfig(name=model, device=device, dtype=dtype, adapter=adapter, rope_theta=rope_theta,
                          max_position_embeddings=max_position_embeddings), data, cfg, out, force=force)


@heads_app.command("compare")
def compare_cmd(
    a: Path = typer.Argument(..., help="result directory A (e.g. synthetic-data model)"),
    b: Path = typer.Argument(..., help="result directory B, the reference (e.g. real-data model)"),
    top: Optional[int] = typer.Option(None, help="head set = top K heads"),
    threshold: float = typer.Option(0.1, help="head set = heads with mean score above T (when --top is not given)"),
    view: str = typer.Option("query", help="query | kv (aggregate query heads of a kv group)"),
    kv_agg: str = typer.Option("max", help="kv view: max | mean over a group's query heads"),
    n_boot: int = typer.Option(1000, help="bootstrap resamples over examples (0: none)"),
    out: Optional[Path] = typer.Option(None, help="also write the table as JSON"),
) -> None:
    """Cosine, Spearman and recall/precision/Jaccard of head sets, with 95% bootstrap intervals.

    Example: needlework heads compare runs/heads/syn runs/heads/real --top 20 --view kv
    """
    from needlework.heads.compare import CompareConfig, compare_dirs
    from needlework.io import write_json

    df = compare_dirs(a, b, CompareConfig(top=top, threshold=threshold, view=view, kv_agg=kv_agg, n_boot=n_boot))
    typer.echo(f"A={a}  B={b} (reference)  view={df.attrs['view']}  "
               + (f"top {top}" if top else f"threshold {threshold}"))
    for r in df.itertuples():
        typer.echo(f"{r.stat:>10}  {r.value:8.4f}  [{r.lo:.4f}, {r.hi:.4f}]")
    if out:
        write_json(out, {"a": str(a), "b": str(b), **df.attrs, "stats": df.to_dict(orient="records")})


@heads_app.command("plot")
def plot_cmd(
    result: Path = typer.Argument(..., help="result directory"),
    out: Optional[Path] = typer.Option(None, help="PNG path (default RESULT/heads.png)"),
) -> None:
    """Layer x head heatmap of mean scores.

    Example: needlework heads plot runs/heads/3f2a9c1b0d4e
    """
    from needlework.heads.plot import heatmap

    typer.echo(str(heatmap(result, out)))


@heads_app.command("export")
def export_cmd(
    result: Path = typer.Argument(..., help="result directory"),
    format: str = typer.Option(..., "--format", help="wu (JSON {'L-H': [scores]}) | duo (layer x kv-head TSV)"),
    out: Path = typer.Option(..., help="output file"),
    kv_agg: str = typer.Option("max", help="duo: max | mean over a kv group's query heads"),
) -> None:
    """Write scores in Wu et al.'s JSON or DuoAttention's TSV.

    Example: needlework heads export runs/heads/3f2a9c1b0d4e --format wu --out heads.json
    """
    from needlework.heads.io import export_scores

    typer.echo(str(export_scores(result, format, out, kv_agg)))


@heads_app.command("import")
def import_cmd(
    file: Path = typer.Argument(..., help="Wu et al. JSON or DuoAttention TSV"),
    format: str = typer.Option(..., "--format", help="wu | duo"),
    out: Path = typer.Option(..., help="result directory to write"),
    n_kv_heads: Optional[int] = typer.Option(None, help="wu: the model's kv heads (for the kv view)"),
) -> None:
    """Read other tools' head scores into a result directory.

    Example: needlework heads import Meta-Llama-3-8B-Instruct.json --format wu --n-kv-heads 8 --out runs/heads/wu
    """
    from needlework.heads.io import import_scores

    typer.echo(str(import_scores(file, format, out, n_kv_heads)))


def register(app: typer.Typer) -> None:
    app.add_typer(heads_app, name="heads")
