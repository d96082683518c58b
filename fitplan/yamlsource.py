"""Located YAML: parse user files safely and remember where every key was written.

Hand-written YAML (the `--hardware` file, deployment profiles) deserves errors that point at a
line. `load_yaml` composes the node tree with PyYAML's safe loader and builds plain Python data
from it itself, so that it can:

- keep line numbers: mappings come back as `YamlMap` (a dict that knows each key's line) and
  sequences as `YamlList`;
- refuse what `yaml.safe_load` would quietly accept or choke on: duplicate keys (safe_load keeps
  the last), non-scalar keys, unknown tags, nesting deeper than any config needs, and alias
  "bombs" (a few lines of anchors that expand to billions of values) or alias cycles;
- turn every failure (missing file, non-UTF-8 bytes, malformed YAML, empty file) into one
  `InputError` line of the form `FILE:LINE: what is wrong; how to fix it`.

Nothing here knows a schema. `check_keys` and the `get_*` helpers are the small vocabulary a
validator needs: unknown keys with a did-you-mean, and typed fields with their location.
"""
from __future__ import annotations

import math
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from .errors import FileError, InputError
from .vocab.kinds import describe, did_you_mean
from .vocab.units import parse_bytes

MAX_FILE_BYTES = 1 << 20
"""Config files are small; a bigger one is a mistake (a model file passed by accident, say)."""
MAX_VALUES = 100_000
"""Values built, counting each pass through an alias: bounds alias bombs."""
MAX_DEPTH = 50
"""No config needs more; deeper input is hostile or broken."""

_MAP = "tag:yaml.org,2002:map"
_SEQ = "tag:yaml.org,2002:seq"
_MERGE = "tag:yaml.org,2002:merge"
_SCALAR_TAGS = frozenset(
    f"tag:yaml.org,2002:{t}" for t in ("null", "bool", "int", "float", "str", "timestamp", "binary")
)
_TAG_NAMES = {
    "tag:yaml.org,2002:null": "null", "tag:yaml.org,2002:bool": "a boolean",
    "tag:yaml.org,2002:int": "an integer", "tag:yaml.org,2002:float": "a number",
    "tag:yaml.org,2002:str": "a string", "tag:yaml.org,2002:timestamp": "a date",
    "tag:yaml.org,2002:binary": "binary data",
}


class YamlMap(dict):
    """A YAML mapping: a plain dict that also knows its file and the line of each key."""

    __slots__ = ("source", "line", "_key_lines", "_value_lines")

    def __init__(self, source: str, line: int) -> None:
        super().__init__()
        self.source = source
        self.line = line
        self._key_lines: dict[Any, int] = {}
        self._value_lines: dict[Any, int] = {}

    def _put(self, key: Any, value: Any, key_line: int, value_line: int) -> None:
        self[key] = value
        self._key_lines[key] = key_line
        self._value_lines[key] = value_line

    def line_of(self, key: Any = None) -> int:
        """Line (1-based) where `key` was written; the mapping's own line for a missing key."""
        return self._key_lines.get(key, self.line)

    def value_line_of(self, key: Any) -> int:
        """Line where the value of `key` starts (differs from the key's for block values)."""
        return self._value_lines.get(key, self.line_of(key))

    def where(self, key: Any = None) -> str:
        """`FILE:LINE` of `key` (or of the mapping), the prefix of every error about it."""
        return f"{self.source}:{self.line_of(key)}"

    def at(self, key: Any = None) -> dict[str, Any]:
        """The `FileError` fields of `key` (or of the mapping): `path`, `line`, `key`."""
        return {"path": self.source, "line": self.line_of(key), "key": None if key is None else str(key)}


class YamlList(list):
    """A YAML sequence: a plain list that also knows its file and the line of each item."""

    __slots__ = ("source", "line", "_item_lines")

    def __init__(self, source: str, line: int) -> None:
        super().__init__()
        self.source = source
        self.line = line
        self._item_lines: list[int] = []

    def _add(self, value: Any, line: int) -> None:
        self.append(value)
        self._item_lines.append(line)

    def line_of(self, index: int | None = None) -> int:
        if index is None or not 0 <= index < len(self._item_lines):
            return self.line
        return self._item_lines[index]

    def where(self, index: int | None = None) -> str:
        return f"{self.source}:{self.line_of(index)}"

    def at(self, index: int | None = None) -> dict[str, Any]:
        """The `FileError` fields of item `index` (or of the list): `path`, `line`, and no key."""
        return {"path": self.source, "line": self.line_of(index), "key": None}


def at(where: str, key: Any = None) -> dict[str, Any]:
    """The `FileError` fields of a location handed on as text, `FILE:LINE` (perhaps then `: what`)."""
    m = re.match(r"(.+?):(\d+)(?=:|$)", where)
    return {"path": m.group(1) if m else where, "line": int(m.group(2)) if m else None,
            "key": None if key is None else str(key)}


def load_yaml(
    source: str | bytes | Path,
    *,
    source_name: str | None = None,
    max_values: int = MAX_VALUES,
) -> Any:
    """Parse one YAML document into plain data with `YamlMap`/`YamlList` containers.

    `source` is a `Path` (read here; a missing or unreadable file is an `InputError`), raw
    `bytes` (must be UTF-8), or text. `source_name` is what errors call the document; it
    defaults to the path, or `<string>`.
    """
    if isinstance(source, Path):
        name = source_name or str(source)
        data: str | bytes = _read(source, name)
    else:
        name = source_name or "<string>"
        data = source
    text = _decode(data, name) if isinstance(data, bytes) else data
    node = _compose(text, name)
    if node is None:
        raise FileError(f"{name}: the file is empty (no YAML document in it)", path=name)
    return _Builder(name, max_values).build(node)


def check_keys(mapping: YamlMap, allowed: Iterable[str], *, what: str) -> None:
    """Reject any key of `mapping` not in `allowed`, naming the line, a did-you-mean and the list."""
    allowed = list(allowed)
    for key in mapping:
        if not isinstance(key, str) or key not in allowed:
            raise FileError(
                f"{mapping.where(key)}: unknown key {key!r} in {what}{did_you_mean(key, allowed)}; "
                f"allowed keys: {', '.join(allowed)}", **mapping.at(key)
            )


def require_map(value: Any, *, where: str, what: str) -> YamlMap:
    """`value` if it is a mapping, else an error saying what was found instead."""
    if not isinstance(value, YamlMap):
        raise FileError(f"{where}: {what} must be a mapping (key: value lines), got {describe(value)}", **at(where))
    return value


def require_list(value: Any, *, where: str, what: str) -> YamlList:
    if not isinstance(value, YamlList):
        raise FileError(f"{where}: {what} must be a list ('- item' lines), got {describe(value)}", **at(where))
    return value


def get_str(m: YamlMap, key: str, *, what: str, required: bool = False) -> str | None:
    """A non-empty string field; YAML's accidental non-strings (numbers, booleans) are refused."""
    value = _get(m, key, what, required)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise FileError(f"{m.where(key)}: {_field(what, key)} must be a non-empty string, got {describe(value)}", **m.at(key))
    return value.strip()


def get_int(
    m: YamlMap, key: str, *, what: str, required: bool = False,
    minimum: int | None = None, maximum: int | None = None,
) -> int | None:
    value = _get(m, key, what, required)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise FileError(f"{m.where(key)}: {_field(what, key)} must be a whole number, got {describe(value)}", **m.at(key))
    _check_range(m, key, what, value, minimum, maximum)
    return value


def get_number(
    m: YamlMap, key: str, *, what: str, required: bool = False,
    minimum: float | None = None, maximum: float | None = None,
) -> float | None:
    value = _get(m, key, what, required)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise FileError(f"{m.where(key)}: {_field(what, key)} must be a number, got {describe(value)}", **m.at(key))
    _check_range(m, key, what, value, minimum, maximum)
    return float(value)


def get_size(
    m: YamlMap, key: str, *, what: str, required: bool = False,
    minimum: int = 0, maximum: int | None = None,
) -> int | None:
    """A byte size written like `24GiB`/`24GB`/`24000MiB` (or a plain byte count)."""
    value = _get(m, key, what, required)
    if value is None:
        return None
    name = _field(what, key)
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise FileError(f"{m.where(key)}: {name} must be a size like '24GiB', got {describe(value)}", **m.at(key))
    try:
        size = parse_bytes(value, what=name)
    except InputError as err:
        raise FileError(f"{m.where(key)}: {err}", **m.at(key)) from None
    if size < minimum:
        need = "more than zero" if minimum == 1 else f"at least {minimum} bytes"
        raise FileError(f"{m.where(key)}: {name} must be {need}, got {value!r}", **m.at(key))
    if maximum is not None and size > maximum:
        raise FileError(
            f"{m.where(key)}: {name} = {value!r} is absurd (more than {maximum / 2**40:g} TiB); check the unit", **m.at(key)
        )
    return size


def _field(what: str, key: str) -> str:
    return f"{what}.{key}" if what else key


def _tag(tag: str) -> str:
    return "!!" + tag[len("tag:yaml.org,2002:"):] if tag.startswith("tag:yaml.org,2002:") else tag


def _get(m: YamlMap, key: str, what: str, required: bool) -> Any:
    if key not in m:
        if required:
            raise FileError(f"{m.where()}: {what} is missing the required key '{key}'", **m.at(key))
        return None
    value = m[key]
    if value is None and required:
        raise FileError(f"{m.where(key)}: {_field(what, key)} is empty; give it a value", **m.at(key))
    return value


def _check_range(m: YamlMap, key: str, what: str, value: float, lo: float | None, hi: float | None) -> None:
    if lo is not None and value < lo:
        raise FileError(f"{m.where(key)}: {_field(what, key)} must be at least {lo:g}, got {value!r}", **m.at(key))
    if hi is not None and value > hi:
        raise FileError(f"{m.where(key)}: {_field(what, key)} must be at most {hi:g}, got {value!r}", **m.at(key))


def _read(path: Path, name: str) -> bytes:
    try:
        with path.open("rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise FileError(f"{name}: no such file; check the path", path=name) from None
    except IsADirectoryError:
        raise FileError(f"{name}: is a directory, not a YAML file", path=name) from None
    except PermissionError:
        raise FileError(f"{name}: permission denied; make the file readable", path=name) from None
    except OSError as err:
        raise FileError(f"{name}: cannot read the file ({err.strerror or err})", path=name) from None
    if len(data) > MAX_FILE_BYTES:
        raise FileError(f"{name}: larger than {MAX_FILE_BYTES // 1024} KiB; is this really a YAML config file?", path=name)
    return data


def _decode(data: bytes, name: str) -> str:
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise FileError(
            f"{name}:{line}: not UTF-8 text (byte 0x{data[err.start]:02x} at offset {err.start}); "
            f"save the file as UTF-8", path=name, line=line
        ) from None


def _compose(text: str, name: str) -> Node | None:
    loader = None
    try:
        loader = yaml.SafeLoader(text)  # its reader already rejects control characters
        node = loader.get_single_node()
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = " ".join(str(p) for p in (err.context, err.problem) if p)
        raise FileError(f"{name}{line}: invalid YAML: {problem}", path=name, line=mark.line + 1 if mark is not None else None) from None
    except yaml.reader.ReaderError as err:
        line = text[: max(err.position, 0)].count("\n") + 1
        raise FileError(
            f"{name}:{line}: invalid YAML: character {chr(err.character)!r} is not allowed in YAML text", path=name, line=line
        ) from None
    except yaml.YAMLError as err:
        raise FileError(f"{name}: invalid YAML: {' '.join(str(err).split())}", path=name) from None
    except RecursionError:
        raise FileError(f"{name}: nested too deeply to be a config file", path=name) from None
    finally:
        if loader is not None:
            loader.dispose()
    if isinstance(node, ScalarNode) and node.tag == "tag:yaml.org,2002:null" and node.value in ("", "~", "null"):
        return None  # `---` alone, or a bare null: no content either
    return node


class _Builder:
    """Turns a composed node tree into located plain data, enforcing the limits above."""

    def __init__(self, name: str, max_values: int) -> None:
        self.name = name
        self.max_values = max_values
        self.count = 0
        self.open: set[int] = set()
        self.scalars = yaml.SafeLoader("")

    def build(self, node: Node, depth: int = 0) -> Any:
        line = node.start_mark.line + 1
        self.count += 1
        if self.count > self.max_values:
            raise FileError(
                f"{self.name}:{line}: the document expands to more than {self.max_values} values "
                f"(anchors/aliases used as an 'alias bomb'?); write the values out instead", path=self.name, line=line
            )
        if depth > MAX_DEPTH:
            raise FileError(f"{self.name}:{line}: nested more than {MAX_DEPTH} levels deep", path=self.name, line=line)
        if isinstance(node, ScalarNode):
            return self._scalar(node)
        if id(node) in self.open:
            raise FileError(f"{self.name}:{line}: an alias refers to a mapping or list that contains it", path=self.name, line=line)
        self.open.add(id(node))
        try:
            if isinstance(node, SequenceNode):
                return self._sequence(node, depth)
            return self._mapping(node, depth)
        finally:
            self.open.discard(id(node))

    def _scalar(self, node: ScalarNode) -> Any:
        line = node.start_mark.line + 1
        if node.tag not in _SCALAR_TAGS:
            raise FileError(f"{self.name}:{line}: unsupported YAML tag {_tag(node.tag)!r}; remove it", path=self.name, line=line)
        try:
            return self.scalars.construct_object(node)
        except Exception:  # noqa: BLE001 - PyYAML's constructors raise KeyError (`!!bool maybe`),
            # AttributeError (`!!timestamp nope`), ValueError, ...: all mean the value is not of its tag's type
            raise FileError(
                f"{self.name}:{line}: cannot read {node.value!r} as {_TAG_NAMES[node.tag]}", path=self.name, line=line
            ) from None

    def _sequence(self, node: SequenceNode, depth: int) -> YamlList:
        if node.tag != _SEQ:
            raise FileError(f"{self.name}:{node.start_mark.line + 1}: unsupported YAML tag {_tag(node.tag)!r}; remove it", path=self.name, line=node.start_mark.line + 1)
        out = YamlList(self.name, node.start_mark.line + 1)
        for item in node.value:
            out._add(self.build(item, depth + 1), item.start_mark.line + 1)
        return out

    def _mapping(self, node: MappingNode, depth: int) -> YamlMap:
        line = node.start_mark.line + 1
        if node.tag != _MAP:
            raise FileError(f"{self.name}:{line}: unsupported YAML tag {_tag(node.tag)!r}; remove it", path=self.name, line=line)
        out = YamlMap(self.name, line)
        merges: list[Node] = []
        for key_node, value_node in node.value:
            key_line = key_node.start_mark.line + 1
            if key_node.tag == _MERGE:
                merges.append(value_node)
                continue
            if not isinstance(key_node, ScalarNode):
                raise FileError(f"{self.name}:{key_line}: mapping keys must be plain words, not lists or mappings", path=self.name, line=key_line)
            key = self._scalar(key_node)
            if key in out._key_lines:
                raise FileError(
                    f"{self.name}:{key_line}: duplicate key {key!r} (first written on line "
                    f"{out._key_lines[key]}); keep one", path=self.name, line=key_line, key=str(key)
                )
            out._put(key, self.build(value_node, depth + 1), key_line, value_node.start_mark.line + 1)
        for merge in merges:  # YAML merge keys: explicit keys win, then earlier sources
            sources = merge.value if isinstance(merge, SequenceNode) else [merge]
            for source in sources:
                if not isinstance(source, MappingNode):
                    raise FileError(
                        f"{self.name}:{source.start_mark.line + 1}: '<<' must merge a mapping or a list of mappings", path=self.name, line=source.start_mark.line + 1
                    )
                merged = self.build(source, depth + 1)
                for key, value in merged.items():
                    if key not in out:
                        out._put(key, value, merged.line_of(key), merged.value_line_of(key))
        return out

