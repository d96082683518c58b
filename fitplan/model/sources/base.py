"""What every model source returns (`ModelSource`, `TensorHeader`) and the readers they share: the
config.json reader and the safetensors-header check, whose errors each source words for its own
files (a local folder, the catalogue, the Hub's cache).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from math import prod
from typing import Any, Callable

from ...errors import FitplanError


@dataclass(frozen=True)
class TensorHeader:
    """One entry of a safetensors header. `nbytes` is what the file stores (data_offsets end - start),
    so pre-quantized checkpoints (packed uint8, scales) are counted as stored, not as dtype x shape."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    nbytes: int


@dataclass(frozen=True)
class ModelSource:
    """What the planner knows about a model before any weight is downloaded.

    `origin` is "local", "catalogue" or "hub". `revision` is the commit sha for "hub", else None.
    `tensors` is None when no safetensors headers are available (catalogue, a repo without
    safetensors, `with_tensors=False`); the estimate then works from `config` alone.
    `repo_id` is the Hub id with its canonical spelling (None for a local folder); `local_path` the
    folder config.json was read from (the HF cache snapshot for "hub"); `weight_files` the
    safetensors files the headers came from. `parameters`, `parameters_source` and `gated` come
    from the catalogue only (`parameters_exact`: that figure was not rounded). `from_cache` is True when the Hub was not asked (offline, or not
    reachable) and the local HF cache answered.
    """

    model_id: str
    origin: str
    config: dict
    revision: str | None
    tensors: tuple[TensorHeader, ...] | None
    repo_id: str | None = None
    local_path: str | None = None
    weight_files: tuple[str, ...] = ()
    parameters: int | None = None
    parameters_source: str | None = None
    gated: bool | None = None
    from_cache: bool = False
    parameters_exact: bool = False

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def stored_parameters(self) -> int | None:
        """How many parameters the checkpoint stores: its safetensors headers' element count, else the
        catalogue's published count where it is exact (not rounded); None when neither is known. It
        tells whether a checkpoint stores tied weights apart (build_inventory)."""
        if self.tensors is not None:
            return sum(prod(t.shape) for t in self.tensors)
        return self.parameters if self.parameters_exact else None

    @classmethod
    def from_dict(cls, d: dict) -> "ModelSource":
        d = dict(d)
        if d.get("tensors") is not None:
            d["tensors"] = tuple(TensorHeader(**{**t, "shape": tuple(t["shape"])}) for t in d["tensors"])
        d["weight_files"] = tuple(d.get("weight_files", ()))
        return cls(**d)


def tensor_headers(header: Any, bad: str, error: Callable[[str], FitplanError], fix: str
                   ) -> list[tuple[TensorHeader, int]]:
    """Validate a decoded header; each tensor with the end of its data, for the truncation check.
    `error(message)` makes the error of the file at hand (its class and fields: whose file it is)."""
    if not isinstance(header, dict):
        raise error(f"{bad}: its header is JSON but not an object; {fix}")
    out = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        dtype = entry.get("dtype") if isinstance(entry, dict) else None
        shape = entry.get("shape") if isinstance(entry, dict) else None
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if not (isinstance(dtype, str) and isinstance(shape, list) and all_nonneg_ints(shape)
                and isinstance(offsets, list) and len(offsets) == 2 and all_nonneg_ints(offsets)
                and offsets[0] <= offsets[1]):
            raise error(f"{bad}: header entry {name!r} needs dtype, shape and data_offsets [start, end]; {fix}")
        out.append((TensorHeader(name, dtype, tuple(shape), offsets[1] - offsets[0]), offsets[1]))
    return out


def all_nonneg_ints(xs: list) -> bool:
    return all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in xs)


def load_config(raw: bytes, where: str, error: Callable[[str], FitplanError], fix: str) -> dict:
    """config.json's object, transformers' tagged floats decoded; `error(message)` makes the error of
    a file that is not one JSON object."""
    try:
        config = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise error(f"{where} is not valid JSON ({reason(e)}): {fix}") from None
    if not isinstance(config, dict):
        raise error(f"{where} must hold a JSON object, not a {type(config).__name__}: {fix}")
    return decode_special_floats(config)


#: How transformers 5 writes floats JSON has no literal for (`PreTrainedConfig._encode_special_floats`,
#: the same from 5.0 to 5.24): `{"__float__": "Infinity"}`, e.g. Mamba-2's `time_step_limit`.
_FLOAT_TAGS = {"Infinity": float("inf"), "-Infinity": float("-inf"), "NaN": float("nan")}


def decode_special_floats(obj: Any) -> Any:
    """`obj` with transformers' tagged floats decoded, as `PreTrainedConfig._dict_from_json_file` reads
    config.json: a dict whose only key is "__float__" with a known tag becomes that float."""
    if isinstance(obj, dict):
        if set(obj) == {"__float__"} and isinstance(obj["__float__"], str):
            return _FLOAT_TAGS.get(obj["__float__"], obj)
        return {k: decode_special_floats(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [decode_special_floats(v) for v in obj]
    return obj


def shown(text: str) -> str:
    """User text inside an error line: as typed, or escaped where it holds line breaks or control characters."""
    return text if text.isprintable() else repr(text)[1:-1]


def reason(e: Exception) -> str:
    if isinstance(e, json.JSONDecodeError):
        return f"{e.msg} at line {e.lineno} column {e.colno}"
    return one_line(str(e))


def one_line(text: str) -> str:
    return " ".join(str(text).split())
