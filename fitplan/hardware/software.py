"""What the target machine runs besides transformers: packages that matter only where the model loads.

A plan for a card you do not have (`--gpu`, a `--hardware` file, a profile's `hardware:`) must not
depend on what is installed on the machine it is typed on: a CPU laptop has no triton, the GPU
server does. So these packages are taken from the target's declared software (`software:` in a
hardware file), and where it does not declare one, from the default below; the plan states which
(`Software.note()`). A plan for this machine (the NVML probe) reads them here, where they are.

Every key is declared once, as a field of `Software` with its metadata: the hardware-file parser,
the profile's JSON Schema and the table in docs/hardware.md (checked by tests/test_software.py) are
derived from it. Pure: reads package metadata for the transformers version, imports nothing.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields

from ..errors import FileError
from ..versions import installed
from ..yamlsource import YamlMap, check_keys, describe, require_map

#: transformers release from which the `kernels` package is one of its dependencies (5.25's
#: `Requires-Dist: kernels<0.20,>=0.19.1`): a target with that transformers has it.
KERNELS_DEPENDENCY_SINCE = (5, 25)


def _transformers_at_least(release: tuple[int, int]) -> bool:
    from packaging.version import InvalidVersion, Version

    v = installed("transformers")
    try:
        return v is not None and Version(v).release[:2] >= release
    except InvalidVersion:
        return False


def _default_triton() -> bool:
    return True


def _default_kernels() -> bool:
    return _transformers_at_least(KERNELS_DEPENDENCY_SINCE)


def _key(help: str, default: str, rule) -> dict:  # noqa: A002 - the metadata's own word
    return {"help": help, "default": default, "rule": rule}


@dataclass(frozen=True)
class Software:
    """Packages on the target that decide what transformers loads there. `declared` names the keys the
    target's description gave; the others are the defaults of their field's metadata."""

    triton: bool = field(metadata=_key(
        "triton >= 3.4.0 is installed: with `kernels` and compute capability 7.5, transformers keeps mxfp4 "
        "checkpoints (gpt-oss) packed, else it dequantizes them to bf16; transformers 5.0 loads no fp8 checkpoint "
        "without it, dequantized or not (its fp8 integration imports triton)",
        "true: PyTorch's CUDA wheels for Linux install triton as a dependency (torch 2.11 and later bring 3.4 or "
        "newer)", _default_triton))
    kernels: bool = field(metadata=_key(
        "the `kernels` package is installed in the range the planning machine's transformers accepts: mxfp4 "
        "needs it, fp8 kept as fp8 needs it where transformers runs fp8 through a Hub kernel (from 5.17), and "
        "from transformers 5.25 `from_pretrained` fetches Hub kernels through it",
        "true from transformers 5.25 (a dependency of it), false before", _default_kernels))
    declared: tuple[str, ...] = ()

    def note(self) -> str:
        """One line: what the plan assumes the target runs, and how to say otherwise."""
        parts = []
        for f in _key_fields():
            state = "installed" if getattr(self, f.name) else "not installed"
            parts.append(f"{f.name} {state} ({'declared' if f.name in self.declared else 'default'})")
        return ("target software, not looked up on this machine: " + ", ".join(parts)
                + "; declare it under 'software:' in a hardware file (docs/hardware.md)")

    def to_dict(self) -> dict:
        return {**{f.name: getattr(self, f.name) for f in _key_fields()}, "declared": list(self.declared)}


def _key_fields():
    return [f for f in fields(Software) if "help" in f.metadata]


#: The keys a hardware file's `software:` takes, from `Software`'s fields.
KEYS = tuple(f.name for f in _key_fields())


def default_software() -> Software:
    """The target's software where nothing is declared: each key's documented default."""
    return Software(**{f.name: f.metadata["rule"]() for f in _key_fields()})


def parse_software(doc: YamlMap, key: str = "software", *, what: str = "software") -> Software:
    """`software:` of a hardware file (or a profile's `hardware:`), keys from `Software`; absent keys
    take their default. One located line for anything wrong."""
    if key not in doc or doc.get(key) is None:
        return default_software()
    entry = require_map(doc[key], where=doc.where(key), what=what)
    check_keys(entry, list(KEYS), what=what)
    values = {}
    for name in entry:
        value = entry[name]
        if not isinstance(value, bool):
            raise FileError(f"{entry.where(name)}: {what}.{name} must be true or false (whether the target has it "
                            f"installed), got {describe(value)}", **entry.at(name))
        values[name] = value
    base = default_software()
    return Software(**{f.name: values.get(f.name, getattr(base, f.name)) for f in _key_fields()},
                    declared=tuple(n for n in KEYS if n in values))


def json_schema() -> dict:
    """The JSON Schema of `software:`, from the fields."""
    return {"type": "object", "additionalProperties": False,
            "description": "Packages on the target that change what transformers loads (docs/hardware.md).",
            "properties": {f.name: {"type": "boolean", "description": f"{f.metadata['help']}. Default: "
                                                                       f"{f.metadata['default']}."}
                           for f in _key_fields()}}


def docs_table() -> str:
    """The table docs/hardware.md shows, from the fields (tests/test_software.py checks the page holds it)."""
    rows = ["| key | what it says | default |", "|---|---|---|"]
    rows += [f"| `{f.name}` | {f.metadata['help']} | {f.metadata['default']} |" for f in _key_fields()]
    return "\n".join(rows)
