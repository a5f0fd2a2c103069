"""`needlework study`: a thin wrapper over `needlework.study.engine.run_study`."""

from __future__ import annotations

from pathlib import Path

import typer


def study_cmd(
    config: Path = typer.Argument(..., help="Study config (YAML), e.g. configs/demo.yaml."),
    overrides: list[str] | None = typer.Argument(
        None,
        help="KEY.PATH=VALUE settings over the config, the value read as YAML, e.g. sizes.n_train=100 "
        "early.fractions=[0.25,0.5,1.0]; the whole config is validated after them and saved with the study.",
        show_default=False,
    ),
    out: Path | None = typer.Option(None, "--out", "-o", help="Study folder (default: runs/<config name>)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan and what is cached; run nothing."),
    only: str | None = typer.Option(
        None,
        "--only",
        help="Comma-separated stages to run (data, train, probe, gate, evaluate, score, "
        "compare, knockout, patch, analysis, report); others come from the cache.",
    ),
    workers: int = typer.Option(
        1,
        "--workers",
        "-w",
        min=1,
        help="Stage processes side by side (they share one GPU, each held to 1/N of its memory); "
        "independent stages of a small model overlap. Results do not change.",
    ),
) -> None:
    """Run the whole study of a config: data, training, evaluation, head scores, comparison with the
    reference model, knockout, patching, correlations, and the HTML report. Resumable: every stage
    is cached under OUT/stages/ by a hash of its inputs, so a rerun (also after a crash or kill)
    skips what is done.

    Example:

        needlework study configs/demo.yaml --out runs/demo

        needlework study configs/demo.yaml --out runs/demo --dry-run

        needlework study configs/demo.yaml --out runs/demo --only knockout,analysis,report

        needlework study configs/gpu-mdqa.yaml --out runs/mdqa --workers 4   # one GPU, 4 stages at a time

        needlework study configs/gpu-mdqa.yaml early.fractions=[0.25,0.5,1.0] early.probe_n=64 --out runs/mdqa-early
    """
    from needlework.study.config import load_config
    from needlework.study.engine import run_study

    cfg = load_config(config, overrides or ())
    out = out or Path("runs") / config.stem
    stages = {s.strip() for s in only.split(",") if s.strip()} if only else None
    run_study(cfg, out, dry_run=dry_run, only=stages, workers=workers)
    from needlework.artifacts import STUDY_INDEX

    if not dry_run and (out / STUDY_INDEX).exists():
        from needlework.report.report import summary_lines

        typer.echo("\n".join(summary_lines(out)))


def register(app: typer.Typer) -> None:
    app.command("study")(study_cmd)
