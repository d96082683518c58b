"""The kinds of option, each interpreted once.

An option (`fitplan.options`) declares its kind by name; everything that reads a value of that kind
asks the kind here, and nothing else interprets one:

- `check(value, decl)`: a typed value from Python data (keyword arguments, a profile's YAML), or
  `BadValue` saying what is wrong, worded to follow the option's name (`must be ...`);
- `from_text(text, decl)`: the same from a string (an environment variable, a CLI argument);
- `from_file(value, decl)`: the same from a value a profile's YAML holds;
- `click(decl)`: the click option's keyword arguments for the flag;
- `schema(decl)`: the JSON-Schema fragment of a profile key.

`decl` is the option's declaration: its `choices`, `minimum` and `maximum`.
"""
from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from typing import Any

from ..errors import InputError, OptionError
from .precision import LABEL_PATTERN, NAMES as PRECISION_NAMES, is_label
from .units import parse_fraction_or_bytes

TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
FALSE_WORDS = frozenset({"0", "false", "no", "off"})
SIZE_PATTERN = r"^\s*([0-9]+(\.[0-9]+)?|\.[0-9]+)\s*([bB]|[kKmMgGtT]([iI]?[bB])?)?\s*$"
SIZE_WITH_UNIT = r"^\s*([0-9]+(\.[0-9]+)?|\.[0-9]+)\s*([bB]|[kKmMgGtT]([iI]?[bB])?)\s*$"
_PERCENT = r"^\s*([0-9]{1,2}(\.[0-9]*)?|\.[0-9]+)\s*%\s*$"
_SHARE = r"^\s*(0(\.[0-9]*)?|\.[0-9]+)\s*$"


class BadValue(Exception):
    """A value's problem, worded to follow its name: `must be ...` / `: unknown ...`. The caller
    prefixes where the value came from (a flag, `FILE:LINE: key`, a variable) and raises an
    `InputError`."""

    def __init__(self, text: str):
        super().__init__(text)
        self.text = text

    def after(self, name: str) -> str:
        """`name` followed by the problem: `context must be ...`, `precision: unknown ...`."""
        return f"{name}{'' if self.text.startswith(':') else ' '}{self.text}"


def describe(value: Any) -> str:
    """How an error names a value it did not expect: its type as a file writes it and, if short, the value."""
    if isinstance(value, bool):
        kind = "a boolean"
    elif isinstance(value, Mapping):
        kind = "a mapping"
    elif isinstance(value, (list, tuple)):
        kind = "a list"
    else:
        kind = {str: "a string", int: "an integer", float: "a number", type(None): "nothing (null)"}.get(
            type(value), type(value).__name__)
    if isinstance(value, (str, int, float)) and not isinstance(value, bool) and len(repr(value)) <= 40:
        return f"{kind} {value!r}"
    return kind


def did_you_mean(word: object, choices: Iterable[str]) -> str:
    """` (did you mean 'x'?)` for the closest choice, or an empty string."""
    lowered = {c.lower(): c for c in choices}
    match = difflib.get_close_matches(str(word).lower(), list(lowered), n=1, cutoff=0.6)
    return f" (did you mean '{lowered[match[0]]}'?)" if match else ""


def parse_headroom(value) -> float | int:
    """`10%` or `0.1` -> 0.1 (a share); `1.5GiB` -> bytes. A bare number is a share and must be below 1."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, float):
        if 0 <= value < 1:
            return value
        raise OptionError(f"headroom: a plain number is a share and must be below 1 (e.g. 0.1), got {value}; "
                          "write sizes with a unit, e.g. '1.5GiB'", option="headroom")
    frac, nbytes = parse_fraction_or_bytes(value, what="headroom")
    if frac is not None:
        return frac
    if nbytes is None:
        raise OptionError("headroom: write a share like '10%' or a size like '1.5GiB'", option="headroom")
    return nbytes


class Kind:
    """A kind of option. Subclasses override what differs; `from_text` defaults to `check` of the text."""

    name = ""

    def check(self, value: Any, decl: Mapping) -> Any:
        raise NotImplementedError

    def from_text(self, text: str, decl: Mapping) -> Any:
        return self.check(text, decl)

    def from_file(self, value: Any, decl: Mapping) -> Any:
        return self.check(value, decl)

    def click(self, decl: Mapping) -> dict:
        return {}

    def schema(self, decl: Mapping) -> dict:
        raise NotImplementedError


class Int(Kind):
    name = "int"

    def check(self, value, decl):
        if isinstance(value, bool) or not isinstance(value, int):
            raise BadValue(f"must be a whole number, got {describe(value)}")
        if value < decl["minimum"]:
            raise BadValue(f"must be at least {decl['minimum']}, got {value}")
        if decl["maximum"] is not None and value > decl["maximum"]:
            raise BadValue(f"must be at most {decl['maximum']}, got {value}")
        return value

    def from_text(self, text, decl):
        try:
            value = int(text.replace("_", ""))
        except ValueError:
            raise BadValue(f"must be a whole number, got {text!r}") from None
        return self.check(value, decl)

    def click(self, decl):
        import click

        return {"type": click.IntRange(min=decl["minimum"], max=decl["maximum"])}

    def schema(self, decl):
        return {"type": "integer", "minimum": decl["minimum"], "maximum": decl["maximum"]}


class Enum(Kind):
    """One of `decl["choices"]`, matched case-insensitively."""

    name = "enum"
    what = "value"

    def example(self, decl) -> str:
        return decl["choices"][0]

    def check(self, value, decl):
        return self.from_file(value.lower() if isinstance(value, str) else value, decl)

    def from_file(self, value, decl):
        # a file says exactly what it means (its JSON Schema lists the choices as written)
        if isinstance(value, str) and value in decl["choices"]:
            return value
        if not isinstance(value, str):
            raise BadValue(f"must be a name such as {self.example(decl)!r}, got {value!r}; choose one of "
                           f"{', '.join(decl['choices'])}")
        raise BadValue(f"has unknown {self.what} {value!r}{did_you_mean(value, decl['choices'])}; choose one of "
                       f"{', '.join(decl['choices'])}")

    def click(self, decl):
        import click

        return {"type": click.Choice(decl["choices"], case_sensitive=False)}

    def schema(self, decl):
        return {"type": "string", "enum": list(decl["choices"])}


class PrecisionName(Enum):
    """A precision name, or (`stored_rows`) also a pre-quantized checkpoint's as-stored row (`gptq-int4`)."""

    name = "precision"
    what = "precision"

    def example(self, decl) -> str:
        return "bf16"

    def from_file(self, value, decl):
        if decl.get("stored_rows") and is_label(value):
            return value
        return super().from_file(value, decl)

    def click(self, decl):
        if not decl.get("stored_rows"):
            return super().click(decl)
        return {"metavar": "[" + "|".join(decl["choices"]) + "|STORED-ROW]"}

    def schema(self, decl):
        names = {"type": "string", "enum": list(decl["choices"])}
        if not decl.get("stored_rows"):
            return names
        return {"anyOf": [names, {"type": "string", "pattern": f"^({LABEL_PATTERN})$"}]}


class Headroom(Kind):
    """A share of each GPU's memory (`10%`, `0.1`) or a size (`1.5GiB`)."""

    name = "headroom"

    def check(self, value, decl):
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise BadValue(f"must be a share like '10%' or a size like '1.5GiB', got {describe(value)}")
        try:
            return parse_headroom(value)  # from Python an int is bytes
        except InputError as err:
            raise BadValue(": " + str(err).removeprefix("headroom: ")) from None

    def from_file(self, value, decl):
        # A bare number is a share in a profile, as on the command line: sizes need a unit.
        return self.check(float(value) if isinstance(value, int) and not isinstance(value, bool) else value, decl)

    def schema(self, decl):
        return {"anyOf": [{"type": "number", "minimum": 0, "exclusiveMaximum": 1},
                          {"type": "string", "pattern": _PERCENT},
                          {"type": "string", "pattern": _SHARE},
                          {"type": "string", "pattern": SIZE_WITH_UNIT}]}


class Bool(Kind):
    name = "bool"

    def check(self, value, decl):
        if not isinstance(value, bool):
            raise BadValue(f"must be true or false, got {describe(value)}")
        return value

    def from_text(self, text, decl):
        if text.lower() in TRUE_WORDS | FALSE_WORDS:
            return text.lower() in TRUE_WORDS
        raise BadValue(f"must be one of {', '.join(sorted(TRUE_WORDS | FALSE_WORDS))}, got {text!r}")

    def schema(self, decl):
        return {"type": "boolean"}


class Flag(Bool):
    """A switch that is only ever turned on (`--offline`)."""

    name = "flag"


class String(Kind):
    name = "string"

    def check(self, value, decl):
        if not isinstance(value, str) or not value.strip():
            raise BadValue(f"must be a non-empty string, got {describe(value)} (quote it if YAML read it as a number)")
        return value.strip()

    def schema(self, decl):
        return {"type": "string", "pattern": r"\S"}


class Path(String):
    """A file named on the command line (a hardware file); a `Hardware` object from Python."""

    name = "path"

    def check(self, value, decl):
        return value if not isinstance(value, str) else super().check(value, decl)

    def click(self, decl):
        import click

        return {"type": click.Path(dir_okay=False)}


KINDS: dict[str, Kind] = {k.name: k for k in (Int(), Enum(), PrecisionName(), Headroom(), Bool(), Flag(), String(),
                                              Path())}


def kind(name: str) -> Kind:
    return KINDS[name]


__all__ = ["BadValue", "KINDS", "Kind", "describe", "did_you_mean", "kind", "parse_headroom", "PRECISION_NAMES",
           "SIZE_PATTERN"]
