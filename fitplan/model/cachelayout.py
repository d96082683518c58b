"""What a model's cache holds per token and per sequence, from probe forwards.

`build.py` runs the model's forward on the meta device at the (batch, tokens) shapes of
`probe_shapes` (1 x T, 2 x T', and, only when needed, 1 x T'), and lists every storage the cache
holds afterwards (`hf.cache_storages`). Each storage must hold `batch x (per_sequence + tokens x
per_token)` bytes:

- `per_token` > 0: keys, values, DeepSeek-V3.2 / GLM-5 indexer keys, DeepSeek-V4's compressed
  entries (the KV term);
- `per_sequence` > 0: Mamba/linear-attention recurrent states and convolution windows, RWKV's
  state, a learned prompt prefix (CPM-Ant) (the state term: it grows with the batch, not the
  context);
- neither: bookkeeping that does not grow at all (a sliding window's size as a tensor; a few
  bytes), or a table a model module keeps whatever the input (rotary cos/sin); ignored.

The first two probes give both parts; a part that comes out negative means the storage grows
some other way. A storage with both parts at once (CPM-Ant) is confirmed by the third probe, which
checks that it grows in proportion to the batch at equal length. A storage that does not fit, or
appears at one shape only, means fitplan does not know this cache, and the caller refuses rather
than guess. Pure: the probe results in, `KVLayer`s out.
"""
from __future__ import annotations

from dataclasses import dataclass
from math import ceil

from .inventory import KVLayer

#: Bytes a storage that grows with neither batch nor tokens may hold before it is a cache fitplan
#: does not understand (a sliding window size or a counter is a few bytes).
CONSTANT_LIMIT = 4096


def probe_shapes(compress_rates=()) -> tuple[tuple[int, int], ...]:
    """(batch, tokens) of the probe forwards: 1 x 4, 2 x 6 and the confirming 1 x 6 (recurrent models'
    meta forwards loop over tokens, so short probes keep them fast), or 2 and 3 times the largest
    compression rate of a model that pools tokens into compressed entries (DeepSeek-V4: 4 and 128)
    so its entries come out whole at both lengths."""
    base = max([2, *(r for r in compress_rates if type(r) is int and r > 0)])
    return (1, 2 * base), (2, 3 * base), (1, 3 * base)


@dataclass(frozen=True)
class Held:
    """One storage a cache held after a probe forward."""

    layer: int | None
    path: tuple
    nbytes: int
    dtype: str
    window: int | None = None
    in_module: bool = False  # kept by a model module as a plain attribute, not by the cache


class UnknownCache(ValueError):
    """The cache holds a storage that does not grow as batch x (per sequence + tokens x per token)."""


class NeedsConfirmation(Exception):
    """A storage holds per-token and per-sequence bytes at once: run the third probe."""


def growth(sizes: tuple[int, ...], shapes) -> tuple[float, float] | None:
    """(per sequence, per token) bytes of one storage that held `sizes` bytes at the probe shapes;
    None when it does not grow as batch x (per sequence + tokens x per token)."""
    (ba, ta), (bb, tb) = shapes[:2]
    a, b = sizes[:2]
    per_token = (b / bb - a / ba) / (tb - ta)
    per_sequence = a / ba - ta * per_token
    if per_token < 0 or per_sequence < 0:
        return None
    if len(sizes) > 2:
        (bc, tc), c = shapes[2], sizes[2]
        if c * bb != b * bc or tc != tb:  # same length, other batch: in proportion to the batch
            return None
    return per_sequence, per_token


def layout(probes: list[list[Held]], num_layers: int, build_dtype: str, element_size: int,
           shapes=None) -> tuple[KVLayer, ...]:
    """Per-layer `KVLayer`s from the storages of two or three probes, taken at the first shapes of
    `shapes` (`probe_shapes()`). Raises `NeedsConfirmation` when two probes are not enough. `build_dtype`
    is the dtype the model was built in: storages in it follow the load dtype, others (fp32 recurrent
    states, int64 positions) keep their own. Storages outside any layer are spread evenly over the
    layers (RWKV's state stacks every layer in one tensor)."""
    shapes = (shapes or probe_shapes())[:len(probes)]
    first, rest = probes[0], probes[1:]
    by_path = []
    for held in rest:
        paths = {h.path: h for h in held}
        if len(paths) != len(held) or set(paths) != {h.path for h in first}:
            only = sorted({h.path for h in first} ^ set(paths), key=str)[:1]
            raise UnknownCache("the cache holds different tensors at different lengths"
                               + (f" ({_shown(only[0])})" if only else ""))
        by_path.append(paths)
    sums = {key: [0.0] * num_layers for key in ("token", "fixed_token", "state", "fixed_state")}
    spread = dict.fromkeys(sums, 0.0)
    windows: list[int | None] = [None] * num_layers
    for a in first:
        sizes = (a.nbytes, *(paths[a.path].nbytes for paths in by_path))
        if len(set(sizes)) == 1:
            if a.nbytes > CONSTANT_LIMIT and not a.in_module:  # a module's constant (rotary table) is no cache
                raise UnknownCache(f"{_shown(a.path)} holds {a.nbytes} bytes whatever the batch and length")
            continue
        parts = growth(sizes, shapes)
        if parts is None:
            shown = ", ".join(f"{n} bytes at {bs}x{ts}" for n, (bs, ts) in zip(sizes, shapes))
            raise UnknownCache(f"{_shown(a.path)} holds {shown}: not batch x (per sequence + tokens x per token)")
        if all(parts) and len(probes) < 3:
            raise NeedsConfirmation(_shown(a.path))
        follows = a.dtype == build_dtype
        layer = a.layer if a.layer is not None and 0 <= a.layer < num_layers else _indexed(a.path, num_layers)
        for amount, kind in zip(parts, ("state", "token")):
            if not amount:
                continue
            key = kind if follows else f"fixed_{kind}"
            amount = amount / element_size if follows else amount
            if layer is None:
                spread[key] += amount
            else:
                sums[key][layer] += amount
        if parts[1] and a.window and layer is not None:
            windows[layer] = a.window
    for key, total in spread.items():
        for i in range(num_layers):
            sums[key][i] += total / num_layers
    return tuple(
        KVLayer(elements_per_token=ceil(sums["token"][i]), window=windows[i] if sums["token"][i] else None,
                fixed_bytes_per_token=ceil(sums["fixed_token"][i]), state_elements=ceil(sums["state"][i]),
                state_fixed_bytes=ceil(sums["fixed_state"][i]))
        for i in range(num_layers))


def _indexed(path: tuple, num_layers: int) -> int | None:
    """A storage outside `cache.layers` kept in a per-layer list (MiniMax's `linear_cache[i]`)."""
    if len(path) >= 2 and isinstance(path[0], str) and type(path[1]) is int and 0 <= path[1] < num_layers:
        return path[1]
    return None


def _shown(path: tuple) -> str:
    return ".".join(str(p) for p in path) or "the cache"
