"""Every error as the CLI shows it: one line on stderr, options named as flags, an exit code.

The one mapping from exception to words and exit code (as huggingface_hub's `cli/_errors.py`):
library errors carry data and name options with `ref()`; only here do they become `--flags`, and
only here is an exit code chosen. The line's prefix (`PREFIX`) is written by `say()` alone.
"""
from __future__ import annotations

import functools
import sys

import click

from ..errors import DoesNotFitError, FitplanError

PREFIX = "fitplan: error: "

#: Exit codes by exception class, most specific first: 1 "does not fit", 2 every other fitplan error
#: and click's usage errors (a bad flag or choice), 130 Ctrl-C. A `click.ClickException` that is
#: not a usage error keeps the code it carries.
EXIT_CODES: tuple[tuple[type[BaseException], int], ...] = (
    (DoesNotFitError, 1),
    (FitplanError, 2),
    (click.UsageError, 2),
    (KeyboardInterrupt, 130),
    (click.exceptions.Abort, 130),
)


def message(err: BaseException) -> str:
    """The error's one line: a fitplan error with options named as the flags of this command line, a
    click usage error with a pointer to the command's --help."""
    if isinstance(err, FitplanError):
        return " ".join(err.render("cli").split())
    if isinstance(err, click.ClickException):
        ctx = getattr(err, "ctx", None)
        hint = (f" (see 'fitplan {ctx.info_name} --help')" if isinstance(err, click.UsageError) and ctx
                and ctx.parent else "")
        return err.format_message() + hint
    return " ".join(str(err).split())


def exit_code(err: BaseException) -> int:
    """The exit code of `err` (see `EXIT_CODES`)."""
    code = next((code for cls, code in EXIT_CODES if isinstance(err, cls)), None)
    if code is None and isinstance(err, click.ClickException):
        return err.exit_code
    if code is None:
        raise TypeError(f"no exit code for {type(err).__name__}: it is a bug, not a user error")
    return code


def say(text: str) -> None:
    """One error line on stderr."""
    click.echo(f"{PREFIX}{text}", err=True)


def fail(err: BaseException):
    """Print `err`'s line (none for Ctrl-C) and exit with its code."""
    if not isinstance(err, (KeyboardInterrupt, click.exceptions.Abort)):
        say(message(err))
    sys.exit(exit_code(err))


def handle_errors(fn):
    """Every `FitplanError` becomes its one line and exit code; Ctrl-C exits 130 quietly."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (FitplanError, KeyboardInterrupt) as exc:
            fail(exc)

    return wrapper
