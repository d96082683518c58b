"""An inventory cache entry, written (`write_entry`) and verified before any of it is believed (`read_entry`;
the cache's keying is `cache.py`'s).

An entry is an envelope `{"format", "inputs", "sha256", "inventory"}`: `inputs` is the SHA-256 of
what the inventory was built from (config, library versions, model), `inventory` the inventory's
JSON text and `sha256` that text's digest. Reading one checks, in order: a regular file (a FIFO
would block, a link to `/dev/zero` read for ever) no larger than the cap; JSON no deeper than
MAX_DEPTH; the format; the inputs digest; the text digest; every number an integer in
[0, MAX_INT] or a finite float; every field of `Inventory`, `TensorInfo` and `KVLayer` of its
declared type. Any failure is `BadEntry` with the reason, and the caller rebuilds.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import types
import typing
from dataclasses import MISSING, fields, is_dataclass
from pathlib import Path

from .inventory import Inventory, KVLayer, TensorInfo

#: No inventory nests deeper than a few levels (inventory -> tensors -> tensor -> shape).
MAX_DEPTH = 16
#: Counts and byte sizes of any real model are far below 2**60.
MAX_INT = 1 << 60


class BadEntry(Exception):
    """Why an entry was refused, as the end of a sentence ("is damaged: ...")."""


def envelope(inv: Inventory, inputs: str, entry_format: str) -> str:
    body = json.dumps(inv.to_dict())
    return json.dumps({"format": entry_format, "inputs": inputs,
                       "sha256": hashlib.sha256(body.encode()).hexdigest(), "inventory": body})


def read_entry(path: Path, inputs: str, *, limit: int, entry_format: str) -> Inventory:
    """The verified inventory in `path`; FileNotFoundError when there is none, BadEntry when it is bad."""
    from ..errors import FileTooLargeError, NotRegularFileError
    from ..safeio import read_capped

    try:
        raw = read_capped(path, limit=limit, what="an inventory cache entry")
    except NotRegularFileError as err:
        raise BadEntry(f"is {err.kind}, not a regular file") from None
    except FileTooLargeError as err:
        raise BadEntry(f"is larger than {err.limit:,} bytes ({err.size:,})") from None
    outer = _json(raw, "the entry")
    if not isinstance(outer, dict) or outer.get("format") != entry_format:
        raise BadEntry("is not an entry of this fitplan's format")
    if outer.get("inputs") != inputs:
        raise BadEntry("was built from other inputs (its inputs digest differs)")
    body = outer.get("inventory")
    if not isinstance(body, str) or hashlib.sha256(body.encode()).hexdigest() != outer.get("sha256"):
        raise BadEntry("is damaged or was edited (its digest does not match its content)")
    data = _json(body.encode(), "the inventory")
    _check_numbers(data)
    _check_fields(Inventory, data, "inventory")
    try:
        return Inventory.from_dict(data)
    except (TypeError, ValueError, KeyError) as err:
        raise BadEntry(f"does not hold an inventory ({type(err).__name__})") from None


def _json(raw: bytes, what: str):
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise BadEntry(f"is damaged ({what} is not JSON)") from None
    except RecursionError:
        raise BadEntry(f"is damaged ({what} is nested too deeply)") from None


def _check_numbers(data) -> None:
    """Every number a whole number in [0, MAX_INT] or a finite float; nesting at most MAX_DEPTH (iterative)."""
    stack = [(data, 0)]
    while stack:
        x, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise BadEntry(f"is damaged (nested more than {MAX_DEPTH} levels)")
        if isinstance(x, dict):
            stack.extend((v, depth + 1) for v in x.values())
        elif isinstance(x, list):
            stack.extend((v, depth + 1) for v in x)
        elif isinstance(x, bool) or x is None or isinstance(x, str):
            continue
        elif isinstance(x, int):
            if not 0 <= x <= MAX_INT:
                raise BadEntry(f"holds an impossible count ({x})")
        elif isinstance(x, float):
            if not math.isfinite(x):
                raise BadEntry(f"holds a number that is not finite ({x})")


_CLASSES = {"TensorInfo": TensorInfo, "KVLayer": KVLayer}


def _check_fields(cls, data, where: str) -> None:
    """`data` has every field of the dataclass `cls` without a default, no other key, and each of its
    declared type (`int`, `str | None`, `tuple[TensorInfo, ...]`, ...)."""
    if not isinstance(data, dict):
        raise BadEntry(f"is damaged ({where} is not an object)")
    known = {f.name: f for f in fields(cls)}
    extra = set(data) - set(known) - {"schema"}
    if extra:
        raise BadEntry(f"is damaged ({where} has unknown field {sorted(extra)[0]!r})")
    hints = typing.get_type_hints(cls)
    for name, f in known.items():
        if name not in data:
            if f.default is MISSING and f.default_factory is MISSING:
                raise BadEntry(f"is damaged ({where} lacks {name!r})")
            continue
        if not _fits(hints[name], data[name], f"{where}.{name}"):
            raise BadEntry(f"is damaged ({where}.{name} = {data[name]!r:.40} is not {hints[name]})")


def _fits(hint, v, where: str) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(a, v, where) for a in args)
    if hint is type(None):
        return v is None
    if hint is typing.Any:
        return True
    if hint is bool:
        return isinstance(v, bool)
    if hint is int:
        return isinstance(v, int) and not isinstance(v, bool)
    if hint is float:
        return isinstance(v, (int, float)) and not isinstance(v, bool)
    if hint is str:
        return isinstance(v, str)
    if hint is dict or origin is dict:
        return isinstance(v, dict)
    if origin is tuple:
        if not isinstance(v, list):
            return False
        item = args[0] if args else typing.Any
        return all(_fits(item, x, where) for x in v)
    if is_dataclass(hint):
        _check_fields(hint, v, where)
        return True
    return True  # a type this check does not know: from_dict decides


def write_entry(path: Path, inputs: str, inv: Inventory, entry_format: str) -> None:
    """Store `inv` at `path` (`envelope`), through a fresh temporary file in the same folder, never through a link
    or a FIFO left at either name; a cache that cannot be written only costs speed."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        if os.path.lexists(tmp):
            os.unlink(tmp)
        with open(tmp, "x", encoding="utf-8") as f:  # never through a link or a FIFO left at that name
            f.write(envelope(inv, inputs, entry_format))
        if os.path.lexists(path) and not os.path.isfile(path) or os.path.islink(path):
            os.unlink(path)  # a FIFO, a device or a link where the entry goes: replaced, never followed
        os.replace(tmp, path)
    except OSError:
        pass
