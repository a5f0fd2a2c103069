"""CLI of the data stage: `generate`, `validate`, `inspect`, `demo`. Thin: each command calls one
public function of needlework.data and prints its result."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def _table(rows: list[dict], title: str, columns: list[str]):
    from rich.table import Table

    t = Table(title=title)
    short = {"mean_tokens": "tokens", "mean_depth": "depth", "mean_docs": "docs"}
    for c in columns:
        t.add_column(short.get(c, c), justify="right" if c not in ("task", "concept", "context", "file") else "left")
    for r in rows:
        cells = []
        for c in columns:
            v = r.get(c)
            cells.append("-" if v is None else f"{v:.3f}" if isinstance(v, float) and c.endswith("depth") else
                         f"{v:.0f}" if isinstance(v, float) else str(v))
        t.add_row(*cells)
    return t


def generate_cmd(
    task: str = typer.Option("mdqa", help="mdqa | musique | summhay | kv"),
    concept: str = typer.Option("high", help="high | low | symbolic (kv: symbolic only)"),
    context: str = typer.Option("high", help="high (real prose) | low (repeated filler)"),
    n: int = typer.Option(100, help="number of examples"),
    length: int = typer.Option(2048, help="target tokens of prompt + answer, within 2% or 32 tokens"),
    tokenizer: str = typer.Option("smollm2", help="hub id, local path, or smollm2"),
    seed: int = typer.Option(0, help="same seed, same bytes"),
    depth: str = typer.Option("random", help="0..100: percent of the haystack before the gold document(s); or random"),
    relations: Optional[str] = typer.Option(None, help="comma-separated relation types to keep (a 'limited' set)"),
    chat: bool = typer.Option(False, help="count length with the tokenizer's chat template"),
    haystack: Optional[Path] = typer.Option(None, help="folder of .txt or JSONL with 'text' (default: CPython docs prose)"),
    hops: str = typer.Option("2-4", help="musique: hops per question, N or LO-HI"),
    hard_negatives: int = typer.Option(3, help="mdqa: same-relation distractor documents (high context)"),
    insights: int = typer.Option(3, help="summhay: insights per haystack (high context)"),
    insight_docs: str = typer.Option("2-3", help="summhay: documents per insight, N or LO-HI"),
    kv_pairs: int = typer.Option(4, help="kv: pairs per JSON dictionary"),
    kv_dicts: int = typer.Option(3, help="kv: dictionaries per example (high context)"),
    writer: Optional[str] = typer.Option(None, help="LLM-written haystack (high context): openai | local"),
    writer_model: str = typer.Option("smollm2", help="--writer's served model name (openai) or model reference (local)"),
    writer_base_url: str = typer.Option("http://127.0.0.1:8000/v1", help="--writer openai: endpoint ending in /v1 (key from OPENAI_API_KEY)"),
    writer_docs: int = typer.Option(200, help="--writer: haystack documents to write (cached on disk)"),
    out: Path = typer.Option(..., help="output JSONL file (written atomically)"),
) -> None:
    """Generate synthetic long-context examples of one task x variant.

    Examples:
      needlework generate --task mdqa --concept high --context high --n 100 --length 2048 --depth 50 --out data/mdqa.jsonl

      needlework generate --task kv --concept symbolic --context low --n 50 --length 8192 --out data/kv.jsonl

      needlework generate --task musique --concept high --context high --writer openai --writer-model my-model --out m.jsonl
    """
    from needlework.data.generate import GenerateConfig, generate
    from needlework.data.records import write_jsonl

    cfg = GenerateConfig(
        task=task, concept=concept, context=context, n=n, length=length, tokenizer=tokenizer, seed=seed,
        depth=depth, relations=[r.strip() for r in relations.split(",") if r.strip()] if relations else None,
        chat=chat, haystack=str(haystack) if haystack else None, hops=hops, hard_negatives=hard_negatives,
        insights=insights, insight_docs=insight_docs, kv_pairs=kv_pairs, kv_dicts=kv_dicts, writer_docs=writer_docs,
    )
    llm = None
    if writer:
        from needlework.data.writer import WriterConfig, make_writer

        llm = make_writer(WriterConfig(kind=writer, model=writer_model, base_url=writer_base_url))
    records = generate(cfg, writer=llm)
    write_jsonl(out, records)
    toks = [r.meta["n_tokens"] for r in records]
    typer.echo(f"wrote {len(records)} records to {out} (tokens {min(toks)}..{max(toks)}, target {length})")


def validate_cmd(file: Path = typer.Argument(..., help="JSONL file of records")) -> None:
    """Check every record's invariants; list every violation with its line; exit 1 if any.

    Example:
      needlework validate data/mdqa.jsonl
    """
    from needlework.data.inspect import validate_file

    n, problems = validate_file(file)
    for p in problems:
        typer.echo(f"{file}:{p}")
    if problems:
        typer.secho(f"{len(problems)} problem(s) in {n} record(s)", fg="red", err=True)
        raise typer.Exit(1)
    typer.echo(f"{file}: {n} records, all valid")


def inspect_cmd(
    file: Path = typer.Argument(..., help="JSONL file of records"),
    tokenizer: Optional[str] = typer.Option(None, help="render with this tokenizer to count tokens (default: meta n_tokens)"),
    samples: int = typer.Option(2, help="rendered samples to show"),
) -> None:
    """Counts per task/variant, token-length and depth histograms, and a few samples.

    Example:
      needlework inspect data/mdqa.jsonl --tokenizer smollm2
    """
    from rich.console import Console

    from needlework.data.inspect import group_rows, sample_text, summarize, text_histogram
    from needlework.data.records import read_jsonl

    records = read_jsonl(file)
    tok = None
    if tokenizer:
        from needlework.models.load import load_tokenizer

        tok = load_tokenizer(tokenizer)
    rows = summarize(records, tok)
    console = Console()
    console.print(_table(group_rows(rows), f"{file}: {len(records)} records",
                         ["task", "concept", "context", "n", "mean_tokens", "mean_depth", "mean_docs"]))
    console.print("token length", markup=False)
    console.print(text_histogram([r["n_tokens"] for r in rows]), markup=False)
    console.print("depth (fraction of haystack before the gold documents)", markup=False)
    console.print(text_histogram([r["depth_frac"] for r in rows], lo=0.0, hi=1.0), markup=False)
    for rec in records[:samples]:
        console.print(sample_text(rec), markup=False)


def demo_cmd(
    out: Path = typer.Option(Path("runs/demo-data"), help="output folder"),
    n: int = typer.Option(4, help="examples per task x variant"),
    length: int = typer.Option(2048, help="target tokens"),
    tokenizer: str = typer.Option("smollm2", help="hub id, local path, or smollm2"),
) -> None:
    """Generate a small dataset of every task x variant, validate it and print a summary table.

    Example:
      needlework demo --out runs/demo-data --n 4 --length 2048
    """
    from rich.console import Console

    from needlework.data.inspect import run_demo

    rows = run_demo(out, n=n, length=length, tokenizer=tokenizer)
    Console().print(_table(rows, f"needlework demo: {len(rows)} variants in {out} (target {length} tokens, {tokenizer})",
                           ["task", "concept", "context", "n", "mean_tokens", "mean_depth", "mean_docs", "problems"]))
    bad = sum(r["problems"] for r in rows)
    if bad:
        typer.secho(f"{bad} validation problem(s)", fg="red", err=True)
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add the data commands; also the real-data commands (`load`, `write-docs`) when present."""
    try:
        from needlework.data import cli_real
    except ModuleNotFoundError as e:
        if e.name != "needlework.data.cli_real":
            raise
    else:
        cli_real.register(app)
    app.command("generate")(generate_cmd)
    app.command("validate")(validate_cmd)
    app.command("inspect")(inspect_cmd)
    app.command("demo")(demo_cmd)
