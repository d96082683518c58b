"""Errors a user can act on: a small, written-out tree (as httpx's), each class with its fields.

Every exception here carries one line saying what is wrong and how to fix it, and the data a caller
acts on as declared fields (`err.option`, `err.path`, `err.repo_id`, `err.status`, ...). Each class
also derives from the builtin exception a caller would catch (`InputError` is a `ValueError`,
`HubError` an `OSError`, ...). Fields are keyword arguments, required unless the class gives them a
default, so a raise site cannot forget one (tests/test_errors.py also checks every raise site in the
source). Errors pickle with their fields (they cross process boundaries in multiprocessing).
The CLI words them and picks the exit code in one map (`fitplan.cli.errors`); the Python API lets
them propagate. Anything else escaping is a bug.
"""
from __future__ import annotations

import inspect
from typing import Any


_OPEN, _CLOSE, _SUBJECT = "\x02", "\x03", "\x04"
_UNSET = object()


def ref(name: str, value: Any = _UNSET) -> str:
    """An option named inside a message. The API renders it `context=8192` (`str(err)`), the CLI
    `--context 8192` (`fitplan.cli.errors`), so the library never speaks in flags. `value` True
    renders as a bare flag on the CLI (`--offline`)."""
    shown = "" if value is _UNSET else f"={value}"
    return f"{_OPEN}{name}{shown}{_CLOSE}"


def subject(name: str) -> str:
    """An option as the subject of a sentence (`context must be at least 1`): the API renders it
    `context`, the CLI `--context`, a profile `'context:'`."""
    return f"{_OPEN}{_SUBJECT}{name}{_CLOSE}"


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
        if name.startswith(_SUBJECT):
            name = name[1:]
            out.append(name if style == "api" else f"'{name}:'" if style == "profile" else flag_of(name))
        elif style == "api":
            out.append(f"{name}={value}")
        elif style == "profile":  # a key of a deployment profile (`fitplan lock` takes no option flags)
            shown = {"True": "true", "False": "false"}.get(value, value)
            out.append(f"'{name}: {shown}'" if eq else f"'{name}:'")
        else:
            out.append(flag_of(name) + (f" {value}" if eq and value != "True" else ""))
        i = b + 1
    return "".join(out) + text[i:]


_MISSING = object()


def _restore(cls: type["FitplanError"], message: str, fields: dict) -> "FitplanError":
    """Unpickle: the class called as a raise site calls it."""
    return cls(message, **fields)


class FitplanError(Exception):
    """Bad input or an environment problem the user can fix. `str(err)` is the whole message, one
    line, naming options as keyword arguments; `render("cli")` names them as flags. Abstract: every
    raise names the subclass that says what kind of problem it is, with that class's fields.

    A subclass declares its fields as annotations (`repo_id: str | None`): without a class-level
    default a field is a required keyword argument (None is a value, given on purpose), with one it
    is optional. `fields()` lists them, base classes' first, in the order written."""

    def __init__(self, message: str, **fields: Any):
        if type(self) in _ABSTRACT:
            raise TypeError(f"{type(self).__name__} is a base class: raise one of its subclasses "
                            f"({', '.join(c.__name__ for c in type(self).__subclasses__())})")
        declared = type(self).fields()
        unknown = sorted(set(fields) - set(declared))
        missing = [f for f in type(self).required_fields() if f not in fields]
        if unknown or missing:
            raise TypeError(f"{type(self).__name__}() " + "; ".join(
                ([f"missing required keyword argument(s): {', '.join(missing)}"] if missing else [])
                + ([f"got unexpected keyword argument(s): {', '.join(unknown)}"] if unknown else [])))
        super().__init__(message)
        self.message = message
        for name in declared:
            setattr(self, name, fields.get(name, getattr(type(self), name, None)))

    @classmethod
    def fields(cls) -> tuple[str, ...]:
        """Every declared field, base classes' first, in declaration order."""
        out: list[str] = []
        for klass in reversed(cls.__mro__):
            for name in inspect.get_annotations(klass):  # the class's own, in the order written
                if name not in out:
                    out.append(name)
        return tuple(out)

    @classmethod
    def required_fields(cls) -> tuple[str, ...]:
        """The fields a raise site must give (declared without a default)."""
        return tuple(f for f in cls.fields() if getattr(cls, f, _MISSING) is _MISSING)

    @property
    def data(self) -> dict[str, Any]:
        """The fields and their values."""
        return {name: getattr(self, name) for name in self.fields()}

    def __reduce__(self):
        return _restore, (type(self), self.message, self.data)

    def __str__(self) -> str:
        return render_refs(self.message, "api")

    def render(self, style: str) -> str:
        return render_refs(self.message, style)

    def __repr__(self) -> str:
        shown = "".join(f", {k}={v!r}" for k, v in self.data.items())
        return f"{type(self).__name__}({self.message!r}{shown})"


class InputError(FitplanError, ValueError):
    """Malformed or contradictory input: options, files (YAML, config.json, headers). Abstract: raise
    `OptionError`, `FileError` or `ConfigError`; catch `InputError` (or `ValueError`)."""


class OptionError(InputError):
    """An option's value is wrong or contradicts another: a keyword of `plan()`/`load()`, a flag, a
    profile key or a FITPLAN_* variable. `option` is its name as declared (`context`, `gpu`)."""

    option: str


class FileError(InputError):
    """A file is unreadable or malformed (a profile, lock, hardware file, safetensors or GGUF header,
    an output that would be overwritten). `path` names it as the user gave it; `line` (1-based) and
    `key` say where in it, when known."""

    path: str
    line: int | None = None
    key: str | None = None

    @staticmethod
    def fields_of(err: BaseException, path: str) -> dict[str, Any]:
        """The location of `err` when it is a `FileError`, else `path` alone: for an error that wraps
        another about the same file."""
        if isinstance(err, FileError):
            return {"path": err.path, "line": err.line, "key": err.key}
        return {"path": path}


class ConfigError(InputError):
    """A model's config.json (or its `quantization_config`) holds a value fitplan refuses. `key` is the
    field, dotted inside nested objects (`quantization_config.group_size`); None when the refusal names
    no single field (transformers' own validation, a config that is not an object)."""

    key: str | None


class ModelNotFoundError(FitplanError, LookupError):
    """The model id or folder does not exist (404, no such path). `repo_id` for a Hub id, `path` for
    a folder: one of them is None. `status` is the Hub's HTTP status, when it answered; `revision` the
    revision asked for (None: the default branch)."""

    repo_id: str | None
    path: str | None
    status: int | None = None
    revision: str | None = None


class HubError(FitplanError, OSError):
    """The Hub could not be reached or answered nonsense (timeouts, 5xx, invalid JSON, offline).
    `repo_id` is the repo asked for (None when no repo is at fault), `status` the HTTP status (None
    without an answer), `url` the endpoint or file asked, `retry_after` the seconds a 429 asked to wait, `revision` the
    revision asked for."""

    repo_id: str | None
    status: int | None
    url: str | None = None
    retry_after: float | None = None
    revision: str | None = None


class GatedModelError(FitplanError, PermissionError):
    """The repo exists but needs accepted terms or a token (401/403). `status` is None when the
    Hub's answer carried none."""

    repo_id: str
    status: int | None
    revision: str | None = None


class UnsupportedModelError(FitplanError, NotImplementedError):
    """fitplan (or transformers) cannot plan this architecture (unknown model_type, remote code, an
    encoder-decoder, a layout fitplan does not know). `model_type` names it where known: the
    config's model_type, a model class, or a quantization scheme."""

    model_type: str | None


class LibraryChangedError(UnsupportedModelError):
    """A library fitplan reads (transformers, bitsandbytes) answered in a way fitplan does not know on
    the installed version, so a plan would miss a term. Carries `library`, `version` and `what`."""

    model_type: str | None = None
    library: str
    version: str
    what: str

    def __init__(self, message: str | None = None, *, library: str, version: str, what: str,
                 model_type: str | None = None):
        text = (f"{library} {version}: {what}; fitplan is tested with the versions in its docs/compatibility.md: "
                "install one of those, or report this with the model id") if message is None else message
        super().__init__(text, library=library, version=version, what=what, model_type=model_type)


class HardwareError(FitplanError, ValueError):
    """Unknown GPU name, invalid hardware description, no usable GPU, or hardware that changed since a
    lock. `gpu` is the GPU name at fault, `path` the hardware file; either may be None."""

    gpu: str | None
    path: str | None


class NoGpuError(HardwareError):
    """The command measures GPU memory and this machine has no CUDA GPU."""

    gpu: str | None = None
    path: str | None = None


class DependencyError(FitplanError, ImportError):
    """An optional package a step needs is not installed. `package` is its pip name."""

    package: str


class DoesNotFitError(FitplanError, RuntimeError):
    """Raised by `load()` before any allocation when no plan fits. `model_id` is the model planned."""

    model_id: str


_ABSTRACT = (FitplanError, InputError)


def error_classes() -> tuple[type[FitplanError], ...]:
    """Every concrete error class of fitplan, this module's and its subclasses elsewhere (imported)."""
    out, todo = [], [FitplanError]
    while todo:
        cls = todo.pop(0)
        if cls not in _ABSTRACT and cls not in out:
            out.append(cls)
        todo.extend(cls.__subclasses__())
    return tuple(out)
