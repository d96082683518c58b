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

from ..hardware.catalogue import BANDWIDTH_GBS, HARDWARE_FILE_KEYS, MAX_GPUS
from ..hardware.software import json_schema as software_schema
from ..options import OPTION_KEYS, SECTIONS, PlanOptions, SourceOptions, env_var
from ..vocab.kinds import SIZE_PATTERN, kind

MODEL_ENV = "FITPLAN_MODEL"
MODEL_KEY = "model"
_CC_PATTERN = r"^\s*\d{1,2}\.\d\s*$"


# -- the schema ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Field:
    """One profile key. `kind` is an option kind (`fitplan.vocab.kinds`; `decl` is the option's
    declaration), or the profile's own: string (the model) | hardware | section."""

    key: str
    kind: str
    doc: str
    default: str
    decl: Any = None
    fields: tuple["Field", ...] = ()


def _option_field(f) -> Field:
    """A profile key from an option's declaration (`fitplan.options`)."""
    m = f.metadata
    return Field(f.name, m["kind"], m["help"], m["default_text"], m)


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
                     "'auto' probes this machine; or 'gpus:' (and optional 'cpu_ram:', 'nodes:', ...) as in a "
                     "--hardware file.",
                     "auto")
    return (*top, sections["workload"], hardware, sections["constraints"], sections["serving"])


SCHEMA: tuple[Field, ...] = _schema()
HARDWARE_KEYS = HARDWARE_FILE_KEYS
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


def check_value(f: Field, value: Any) -> Any:
    """A typed value for field `f` from a profile's YAML, or `BadValue` saying what is wrong."""
    return kind(f.kind).from_file(value, f.decl)


def from_text(f: Field, text: str) -> Any:
    """A typed value for field `f` from an environment variable, or `BadValue`."""
    return kind(f.kind).from_text(text, f.decl)


# -- the JSON Schema ------------------------------------------------------------------------------

def json_schema() -> dict:
    """JSON Schema (draft 2020-12) of a profile, generated from `SCHEMA`; shipped for editors and CI."""
    size = {"description": "Bytes: an integer, or a string with a unit: '24GiB', '24GB', '24000MiB'.",
            "anyOf": [{"type": "integer", "minimum": 0}, {"type": "number", "minimum": 0},
                      {"type": "string", "pattern": SIZE_PATTERN}]}
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
                               "bandwidth_gbs": {"type": "number", **BANDWIDTH_GBS},
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


def _hardware_properties() -> dict:
    """The schema of each of `HARDWARE_FILE_KEYS` (the keys of a hardware file and of a profile's `hardware:`),
    in their order; a key added there without a schema here fails at import of the JSON Schema."""
    schemas = {"gpus": {"type": "array", "maxItems": MAX_GPUS, "items": {"$ref": "#/$defs/gpu"}},
               "cpu_ram": {"$ref": "#/$defs/size"},
               "unified": {"type": "boolean", "description": "The CPU and GPU share cpu_ram (Apple silicon)."},
               "software": software_schema(),
               "nodes": {"type": "integer", "minimum": 1, "maximum": MAX_GPUS,
                         "description": "Machines the GPUs are spread over, each with the same share of them "
                                        "(serving-engine plans across nodes; docs/engines.md). Default: 1."}}
    if set(schemas) != set(HARDWARE_FILE_KEYS):
        raise AssertionError(f"profile schema: hardware keys {sorted(schemas)} are not {sorted(HARDWARE_FILE_KEYS)}")
    return {key: schemas[key] for key in HARDWARE_FILE_KEYS}


def _field_schema(f: Field) -> dict:
    base: dict = {"description": f.doc + (f" Default: {f.default}." if f.default else "")}
    if f.kind == "hardware":
        return {**base, "anyOf": [
            {"const": "auto"},
            {"type": "object", "additionalProperties": False, "required": ["gpus"],
             "properties": _hardware_properties()}]}
    if f.kind == "section":
        return {**base, "type": "object", "additionalProperties": False, "minProperties": 1,
                "properties": {g.key: _field_schema(g) for g in f.fields}}
    return {**base, **kind(f.kind).schema(f.decl)}


def schema_text() -> str:
    return json.dumps(json_schema(), indent=2, ensure_ascii=False) + "\n"
