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


# -- hostile input (issue 21): typed errors whose fields say what was wrong where --------------------------

def _rebuild(cls, data: dict):
    return cls(**data)


class _Declared:
    """Errors built from declared keyword fields (`FIELDS`); picklable (pickle calls `cls(**fields)`)."""

    FIELDS: tuple[str, ...] = ()

    def __reduce__(self):
        return (_rebuild, (type(self), {k: getattr(self, k) for k in self.FIELDS}))


class NotRegularFileError(_Declared, InputError, OSError):
    """A path fitplan reads is a FIFO, a device, a socket or a directory: refused before opening it for
    reading (a FIFO would block for ever, a device read until memory runs out). Carries `path`, `kind`."""

    FIELDS = ("path", "kind")

    def __init__(self, *, path: str, kind: str):
        super().__init__(f"{path} is {kind}, not a regular file: pass the path of a file", path=path, kind=kind)


class FileTooLargeError(_Declared, InputError, OSError):
    """A file is larger than its kind can be (`what`: "config.json", "a profile", ...). Carries `path`,
    `size`, `limit`, `what`."""

    FIELDS = ("path", "size", "limit", "what")

    def __init__(self, *, path: str, size: int, limit: int, what: str):
        cap = f"{limit >> 10} KiB" if limit < 4 << 20 else f"{limit >> 20} MiB"
        super().__init__(f"{path}: larger than {cap} ({size:,} bytes), too large for {what}; is it the right file?",
                         path=path, size=size, limit=limit, what=what)


class HeaderValueError(_Declared, InputError, ValueError):
    """A value in a model file's header (GGUF metadata) has the wrong type or an impossible value.
    Carries `path`, `key`, `value` (its repr, shortened) and `expected`."""

    FIELDS = ("path", "key", "value", "expected")

    def __init__(self, *, path: str, key: str, value: str, expected: str):
        super().__init__(f"{path}: {key} = {value} is not {expected}; the file is corrupt or not a real model, "
                         "re-download or re-convert it", path=path, key=key, value=value, expected=expected)


class ModelChangedError(_Declared, InputError):
    """A local model folder no longer holds what was locked or planned (config.json or safetensors headers
    changed). Carries `path`, `since` ("locked", "planned"), `expected` and `found` (content digests) and
    `fix`."""

    FIELDS = ("path", "since", "expected", "found", "fix")

    def __init__(self, *, path: str, since: str, expected: str, found: str, fix: str):
        super().__init__(f"the model folder {path} changed since it was {since} (its config.json or safetensors "
                         f"headers differ: {expected[:12]} then, {found[:12]} now); {fix}",
                         path=path, since=since, expected=expected, found=found, fix=fix)
