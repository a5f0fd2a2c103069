"""One error type for bad user input: it names the problem and the fix, and the CLI prints it
without a traceback."""

from __future__ import annotations


class NeedleworkError(Exception):
    """A user-facing error: `problem` says what is wrong, `fix` says what to do about it."""

    def __init__(self, problem: str, fix: str | None = None):
        self.problem = problem
        self.fix = fix
        super().__init__(problem if not fix else f"{problem}\n  fix: {fix}")


class OptionError(NeedleworkError):
    """A bad value of one option of a stage config; `key` names the option (its dataclass field,
    which is also its YAML key), so a study config can report the full key path."""

    def __init__(self, key: str, problem: str, fix: str | None = None):
        self.key = key
        super().__init__(problem, fix)
