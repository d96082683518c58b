"""Headroom, defined once for every path (transformers placement, CPU offload, llama.cpp rows).

Headroom is memory a plan leaves unplanned: a share of each memory pool's **total** (each GPU's
total memory, the machine's RAM), or a fixed number of bytes per pool. It is subtracted from what
is free now. A share of the total, not of the free memory, because what headroom absorbs (estimate
error, allocator rounding, a driver's growth) scales with the card and the model, not with what
other processes hold; a share of free memory would shrink the margin exactly when the card is busy,
and make the same model on the same card fit or not by the minute. Its default is the `headroom`
option's, declared once in `fitplan.options` (`PlanOptions.headroom`).
"""
from __future__ import annotations

from dataclasses import fields

from ..options import PlanOptions
from ..vocab.kinds import parse_headroom


def default() -> float | int:
    """The `headroom` option's declared default."""
    return next(f.default for f in fields(PlanOptions) if f.name == "headroom")


def parse(value) -> float | int:
    """A headroom as the option holds it (a share below 1, or bytes); None is the default."""
    return default() if value is None else value if isinstance(value, (int, float)) and not isinstance(
        value, bool) and (isinstance(value, int) or 0 <= value < 1) else parse_headroom(value)


def headroom_bytes(total: int, headroom: float | int) -> int:
    """Bytes left unplanned on a pool of `total` bytes (a GPU's total memory, the machine's RAM)."""
    return int(total * headroom) if isinstance(headroom, float) else int(headroom)


def budget(free: int, total: int, headroom: float | int) -> int:
    """What a plan may use of a pool: its free memory less the headroom of its total (never negative)."""
    return max(free - headroom_bytes(total, headroom), 0)
