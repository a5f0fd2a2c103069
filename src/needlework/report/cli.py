"""`needlework report`: a thin wrapper over `needlework.report.report.write_report`."""

from __future__ import annotations

from pathlib import Path

import typer


def report_cmd(study_dir: Path = typer.Argument(..., help="A study folder written by `needlework study`.")) -> None:
    """Write the study's HTML report to DIR/report/index.html (methods and provenance, scores with
    F1, heatmaps, recall vs score with p-values, accuracy by needle depth, example drill-down,
    training loss, knockout, patching; readings from the intervals) and DIR/report/results.csv
    (one row per model x task x set), reading only the study's outputs.

    Example:

        needlework report runs/demo
    """
    from needlework.report.report import write_report

    typer.echo(write_report(study_dir))


def register(app: typer.Typer) -> None:
    app.command("report")(report_cmd)
