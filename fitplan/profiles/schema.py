"""The deployment-profile schema: keys, kinds, defaults and docs, read off `fitplan.options`.

`SCHEMA` is the one definition of what a profile may hold: the validator (`check_value`), the JSON
Schema (`profiles/fitplan-profile.schema.json`, `json_schema()`) and `profile init`'s comments are
all read off it, and it is itself derived from the option declarations, so a new option appears
in profiles, flags and the environment at once.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, fields
from typing import Any

from ..errors import InputError
from ..model import prequant
from ..hardware.catalogue import MAX_GPUS
from ..hardware.software import json_schema as software_schema
from ..planning.precision import NAMES as PRECISION_NAMES
from ..options import OPTION_KEYS, SECTIONS, PlanOptions, SourceOptions, env_var, parse_headroom
from ..yamlsource import describe, did_you_mean

MODEL_ENV = "FITPLAN_MODEL"
_TRUE_WORDS = {"1", "true", "yes", "on"}
_FALSE_WORDS = {"0", "false", "no", "off"}
MODEL_KEY = "model"
_SIZE_PATTERN = r"^\s*([0-9]+(\.[0-9]+)?|\.[0-9]+)\s*([bB]|[kKmMgGtT]([iI]?[bB])?)?\s*$"
_SIZE_WITH_UNIT = r"^\s*([0-9]+(\.[0-9]+)?|\.[0-9]+)\s*([bB]|[kKmMgGtT]([iI]?[bB])?)\s*$"
_PERCENT = r"^\s*([0-9]{1,2}(\.[0-9]*)?|\.[0-9]+)\s*%\s*$"
_SHARE = r"^\s*(0(\.[0-9]*)?|\.[0-9]+)\s*$"
_CC_PATTERN = r"^\s*\d{1,2}\.\d\s*$"


# -- the schema ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Field:
    """One profile key. `kind` is string | int | enum | bool | headroom | hardware | section."""

    key: str
    kind: str
    doc: str
    default: str
    minimum: int | None = None
    maximum: int | None = None
    choices: tuple[str, ...] = ()
    fields: tuple["Field", ...] = ()


def _option_field(f) -> Field:
    """A profile key from an option's declaration (`fitplan.options`)."""
    m = f.metadata
    kind = {"flag": "bool"}.get(m["kind"], m["kind"])
    return Field(f.name, kind, m["help"], m["default_text"], m["minimum"], m["maximum"], tuple(m["choices"]))


def _schema() -> tuple[Field, ...]:
    """The profile's keys, read off the option declarations: options whose `profile` path has one
    part are top-level keys, two parts put them in that section (`workload.context`)."""
    declared = [f for f in fields(PlanOptions) + fields(SourceOptions) if f.metadata["profile"]]
    top = [Field("model", "string", "Hub repo id ('org/name') or local folder of the model.",
                 f"none: pass MODEL or set {MODEL_ENV}")]
    top += [_option_field(f) for f in declared if len(f.metadata["profile"]) == 1]
    sections = {name: Field(name, "section", doc, "", fields=tuple(
        _option_field(f) for f in declared if f.metadata["profile"][:1] == (name,) and len(f.metadata["profile"]) == 2))
        for name, doc in SECTIONS.items()}
    hardware = Field("hardware", "hardware",
                     "'auto' probes this machine; or 'gpus:' (and optional 'cpu_ram:') as in a --hardware file.",
                     "auto")
    return (*top, sections["workload"], hardware, sections["constraints"])


SCHEMA: tuple[Field, ...] = _schema()
HARDWARE_KEYS = ("gpus", "cpu_ram", "software")
#: Each setting by its flag / `overrides` / `fitplan.plan()` name -> its path in the profile
#: (`context` -> ("workload", "context")). Hardware is not a plain setting: see `_hardware_for`.
SETTINGS = {g.key: (f.key, g.key) if f.kind == "section" else (f.key,)
            for f in SCHEMA for g in (f.fields or (f,)) if g.kind != "hardware"}
#: FITPLAN_* variables: the model's, and each option's that declares one (`fitplan.options.env_var`).
ENV_VARS = {name: var for name in (MODEL_KEY, *SETTINGS, "gpu")
            if (var := MODEL_ENV if name == MODEL_KEY else env_var(name)) and var.startswith("FITPLAN_")}
#: What flags / keyword arguments may override in a profile: every declared option.
OVERRIDE_KEYS = OPTION_KEYS


def field_for(name: str) -> Field:
    """The schema field behind a setting name (`context` -> workload.context)."""
    path = SETTINGS[name]
    found = next(f for f in SCHEMA if f.key == path[0])
    for key in path[1:]:
        found = next(f for f in found.fields if f.key == key)
    return found


class _Bad(Exception):
    """A value's problem, worded to follow its name: `must be ...` / `: unknown ...`."""


def check_value(f: Field, value: Any) -> Any:
    """A typed value for field `f`, or `_Bad` saying what is wrong. Shared by the file and the environment."""
    if f.kind == "string":
        if not isinstance(value, str) or not value.strip():
            raise _Bad(f"must be a non-empty string, got {describe(value)} (quote it if YAML read it as a number)")
        return value.strip()
    if f.kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Bad(f"must be a whole number, got {describe(value)}")
        if value < f.minimum:
            raise _Bad(f"must be at least {f.minimum}, got {value}")
        if value > f.maximum:
            raise _Bad(f"must be at most {f.maximum}, got {value}")
        return value
    if f.kind in ("enum", "precision"):
        if f.kind == "precision" and prequant.is_label(value):  # a pre-quantized checkpoint's stored row
            return value
        if not isinstance(value, str) or value not in f.choices:
            hint = did_you_mean(value, f.choices) if isinstance(value, str) else ""
            shown = repr(value) if isinstance(value, str) else describe(value)
            what = "precision" if f.choices == PRECISION_NAMES else "value"
            raise _Bad(f"has unknown {what} {shown}{hint}; choose one of {', '.join(f.choices)}")
        return value
    if f.kind == "bool":
        if not isinstance(value, bool):
            raise _Bad(f"must be true or false, got {describe(value)}")
        return value
    if f.kind == "headroom":
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise _Bad(f"must be a share like '10%' or a size like '1.5GiB', got {describe(value)}")
        try:
            # A bare number is a share in a profile, as on the command line: sizes need a unit.
            return parse_headroom(float(value) if isinstance(value, int) else value)
        except InputError as err:
            raise _Bad(": " + str(err).removeprefix("headroom: ")) from None
    raise AssertionError(f"unknown field kind {f.kind}")



def _from_text(f: Field, text: str) -> Any:
    if f.kind == "int":
        try:
            return int(text.replace("_", ""))
        except ValueError:
            raise _Bad(f"must be a whole number, got {text!r}") from None
    if f.kind == "bool":
        if text.lower() in _TRUE_WORDS | _FALSE_WORDS:
            return text.lower() in _TRUE_WORDS
        raise _Bad(f"must be one of {', '.join(sorted(_TRUE_WORDS | _FALSE_WORDS))}, got {text!r}")
    if f.kind in ("enum", "precision"):
        return text.lower()
    return text



# -- the JSON Schema ------------------------------------------------------------------------------

def json_schema() -> dict:
    """JSON Schema (draft 2020-12) of a profile, generated from `SCHEMA`; shipped for editors and CI."""
    size = {"description": "Bytes: an integer, or a string with a unit: '24GiB', '24GB', '24000MiB'.",
            "anyOf": [{"type": "integer", "minimum": 0}, {"type": "number", "minimum": 0},
                      {"type": "string", "pattern": _SIZE_PATTERN}]}
    cc = {"description": "Compute capability 'major.minor', e.g. \"8.6\".",
          "anyOf": [{"type": "string", "pattern": _CC_PATTERN}, {"type": "number"}]}
    count = {"type": "integer", "minimum": 1, "maximum": MAX_GPUS, "description": "How many such GPUs."}
    gpu = {"description": "A catalogue name (`fitplan gpus`), optionally counted ('2x a100-80gb'), or a mapping.",
           "anyOf": [
               {"type": "string", "pattern": r"\S"},
               {"type": "object", "additionalProperties": False, "required": ["gpu"],
                "properties": {"gpu": {"type": ["string", "integer"], "description": "Catalogue name."},
                               "free": {"$ref": "#/$defs/size"}, "count": count}},
               {"type": "object", "additionalProperties": False,
                "required": ["name", "memory", "compute_capability"],
                "properties": {"name": {"type": "string", "pattern": r"\S", "description": "NVML name."},
                               "memory": {"$ref": "#/$defs/size"},
                               "compute_capability": {"$ref": "#/$defs/compute_capability"},
                               "bandwidth_gbs": {"type": "number", "minimum": 1, "maximum": 100000},
                               "free": {"$ref": "#/$defs/size"}, "count": count}},
           ]}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "fitplan deployment profile",
        "description": "Generated by `fitplan profile schema` from fitplan/profile.py; see docs/profiles.md.",
        "type": "object",
        "additionalProperties": False,
        "properties": {f.key: _field_schema(f) for f in SCHEMA},
        "$defs": {"size": size, "compute_capability": cc, "gpu": gpu},
    }


def _field_schema(f: Field) -> dict:
    base: dict = {"description": f.doc + (f" Default: {f.default}." if f.default else "")}
    if f.kind == "string":
        return {**base, "type": "string", "pattern": r"\S"}
    if f.kind == "int":
        return {**base, "type": "integer", "minimum": f.minimum, "maximum": f.maximum}
    if f.kind == "enum":
        return {**base, "type": "string", "enum": list(f.choices)}
    if f.kind == "precision":
        return {**base, "anyOf": [{"type": "string", "enum": list(f.choices)},
                                  {"type": "string", "pattern": f"^({prequant.LABEL_PATTERN})$"}]}
    if f.kind == "bool":
        return {**base, "type": "boolean"}
    if f.kind == "headroom":
        return {**base, "anyOf": [{"type": "number", "minimum": 0, "exclusiveMaximum": 1},
                                  {"type": "string", "pattern": _PERCENT},
                                  {"type": "string", "pattern": _SHARE},
                                  {"type": "string", "pattern": _SIZE_WITH_UNIT}]}
    if f.kind == "hardware":
        return {**base, "anyOf": [
            {"const": "auto"},
            {"type": "object", "additionalProperties": False, "required": ["gpus"],
             "properties": {"gpus": {"type": "array", "maxItems": MAX_GPUS, "items": {"$ref": "#/$defs/gpu"}},
                            "cpu_ram": {"$ref": "#/$defs/size"}, "software": software_schema()}}]}
    if f.kind == "section":
        return {**base, "type": "object", "additionalProperties": False, "minProperties": 1,
                "properties": {g.key: _field_schema(g) for g in f.fields}}
    raise AssertionError(f"unknown field kind {f.kind}")


def schema_text() -> str:
    return json.dumps(json_schema(), indent=2, ensure_ascii=False) + "\n"
