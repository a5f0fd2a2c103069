"""The `needlework` command line: a thin layer over one public function per stage.

Each stage module registers its own commands in `register(app)`, so this file only wires them.
"""

from __future__ import annotations

import logging
import sys
import warnings

import typer

from needlework.errors import NeedleworkError

# peft reads transformers' `is_gradient_checkpointing`, which newer transformers deprecate: a warning
# about two libraries' internals that a user can do nothing about
warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)

app = typer.Typer(
    name="needlework",
    help="Synthetic long-context data, fine-tuning, and retrieval-head diagnostics.\n\n"
    "Run `needlework COMMAND --help` for each command's options and examples.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


class _EchoHandler(logging.Handler):
    """needlework's log on stderr, through typer at the time of the call (so CliRunner sees it):
    the library logs what it notices, the command line shows it."""

    def emit(self, record: logging.LogRecord) -> None:
        typer.echo(self.format(record), err=True)


def _show_library_log() -> None:
    lib = logging.getLogger("needlework")
    if not any(isinstance(h, _EchoHandler) for h in lib.handlers):
        lib.addHandler(_EchoHandler())
        lib.setLevel(logging.INFO)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            v = version("needlework")
        except PackageNotFoundError:  # run from a source tree that is not installed
            v = "unknown (not installed)"
        typer.echo(f"needlework {v}")
        raise typer.Exit()


@app.callback()
def _root(
    _v: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print needlework's version and exit."),
) -> None:
    """Synthetic long-context data, fine-tuning, and retrieval-head diagnostics."""
    _show_library_log()


# Each stage exposes `register(app)`; a missing optional stage is skipped so the CLI always starts.
_STAGES = [
    "needlework.data.cli",
    "needlework.heads.cli",
    "needlework.train.cli",
    "needlework.evaluate.cli",
    "needlework.interventions.cli",
    "needlework.study.cli",
    "needlework.report.cli",
]


def _register_all() -> None:
    import importlib

    for mod in _STAGES:
        try:
            m = importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name == mod:
                continue
            raise
        m.register(app)


_register_all()


def main() -> None:
    try:
        app()
    except NeedleworkError as e:
        typer.secho(f"error: {e.problem}", fg="red", err=True)
        if e.fix:
            typer.secho(f"  fix: {e.fix}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
