"""CLI for real data and LLM-written documents: `needlework load` and `needlework write-docs`."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import typer

from needlework.cli_options import MODEL, Options, with_options
from needlework.data.loaders import LoadConfig
from needlework.data.writer import WriterConfig
from needlework.errors import NeedleworkError
from needlework.models.load import ModelConfig

# LoadConfig's fields are the options; the help below says more than the field comments where a
# command-line user needs it
LOAD = Options(
    LoadConfig,
    help={
        "length": "Lengthen each example to this many tokens with documents of other examples.",
        "tokenizer": "Tokenizer that measures --length: hub id, local path, or smollm2.",
        "depth": "With --length: gold documents at 0-100 (% of distractors) or 'random'; default keeps their relative position.",
        "limit": "Keep at most N examples.",
        "limited": "Comma-separated types to keep: MDQA wh-types (who,when,where,what,which,how many,...), "
        "MuSiQue 2hop,3hop,4hop or 3hop1,4hop2,..., SummHay subtopic names.",
        "seed": "Seed for the distractor order and random depths.",
        "chat": "Measure --length with the tokenizer's chat template applied.",
        "insight_threshold": "SummHay: least similarity (weighted content-word F1, 0-1) of an insight's span in a citing document; "
        "below it the document is listed in meta.unlocated_docs (its citation stays). Default calibrated on a "
        "real topic (README 'Real data').",
        "tolerance_frac": "--length may miss by the larger of this fraction of it and --tolerance-tokens.",
        "tolerance_tokens": "--length may miss by the larger of this many tokens and --tolerance-frac of it.",
    },
)


@with_options(cfg=LOAD)
def load_cmd(
    path: str | None = typer.Argument(
        None,
        help="File to read (.jsonl, .jsonl.gz; SummHay: topic_*.json or its folder; RULER: a task's validation.jsonl or the "
        "data folder of <task>/validation.jsonl). Not used with hf:NAME.",
    ),
    fmt: str = typer.Option(
        ..., "--format", "-f", help="mdqa | musique | summhay | ruler | hf:NAME[:SPLIT] (rows in one of the first three shapes)."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Output JSONL of needlework records (written atomically)."),
    cfg: LoadConfig = LOAD,
) -> None:
    """Load real data (SPEC §3 formats, and RULER's generated files) into needlework records, with needle spans in gold passages.

    Examples:

      needlework load --format mdqa nq-open-20_total_documents_gold_at_9.jsonl.gz --out mdqa.jsonl

      needlework load -f musique musique_ans_v1.0_dev.jsonl --out mus.jsonl --length 4096 --limited 2hop

      needlework load -f summhay data/ --out summhay.jsonl --limit 50

      needlework load -f hf:dgslibisey/MuSiQue:validation --out mus.jsonl

      needlework load -f ruler RULER/benchmark_root/llama3/synthetic/4096/data --out ruler.jsonl --limited niah_single_1,vt,qa_1
    """
    from needlework.data.loaders import load_real_report
    from needlework.data.records import write_jsonl

    if cfg.depth is not None and cfg.depth != "random":
        cfg = dataclasses.replace(cfg, depth=_float(str(cfg.depth)))
    res = load_real_report(fmt, path, cfg)
    for reason, n in sorted(res.skipped.items(), key=lambda kv: -kv[1]):
        typer.secho(f"skipped {n}: {reason}", fg="yellow", err=True)
    if not res.records:
        raise NeedleworkError(
            f"no example of {path or fmt} could be loaded ({sum(res.skipped.values())} skipped, reasons above)",
            "check --format, --limited and --length (a longer --length needs more examples to draw distractors from)",
        )
    n = write_jsonl(out, res.records)
    typer.echo(f"read {res.n_read} examples, wrote {n} records to {out}")
    if res.span_summary():
        typer.echo(res.span_summary())


def _float(s: str) -> float:
    try:
        return float(s)
    except ValueError:
        raise NeedleworkError(f"--depth {s!r} is not a number or 'random'", "give e.g. --depth 50 or --depth random") from None


WRITER = Options(
    WriterConfig,
    fields=("kind", "model", "base_url", "api_key_env", "max_tokens", "temperature", "concurrency", "max_retries", "cache_dir", "cache"),
    flags={"kind": ("--writer",)},
    help={
        "base_url": "OpenAI-compatible endpoint, ending in /v1.",
        "max_tokens": "Most tokens per document.",
        "concurrency": "Requests in flight at once (openai).",
        "max_retries": "Retries on 429/5xx/connection errors, with exponential backoff.",
        "cache_dir": "Completion cache (default: ~/.cache/needlework/writer).",
        "cache": "Read and write the completion cache (--no-cache: neither).",
    },
)


@with_options(cfg=WRITER)
def write_docs_cmd(
    out: Path = typer.Option(..., "--out", "-o", help="Output JSONL: one {topic, text} object per document."),
    topic: list[str] | None = typer.Option(None, "--topic", "-t", help="A topic to write about (repeatable)."),
    topics: Path | None = typer.Option(None, help="Text file with one topic per line."),
    template: str = typer.Option("Write a factual-sounding article of about 200 words about {topic}.", help="Prompt; {topic} is replaced."),
    cfg: WriterConfig = WRITER,
) -> None:
    """Write haystack documents with an LLM (cached on disk by request content).

    Examples:

      OPENAI_API_KEY=... needlework write-docs --topic "a coastal town" --topic "a chess club" --out docs.jsonl \\
          --model gpt-4o-mini --base-url https://api.openai.com/v1

      needlework write-docs --topics topics.txt --writer local --model smollm2 --max-tokens 200 --out docs.jsonl
    """
    from needlework.data.writer import clean_document, make_writer
    from needlework.io import write_text

    names = list(topic or [])
    if topics is not None:
        if not topics.exists():
            raise NeedleworkError(f"{topics}: no such file", "give a text file with one topic per line")
        names += [ln.strip() for ln in topics.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if not names:
        raise NeedleworkError("no topics given", "pass --topic TEXT (repeatable) or --topics FILE")
    if "{topic}" not in template:
        raise NeedleworkError("--template has no {topic} placeholder", "e.g. --template 'Write a news story about {topic}.'")
    w = make_writer(cfg)
    texts = w.write_documents([template.format(topic=n) for n in names])  # concurrent, cached
    rows = [{"topic": n, "text": clean_document(t)} for n, t in zip(names, texts)]
    write_text(out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    typer.echo(f"wrote {len(rows)} documents to {out} ({w.n_requests} requests, {w.n_cache_hits} from cache)")


@with_options(model=MODEL)
def serve_writer_cmd(
    host: str = typer.Option("127.0.0.1", help="Address to listen on."),
    port: int = typer.Option(8000, help="Port to listen on."),
    model: ModelConfig = MODEL,
) -> None:
    """Serve a local model on an OpenAI-compatible /v1/chat/completions endpoint (until Ctrl-C).

    Example:

      needlework serve-writer --port 8000 &  needlework write-docs --topic "a harbour" --out docs.jsonl
    """
    import time

    from needlework.data.writer import serve_local
    from needlework.models.load import load_model

    m, tok = load_model(model)
    srv = serve_local(m, tok, host=host, port=port)
    typer.echo(f"serving {model.name} at {srv.base_url} (Ctrl-C stops)")
    try:
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        srv.close()


def register(app: typer.Typer) -> None:
    app.command("load")(load_cmd)
    app.command("write-docs")(write_docs_cmd)
    app.command("serve-writer")(serve_writer_cmd)
