"""`needlework heads score|compare|plot|export|import`: thin wrappers over needlework.heads."""

from __future__ import annotations

from pathlib import Path

import typer

from needlework.cli_options import MODEL, Options, with_options
from needlework.heads.config import CompareConfig, ScoreConfig
from needlework.models.load import ModelConfig

heads_app = typer.Typer(help="Score attention heads (retrieval / insight / mass), compare, plot, export.", no_args_is_help=True)


SCORE = Options(
    ScoreConfig,
    minimum={"limit": 1, "max_new_tokens": 1},
    help={
        "mode": "teacher (one forward over prompt + gold answer) | generate (greedy)",
        "batch_size": "examples per forward (padded), or auto (as many as fit on the GPU)",
        "limit": "score only the first N records",
        "max_new_tokens": "generate: answer tokens at most",
        "keep_failed": "generate: keep examples whose answer fails the ROUGE-1 gate",
        "stop_on_newline": "generate: stop at a token holding a newline (not the first token)",
        "success_threshold": "generate: stemmed ROUGE-1 recall of the answer must exceed this (Wu et al.)",
        "criteria": "more criteria scored on the same records, e.g. query,output (teacher mode: in the same forward); "
        "each gets its table in the result folder, read with --criterion by compare, knockout and patch",
        "spans": "needle roles forming the span set S: auto (retrieval: answer; insight: evidence, else answer; mass: all) "
        "| answer | evidence | all (retrieval: answer only)",
    },
)


@heads_app.command("score")
@with_options(model=MODEL, cfg=SCORE)
def score_cmd(
    data: Path = typer.Option(..., help="JSONL records"),
    out: Path = typer.Option(..., help="parent directory; the result goes to OUT/<hash of inputs>"),
    force: bool = typer.Option(False, help="recompute even if identical inputs were scored"),
    model: ModelConfig = MODEL,
    cfg: ScoreConfig = SCORE,
) -> None:
    """Score every head on a data set.

    Example: needlework heads score --model smollm2 --data mdqa.jsonl --mode teacher --score retrieval --out runs/heads

    A fine-tuned model: needlework heads score --model smollm2 --adapter runs/lora --data mdqa.jsonl --out runs/heads
    """
    from needlework.heads.run import run_score

    res = run_score(model, data, cfg, out, force=force)
    typer.echo(f"wrote {res.path}")


COMPARE = Options(
    CompareConfig,
    minimum={"top": 1, "n_boot": 0},
    help={
        "top": "head set = top K heads",
        "threshold": "head set = heads with mean score above T (when --top is not given)",
        "view": "query | kv (aggregate query heads of a kv group)",
        "kv_agg": "kv view: max | mean over a group's query heads",
        "criterion": "in folders scored with several criteria (--criteria), the one compared (default: their --score)",
        "n_boot": "bootstrap resamples over examples (0: none)",
        "alpha": "1 - confidence level of the intervals",
        "seed": "bootstrap seed",
    },
)


@heads_app.command("compare")
@with_options(cfg=COMPARE)
def compare_cmd(
    a: Path = typer.Argument(..., help="result directory A (e.g. synthetic-data model)"),
    b: Path = typer.Argument(..., help="result directory B, the reference (e.g. real-data model)"),
    out: Path | None = typer.Option(None, help="also write the table as JSON"),
    cfg: CompareConfig = COMPARE,
) -> None:
    """Cosine, Spearman and recall/precision/Jaccard of head sets, with bootstrap intervals (95% by default).

    Intervals resample example ids, paired when both sides scored the same examples; where none can
    be computed (a side with mean scores only, e.g. a DuoAttention table) the reason is printed.

    Example: needlework heads compare runs/heads/syn runs/heads/real --top 20 --view kv
    """
    from needlework.heads.compare import compare_dirs
    from needlework.io import write_json

    df = compare_dirs(a, b, cfg)
    typer.echo(f"A={a}  B={b} (reference)  view={df.attrs['view']}  " + (f"top {cfg.top}" if cfg.top else f"threshold {cfg.threshold}"))
    whys = set(df["why"])
    common = whys.pop() if len(whys) == 1 else ""  # the same reason on every row: say it once
    typer.echo(common if common else f"{1 - cfg.alpha:.0%} intervals: {df.attrs['interval']}")
    for r in df.itertuples():
        interval = "" if common else f"({r.why})" if r.why else f"[{r.lo:.4f}, {r.hi:.4f}]"
        typer.echo(f"{r.stat:>10}  {r.value:8.4f}  {interval}".rstrip())
    if out:
        write_json(out, {"a": str(a), "b": str(b), **df.attrs, "stats": df.to_dict(orient="records")})


@heads_app.command("plot")
def plot_cmd(
    result: Path = typer.Argument(..., help="result directory"),
    out: Path | None = typer.Option(None, help="PNG path (default RESULT/heads.png, RESULT/heads-<criterion>.png)"),
    criterion: str | None = typer.Option(None, help="in a folder scored with several criteria, the one drawn (default: its --score)"),
) -> None:
    """Layer x head heatmap of mean scores.

    Example: needlework heads plot runs/heads/smollm2-mdqa_test-3f2a9c1b --criterion query
    """
    from needlework.heads.plot import heatmap

    typer.echo(str(heatmap(result, out, criterion=criterion)))


@heads_app.command("export")
def export_cmd(
    result: Path = typer.Argument(..., help="result directory"),
    format: str = typer.Option(
        ..., "--format", help="wu (JSON {'L-H': \\[scores]}) | duo (layer x kv-head TSV)"
    ),  # \\[: a bracket, not rich markup
    out: Path = typer.Option(..., help="output file"),
    kv_agg: str = typer.Option("max", help="duo: max | mean over a kv group's query heads"),
    criterion: str | None = typer.Option(None, help="in a folder scored with several criteria, the one written (default: its --score)"),
) -> None:
    """Write scores in Wu et al.'s JSON or DuoAttention's TSV.

    Example: needlework heads export runs/heads/smollm2-mdqa_test-3f2a9c1b --format wu --out heads.json
    """
    from needlework.heads.io import export_scores

    typer.echo(str(export_scores(result, format, out, kv_agg, criterion)))


@heads_app.command("import")
def import_cmd(
    file: Path = typer.Argument(..., help="Wu et al. JSON or DuoAttention TSV"),
    format: str = typer.Option(..., "--format", help="wu | duo"),
    out: Path = typer.Option(..., help="result directory to write"),
    n_kv_heads: int | None = typer.Option(None, help="wu: the model's kv heads (for the kv view)"),
) -> None:
    """Read other tools' head scores into a result directory.

    Example: needlework heads import Meta-Llama-3-8B-Instruct.json --format wu --n-kv-heads 8 --out runs/heads/wu
    """
    from needlework.heads.io import import_scores

    typer.echo(str(import_scores(file, format, out, n_kv_heads)))


def register(app: typer.Typer) -> None:
    app.add_typer(heads_app, name="heads")
