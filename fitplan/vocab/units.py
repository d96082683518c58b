"""Byte sizes: parse what people write (`24GiB`, `24GB`, `24000MiB`, `10%`) and print them back.

GiB (2**30) is the unit of record: NVML and torch report bytes, and GPU "24 GB" cards hold 24 GiB.
"""
from __future__ import annotations

import math
import re

from ..errors import OptionError

GiB = 1 << 30
MiB = 1 << 20

_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "kib": 1 << 10,
    "m": 1000**2, "mb": 1000**2, "mib": 1 << 20,
    "g": 1000**3, "gb": 1000**3, "gib": 1 << 30,
    "t": 1000**4, "tb": 1000**4, "tib": 1 << 40,
}
_SIZE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?|\.[0-9]+)\s*([a-zA-Z]*)\s*$")


def parse_bytes(value: object, *, what: str = "size") -> int:
    """Bytes from an int or a string like `24GiB`, `1.5 GB`, `24000MiB`. Rejects negatives and junk."""
    if isinstance(value, bool):
        raise OptionError(f"{what}: expected a size like '24GiB', got {value!r}", option=what)
    if isinstance(value, int):
        if value < 0:
            raise OptionError(f"{what}: must not be negative, got {value}", option=what)
        return value
    if isinstance(value, float):
        if not math.isfinite(value) or value < 0:
            raise OptionError(f"{what}: expected a non-negative size, got {value!r}", option=what)
        return int(value)
    if not isinstance(value, str):
        raise OptionError(f"{what}: expected a size like '24GiB', got {type(value).__name__}", option=what)
    m = _SIZE.match(value)
    if not m or m.group(2).lower() not in _UNITS:
        raise OptionError(f"{what}: cannot read {value!r} as a size; write e.g. '24GiB', '24GB' or '24000MiB'",
                          option=what)
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def parse_fraction_or_bytes(value: object, *, what: str) -> tuple[float | None, int | None]:
    """A share (`10%`, `0.1`) or an absolute size (`1.5GiB`). Returns (fraction, None) or (None, bytes)."""
    if isinstance(value, str) and value.strip().endswith("%"):
        try:
            pct = float(value.strip()[:-1])
        except ValueError:
            raise OptionError(f"{what}: cannot read {value!r} as a percentage; write e.g. '10%'", option=what) from None
        if not 0 <= pct < 100:
            raise OptionError(f"{what}: must be between 0% and 100% (exclusive), got {value!r}", option=what)
        return pct / 100, None
    if isinstance(value, float) and 0 <= value < 1:
        return value, None
    return None, parse_bytes(value, what=what)


def align(n: int, alignment: int) -> int:
    """`n` rounded up to a multiple of `alignment` (1: unchanged), as an allocator rounds a request."""
    return -(-n // alignment) * alignment if alignment > 1 else n


def gib(n: int | float, places: int = 1) -> str:
    """`n` bytes in GiB with `places` decimals and no unit: `24.0`."""
    return f"{n / GiB:.{places}f}"


def fmt_bytes(n: int | float) -> str:
    """Human form used in tables: GiB with two decimals above 1 GiB, else MiB."""
    if abs(n) >= GiB:
        return f"{n / GiB:.2f} GiB"
    return f"{n / MiB:.1f} MiB"
