"""`needlework report`: a thin wrapper over `needlework.report.report.write_report`."""

from __future__ import annotations

from pathlib import Path

import typer


def report_cmd(study_dir: Path = typer.Argument(..., help="A study folder written by `needlework study`.")) -> None:
    """Write the study's HTML report (tables, heatmaps, recall-vs-score scatter, knockout bars,
    patching table) to DIR/report/index.html, reading only the study's outputs.

    Example:

        needlework report runs/demo
    """
    from needlework.report.report import write_report

    typer.echo(write_report(study_dir))


def register(app: typer.Typer) -> None:
    app.command("report")(report_cmd)
