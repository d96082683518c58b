"""Errors a user can act on.

Every exception here carries one line saying what is wrong and how to fix it. The CLI prints
that line and exits 2; the Python API lets it propagate. Anything else escaping is a bug.
"""
from __future__ import annotations

from typing import Any


_OPEN, _CLOSE = "\x02", "\x03"
_UNSET = object()


def ref(name: str, value: Any = _UNSET) -> str:
    """An option named inside a message. The API renders it `context=8192` (`str(err)`), the CLI
    `--context 8192` (`fitplan.cli.errors`), so the library never speaks in flags. `value` True
    renders as a bare flag on the CLI (`--offline`)."""
    shown = "" if value is _UNSET else f"={value}"
    return f"{_OPEN}{name}{shown}{_CLOSE}"


def flag_of(name: str) -> str:
    """The CLI flag of option `name`: `min_precision` -> `--min-precision`."""
    return "--" + name.replace("_", "-")


def render_refs(text: str, style: str) -> str:
    """`text` with its `ref()` markers rendered in `style`: "api" (`context=8192`), "cli"
    (`--context 8192`) or "profile" (`'context: 8192'`)."""
    out, i = [], 0
    while (a := text.find(_OPEN, i)) >= 0:
        b = text.find(_CLOSE, a)
        name, eq, value = text[a + 1:b].partition("=")
        out.append(text[i:a])
        if style == "api":
            out.append(f"{name}={value}")
        elif style == "profile":  # a key of a deployment profile (`fitplan lock` takes no option flags)
            shown = {"True": "true", "False": "false"}.get(value, value)
            out.append(f"'{name}: {shown}'" if eq else f"'{name}:'")
        else:
            out.append(flag_of(name) + (f" {value}" if eq and value != "True" else ""))
        i = b + 1
    return "".join(out) + text[i:]


class FitplanError(Exception):
    """Bad input or an environment problem the user can fix. `str(err)` is the whole message, one
    line, naming options as keyword arguments; `render("cli")` names them as flags. Keyword
    arguments become attributes (`err.repo_id`, `err.status`, `err.option`): data to act on."""

    exit_code = 2

    def __init__(self, message: str = "", **data: Any):
        super().__init__(message)
        self.message = message
        self.data = data
        for key, value in data.items():
            setattr(self, key, value)

    def __str__(self) -> str:
        return render_refs(self.message, "api")

    def render(self, style: str) -> str:
        return render_refs(self.message, style)


class InputError(FitplanError):
    """Malformed or contradictory input: flags, YAML, config.json."""


class ModelNotFoundError(FitplanError):
    """The model id or folder does not exist (404, no such path)."""


class GatedModelError(FitplanError):
    """The repo exists but needs accepted terms or a token (401/403)."""


class HubError(FitplanError):
    """The Hub could not be reached or answered nonsense (timeouts, 5xx, invalid JSON, offline)."""


class UnsupportedModelError(FitplanError):
    """transformers cannot build this architecture (unknown model_type, remote code not allowed)."""


class HardwareError(FitplanError):
    """Unknown GPU name, invalid hardware file, or hardware that changed since a lock."""


class DoesNotFitError(FitplanError):
    """Raised by `load()` before any allocation when no plan fits. The CLI's `check` exits 1 instead."""

    exit_code = 1


class LibraryChangedError(UnsupportedModelError):
    """A library fitplan reads (transformers, bitsandbytes) answered in a way fitplan does not know on
    the installed version, so a plan would miss a term. Carries `library`, `version` and `what`."""

    def __init__(self, *, library: str, version: str, what: str):
        super().__init__(f"{library} {version}: {what}; fitplan is tested with the versions in its "
                         f"docs/compatibility.md: install one of those, or report this with the model id",
                         library=library, version=version, what=what)


class PlannedShapeError(InputError):
    """A generate() call outside what the loaded model was planned and sized for: longer than the
    planned context (prompt plus new tokens) or more sequences than the planned batch, with a static
    cache allocated for exactly those. Carries `tokens`, `context`, `batch` and `planned_batch`."""
