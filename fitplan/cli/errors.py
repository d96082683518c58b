"""Every library error as the CLI shows it: one line on stderr, options named as flags, an exit code.

The one mapping from exception to words and exit code (as huggingface_hub's `cli/_errors.py`):
library errors carry data and name options with `ref()`; only here do they become `--flags`.
"""
from __future__ import annotations

import functools
import sys

import click

from ..errors import DoesNotFitError, FitplanError, TensorParallelError, render_refs

#: Exit codes by exception class, most specific first: 1 "does not fit", 2 everything else.
EXIT_CODES: tuple[tuple[type[BaseException], int], ...] = ((DoesNotFitError, 1), (FitplanError, 2))


#: Errors the CLI words from their fields rather than from the library's sentence.
WORDING = {
    TensorParallelError: lambda e: (f"torchrun with {e.world_size} ranks cannot load this tensor-parallel: "
                                    f"{render_refs(e.reason, 'cli')}; {render_refs(e.fix, 'cli')}"),
}


def message(err: FitplanError) -> str:
    """The error's one line, options named as the flags of this command line."""
    words = next((w for cls, w in WORDING.items() if isinstance(err, cls)), None)
    return " ".join((words(err) if words else err.render("cli")).split())


def exit_code(err: BaseException) -> int:
    return next(code for cls, code in EXIT_CODES if isinstance(err, cls))


def fail(text: str, code: int = 2):
    click.echo(f"fitplan: error: {text}", err=True)
    sys.exit(code)


def handle_errors(fn):
    """Every `FitplanError` becomes its one line and exit code; Ctrl-C exits 130 quietly."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except FitplanError as exc:
            fail(message(exc), exit_code(exc))
        except KeyboardInterrupt:
            sys.exit(130)

    return wrapper
