"""Deployment profiles: the plan's inputs checked into the deployment repo, and the lock beside them.

A profile (`deploy/fitplan.yaml`) says which model, what workload, for which hardware and under
which constraints; `fitplan check --profile` is the CI gate, `fitplan lock` pins the resolved plan
(`deploy/fitplan.lock.yaml`) and `fitplan.load(profile=...)` follows that pin on the real machine.

Where each setting comes from, first match wins (docs/profiles.md):

1. CLI flags / Python keyword arguments (`overrides`, `model=`);
2. the environment: FITPLAN_MODEL and the FITPLAN_<OPTION> variable of every option that declares
   one (`schema.ENV_VARS`, derived from `fitplan.options`; an empty variable counts as unset; a bad
   value is an error naming the variable);
3. the profile;
4. fitplan's defaults.

`SCHEMA` is the one definition of what a profile may hold: the validator, the JSON Schema
(`profiles/fitplan-profile.schema.json`) and `profile init`'s comments are all read off it.
Profiles are parsed by `fitplan.yamlsource` (safe YAML only: no tags, no code), so every problem
is one line `FILE:LINE: what; how to fix it`.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field as dataclass_field, make_dataclass
from pathlib import Path
from typing import Any

from ..errors import FileError, FitplanError, OptionError
from ..hardware.catalogue import read_hardware_map
from ..hardware.nodes import nodes_note
from ..hardware.software import Software, default_software
from ..hardware.machine import GPU, Hardware
from ..options import PLAN_KEYS, PlanOptions, check_keys as check_keys_given
from ..yamlsource import YamlMap, check_keys, load_yaml, require_map
from ..vocab.kinds import BadValue, describe
from .schema import ENV_VARS, HARDWARE_KEYS, OVERRIDE_KEYS, SCHEMA, SETTINGS, Field, check_value, field_for, from_text

# -- what a profile holds -------------------------------------------------------------------------

def _section_class(section: Field):
    """A profile section (`workload:`, `constraints:`) as a frozen record of its keys, each None when unset:
    its fields are the section's keys in the schema, read off the option declarations."""
    return make_dataclass(section.key.title(), [(g.key, Any, dataclass_field(default=None)) for g in section.fields],
                          frozen=True)


WorkloadSpec, Constraints, Serving = (_section_class(next(f for f in SCHEMA if f.key == name))
                                      for name in ("workload", "constraints", "serving"))


@dataclass(frozen=True)
class HardwareSpec:
    """`hardware:`: probe this machine (`auto`), or GPUs written as in a --hardware file.

    `cpu_ram_bytes` None means this machine's RAM, as with `--gpu`.
    """

    auto: bool = True
    gpus: tuple[GPU, ...] = ()
    cpu_ram_bytes: int | None = None
    unified: bool = False
    software: Software | None = None
    gpus_per_node: int | None = None  # `nodes:` (hardware/nodes.py); None: one machine

    def resolve(self, source_name: str) -> Hardware:
        from ..hardware.probe import cpu_ram_bytes, probe

        if self.auto:
            return probe()
        ram = cpu_ram_bytes() if self.cpu_ram_bytes is None else self.cpu_ram_bytes
        software = self.software or default_software()
        return Hardware(gpus=self.gpus, cpu_ram_bytes=ram, source="file", unified=self.unified,
                        gpus_per_node=self.gpus_per_node, software=software,
                        notes=(f"GPUs described in {source_name}, not probed", software.note(),
                               *nodes_note(len(self.gpus), self.gpus_per_node)))


@dataclass(frozen=True)
class Profile:
    """A validated profile. Unset values are None; `digest` hashes the settings (not comments/layout)."""

    path: str
    model: str | None = None
    revision: str | None = None
    auto_class: str | None = None
    engine: str | None = None
    workload: WorkloadSpec = WorkloadSpec()
    hardware: HardwareSpec | None = None
    constraints: Constraints = Constraints()
    serving: Serving = Serving()
    digest: str = ""

    def get(self, name: str) -> Any:
        """A setting by its flag name (`context`, `prefer`, ...)."""
        path = SETTINGS[name]
        obj: Any = self
        for key in path:
            obj = getattr(obj, key)
        return obj


# -- reading a profile ----------------------------------------------------------------------------

def load_profile(path: str | os.PathLike) -> Profile:
    """Read and validate a profile file; any problem is one `InputError`/`HardwareError` with FILE:LINE."""
    name = str(path)
    return parse_profile(load_yaml(Path(path), source_name=name), name)


def profile_from_text(text: str, name: str = "<profile>") -> Profile:
    return parse_profile(load_yaml(text, source_name=name), name)


def parse_profile(doc: Any, name: str) -> Profile:
    """A validated profile, or the first problem as an `InputError`/`HardwareError` with FILE:LINE."""
    profile, problems = _parse(doc, name)
    if problems:
        raise problems[0]
    return profile


def profile_problems(path: str | os.PathLike) -> list[FitplanError]:
    """Every problem of a profile file, in file order (`fitplan profile validate` lists them all)."""
    try:
        doc = load_yaml(Path(path), source_name=str(path))
    except FitplanError as err:
        return [err]
    return _parse(doc, str(path))[1]


_MISSING = object()


def _parse(doc: Any, name: str) -> tuple[Profile | None, list[FitplanError]]:
    problems: list[FitplanError] = []

    def attempt(fn, default=_MISSING):
        try:
            return fn()
        except FitplanError as err:
            problems.append(err)
            return default

    doc = attempt(lambda: require_map(doc, where=f"{name}:1", what="a deployment profile"))
    if doc is _MISSING:
        return None, problems
    attempt(lambda: check_keys(doc, [f.key for f in SCHEMA], what="the profile"))
    values: dict[str, Any] = {}
    for f in SCHEMA:
        if f.key not in doc:
            continue
        if f.kind == "section":
            sec = attempt(lambda: _section(doc, f))
            if sec is _MISSING:
                continue
            attempt(lambda: check_keys(sec, [g.key for g in f.fields], what=f.key))
            got = {g.key: attempt(lambda: _value(sec, g, f.key)) for g in f.fields if g.key in sec}
            values[f.key] = {k: v for k, v in got.items() if v is not _MISSING}
        elif f.kind == "hardware":
            values[f.key] = attempt(lambda: _hardware(doc, f.key))
        else:
            values[f.key] = attempt(lambda: _value(doc, f, ""))
    if problems:
        return None, problems
    work, cons = values.get("workload", {}), values.get("constraints", {})
    return Profile(path=name, model=values.get("model"), revision=values.get("revision"),
                   auto_class=values.get("auto_class"), engine=values.get("engine"), workload=WorkloadSpec(**work),
                   hardware=values.get("hardware"), constraints=Constraints(**cons),
                   serving=Serving(**values.get("serving", {})), digest=_digest(doc)), []


def _digest(doc: YamlMap) -> str:
    """sha256 of the settings as data: a comment, key order or quoting change leaves it alone."""
    blob = json.dumps(doc, sort_keys=True, separators=(",", ":"), default=str, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


def _section(doc: YamlMap, f: Field) -> YamlMap:
    value = doc[f.key]
    if value is None:
        raise FileError(f"{doc.where(f.key)}: '{f.key}' is empty; put its keys under it "
                         f"({', '.join(g.key for g in f.fields)}) or delete the line", **doc.at(f.key))
    return require_map(value, where=doc.where(f.key), what=f.key)


def _value(m: YamlMap, f: Field, section: str) -> Any:
    what = f"{section}.{f.key}" if section else f.key
    where = m.where(f.key)
    value = m[f.key]
    if value is None:
        raise FileError(f"{where}: {what} is empty; give it a value (default: {f.default}) or delete the line",
                        **m.at(f.key))
    try:
        return check_value(f, value)
    except BadValue as bad:
        raise FileError(f"{where}: {bad.after(what)}", **m.at(f.key)) from None


def _hardware(doc: YamlMap, key: str) -> HardwareSpec:
    """`hardware: auto`, or a mapping with the --hardware file's keys (`HARDWARE_KEYS`)."""
    value, where = doc[key], doc.where(key)
    if value == "auto":
        return HardwareSpec(auto=True)
    if value is None:
        raise FileError(f"{where}: hardware is empty; write 'hardware: auto' to probe the machine, or list "
                         "GPUs: 'hardware: {gpus: [rtx4090]}'", **doc.at(key))
    if not isinstance(value, YamlMap):
        hint = (f"; for a catalogue GPU write 'hardware: {{gpus: [{value}]}}'" if isinstance(value, str) else "")
        raise FileError(f"{where}: hardware must be 'auto' or a mapping with 'gpus:', got {describe(value)}{hint}",
                        **doc.at(key))
    if value.get("gpus") is None and set(value) <= set(HARDWARE_KEYS):
        raise FileError(f"{value.where('gpus')}: hardware needs a 'gpus:' list (write 'gpus: []' for a CPU-only "
                        "machine), or write 'hardware: auto' to probe", **value.at("gpus"))
    gpus, ram, unified, software, per_node = read_hardware_map(value, name=doc.source, what="hardware")  # the file's
    return HardwareSpec(auto=False, gpus=gpus, cpu_ram_bytes=ram, unified=unified, software=software,
                        gpus_per_node=per_node)


# -- the environment and precedence ----------------------------------------------------------------



def env_settings(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Settings from FITPLAN_* variables, validated; empty variables count as unset."""
    environ = os.environ if environ is None else environ
    out: dict[str, Any] = {}
    for name, var in ENV_VARS.items():
        raw = environ.get(var)
        if raw is None or not raw.strip():
            continue
        text = raw.strip()
        if name == "gpu":
            out[name] = text
            continue
        f = field_for(name)
        try:
            out[name] = from_text(f, text)
        except BadValue as bad:
            raise OptionError(f"environment variable {var}={raw!r}: the value {bad}; fix it or unset {var}",
                              option=name) from None
    return out


@dataclass(frozen=True)
class Settings:
    """The merged inputs of one plan. `origin` says where each value that is not a default came from."""

    model: str
    revision: str | None
    options: PlanOptions
    token: str | None = None
    offline: bool | None = None
    origin: tuple[tuple[str, str], ...] = ()

    def source_of(self, name: str) -> str:
        return dict(self.origin).get(name, "default")


FROM_ARGUMENT = "flag or keyword argument"


def merge_settings(profile: Profile, *, model: str | None, overrides: Mapping[str, Any],
                   env: Mapping[str, Any]) -> Settings:
    """flags > environment > profile > defaults, for every setting (hardware is handled apart)."""
    check_keys_given(overrides, OVERRIDE_KEYS)
    flags = {k: v for k, v in overrides.items() if v is not None}
    if model:
        flags["model"] = model
    merged: dict[str, Any] = {}
    origin: list[tuple[str, str]] = []
    for name in SETTINGS:
        if name in flags:
            value, where = flags[name], FROM_ARGUMENT
        elif name in env:
            value, where = env[name], ENV_VARS[name]
        else:
            value, where = profile.get(name), profile.path
        merged[name] = value
        if value is not None:
            origin.append((name, where))
    if not merged["model"]:
        raise FileError(f"{profile.path}: no model: add 'model: org/name' to the profile, pass MODEL, "
                         "or set FITPLAN_MODEL", path=str(profile.path), key="model")
    opts = PlanOptions.from_values(**{k: merged[k] for k in PLAN_KEYS})
    return Settings(model=merged["model"], revision=merged["revision"], options=opts, token=flags.get("token"),
                    offline=flags.get("offline"), origin=tuple(origin))


def profile_hardware(profile: Profile, overrides: Mapping[str, Any], env: Mapping[str, Any]) -> Hardware:
    """--gpu/--hardware > FITPLAN_GPU > the profile's hardware > this machine."""
    from ..hardware.resolve import resolve_hardware

    gpu, hw = overrides.get("gpu"), overrides.get("hardware")
    if gpu or hw is not None:
        return resolve_hardware(gpu, hw)
    if "gpu" in env:
        from ..hardware.catalogue import hardware_from_gpu_flag
        from ..hardware.probe import cpu_ram_bytes

        try:
            return hardware_from_gpu_flag(env["gpu"], cpu_ram_bytes())
        except FitplanError as err:
            raise type(err)(f"environment variable {ENV_VARS['gpu']}={env['gpu']!r}: "
                            f"{str(err).removeprefix('--gpu: ')}", **err.data) from None
    if profile.hardware is not None:
        return profile.hardware.resolve(profile.path)
    return resolve_hardware(None, None)


# -- what to plan -----------------------------------------------------------------------------------

def read_inputs(path: str | os.PathLike, *, model: str | None = None, overrides: Mapping[str, Any] | None = None,
                environ: Mapping[str, str] | None = None) -> tuple[Profile, Settings, dict[str, Any]]:
    """The profile, its settings merged with flags and FITPLAN_* variables, and those variables."""
    profile = load_profile(path)
    env = env_settings(environ)
    return profile, merge_settings(profile, model=model, overrides=dict(overrides or {}), env=env), env
