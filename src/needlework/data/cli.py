"""CLI of the data stage: `generate`, `validate`, `inspect`, `export`, `demo`. Thin: each command
calls one public function of needlework.data and prints its result."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import typer

from needlework.cli_options import Options, with_options
from needlework.data.export import ExportConfig
from needlework.data.generate import GenerateConfig
from needlework.data.writer import WriterConfig

# GenerateConfig's fields are the options (meta is YAML only)
GENERATE = Options(
    GenerateConfig,
    help={
        "n": "number of examples",
        "seed": "same seed, same bytes",
        "context": "high (real prose) | low (repeated filler)",
        "relations": "comma-separated relation types to keep (a 'limited' set)",
        "haystack": "folder of .txt or JSONL with 'text' (default: CPython docs prose)",
        "world_size": "people in the fictional world (0: max(400, n))",
        "writer_docs": "--writer: haystack documents to write (cached on disk)",
    },
)
# the writer of an LLM-written haystack (--writer names its kind; no writer by default)
WRITER = Options(
    WriterConfig,
    fields=("model", "base_url"),
    prefix="writer_",
    flags={"model": ("--writer-model",), "base_url": ("--writer-base-url",)},
    help={
        "model": "--writer's served model name (openai) or model reference (local)",
        "base_url": "--writer openai: endpoint ending in /v1 (key from OPENAI_API_KEY)",
    },
)


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
            cells.append(
                "-"
                if v is None
                else f"{v:.3f}"
                if isinstance(v, float) and c.endswith("depth")
                else f"{v:.0f}"
                if isinstance(v, float)
                else str(v)
            )
        t.add_row(*cells)
    return t


@with_options(cfg=GENERATE, writer_cfg=WRITER)
def generate_cmd(
    writer: str | None = typer.Option(None, help="LLM-written haystack (high context): openai | local"),
    out: Path = typer.Option(..., help="output JSONL file (written atomically)"),
    cfg: GenerateConfig = GENERATE,
    writer_cfg: WriterConfig = WRITER,
) -> None:
    """Generate synthetic long-context examples of one task x variant.

    Examples:
      needlework generate --task mdqa --concept high --context high --n 100 --length 2048 --depth 50 --out data/mdqa.jsonl

      needlework generate --task kv --concept symbolic --context low --n 50 --length 8192 --out data/kv.jsonl

      needlework generate --task musique --concept high --context high --writer openai --writer-model my-model --out m.jsonl
    """
    from needlework.data.generate import generate
    from needlework.data.records import write_jsonl

    llm = None
    if writer:
        from needlework.data.writer import make_writer

        llm = make_writer(dataclasses.replace(writer_cfg, kind=writer))
    records = generate(cfg, writer=llm)
    write_jsonl(out, records)
    toks = [r.meta["n_tokens"] for r in records]
    typer.echo(f"wrote {len(records)} records to {out} (tokens {min(toks)}..{max(toks)}, target {cfg.length})")


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
    tokenizer: str | None = typer.Option(None, help="render with this tokenizer to count tokens (default: meta n_tokens)"),
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
    console.print(
        _table(
            group_rows(rows),
            f"{file}: {len(records)} records",
            ["task", "concept", "context", "n", "mean_tokens", "mean_depth", "mean_docs"],
        )
    )
    console.print("token length", markup=False)
    console.print(text_histogram([r["n_tokens"] for r in rows]), markup=False)
    console.print("depth (fraction of haystack before the gold documents)", markup=False)
    console.print(text_histogram([r["depth_frac"] for r in rows], lo=0.0, hi=1.0), markup=False)
    for rec in records[:samples]:
        console.print(sample_text(rec), markup=False)


# ExportConfig's fields are the options
EXPORT = Options(
    ExportConfig,
    flags={"format": ("--format", "-f")},
    minimum={"limit": 1},
    help={
        "format": "messages (TRL chat) | prompt-completion (TRL; loss on the completion) | ruler (RULER jsonl) | lm-eval (task folder)",
        "chat": "prompt-completion: chat messages (TRL applies the tokenizer's chat template) instead of plain text",
    },
)


@with_options(cfg=EXPORT)
def export_cmd(
    file: Path = typer.Argument(..., help="JSONL file of records"),
    out: Path = typer.Option(..., "--out", "-o", help="output JSONL file (lm-eval: a task folder), written atomically"),
    cfg: ExportConfig = EXPORT,
) -> None:
    """Write records for other tools, with the prompt training and evaluation render.

    Examples:
      needlework export data/mdqa.jsonl --format messages --out mdqa.messages.jsonl

      needlework export data/mdqa.jsonl --format prompt-completion --chat --out mdqa.pc.jsonl

      needlework export data/kv.jsonl --format ruler --tokenizer smollm2 --out kv.ruler.jsonl

      needlework export data/mdqa.jsonl --format lm-eval --task-name mdqa_hh --out lm_eval_tasks/
      then: lm_eval --model hf --model_args pretrained=... --include_path lm_eval_tasks --tasks mdqa_hh
    """
    from needlework.data.export import export_file

    path, n = export_file(file, out, cfg)
    typer.echo(f"wrote {n} records as {cfg.format} to {path}")


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
    Console().print(
        _table(
            rows,
            f"needlework demo: {len(rows)} variants in {out} (target {length} tokens, {tokenizer})",
            ["task", "concept", "context", "n", "mean_tokens", "mean_depth", "mean_docs", "problems"],
        )
    )
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
    app.command("export")(export_cmd)
    app.command("demo")(demo_cmd)
