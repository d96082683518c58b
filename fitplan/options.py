"""Turn what users type (`--headroom 10%`, `1.5GiB`, env overrides) into `PlanOptions` values."""
from __future__ import annotations

from .errors import InputError
from .units import parse_fraction_or_bytes


def parse_headroom(value) -> float | int:
    """`10%` or `0.1` -> 0.1 (share of each GPU's memory); `1.5GiB` -> bytes."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, float):
        if 0 <= value < 1:
            return value
        raise InputError(f"headroom: a plain number is a share and must be below 1 (e.g. 0.1), got {value}; "
                         "write sizes with a unit, e.g. '1.5GiB'")
    frac, nbytes = parse_fraction_or_bytes(value, what="headroom")
    if frac is not None:
        return frac
    if nbytes is None:
        raise InputError("headroom: write a share like '10%' or a size like '1.5GiB'")
    return nbytes
