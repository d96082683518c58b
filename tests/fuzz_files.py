"""Generators for the file surfaces of issue 21: GGUF headers and inventory cache entries.

Shared by tests/test_fuzz_files.py (a few hundred derandomized cases each) and benchmarks/fuzz.py
(`--only gguf`, `--only cache`: the longer campaign). Each GGUF case is a `fuzzing.Case` run through
the real CLI (`fitplan check FILE.gguf` or a folder of them), so the property is the CLI's: a plan
(exit 0/1) or one `fitplan: error:` line (exit 2). Each cache case is a damaged entry read through
`get_inventory`, whose property is stronger: the inventory it returns is the true one.
"""
from __future__ import annotations

import json
import math
import struct

from gguf import GGUFValueType as V
from hypothesis import strategies as st

import gguf_bytes as gb
from fuzzing import Case

# -- GGUF headers ------------------------------------------------------------------------------------------

KEYS = ("block_count", "embedding_length", "attention__head_count", "attention__head_count_kv",
        "attention__key_length", "attention__value_length", "feed_forward_length", "context_length", "vocab_size",
        "expert_count", "expert_used_count", "attention__sliding_window", "general__file_type", "general__alignment",
        "general__architecture", "attention__sliding_window_pattern", "tokenizer__ggml__tokens")

_INTS = [0, 1, 2, 3, 7, 64, 4096, -1, -2 ** 31, 2 ** 31 - 1, 2 ** 32 - 1, 10 ** 8, 10 ** 12, 2 ** 63 - 1, 2 ** 64 - 1]
_FLOATS = [float("nan"), float("inf"), float("-inf"), 0.0, -1.0, 4096.0, 1e30, 15.5]


def _fits(vtype, v) -> bool:
    fmt = gb.FMT[vtype]
    try:
        struct.pack(fmt, v)
        return True
    except (struct.error, OverflowError):
        return False


@st.composite
def gguf_value(draw, depth: int = 0):
    """(type, value) of any GGUF type, leaning on values that break counts."""
    kind = draw(st.sampled_from(["int", "int", "float", "string", "bool", "array", "array"]))
    if kind == "int":
        vtype = draw(st.sampled_from([V.UINT8, V.INT8, V.UINT16, V.INT16, V.UINT32, V.INT32, V.UINT64, V.INT64]))
        v = draw(st.sampled_from(_INTS) | st.integers(-2 ** 63, 2 ** 64 - 1))
        return (vtype, v) if _fits(vtype, v) else (V.UINT64, abs(v) % 2 ** 64)
    if kind == "float":
        vtype, v = draw(st.sampled_from([V.FLOAT32, V.FLOAT64])), draw(st.sampled_from(_FLOATS) | st.floats())
        return (vtype, v) if _fits(vtype, v) else (V.FLOAT64, v)
    if kind == "string":
        return V.STRING, draw(st.sampled_from(["Q4_K_M", "4096", "", "llama", "\x00\xff"]) | st.text(max_size=20))
    if kind == "bool":
        return V.BOOL, draw(st.booleans())
    if depth >= 3:
        return V.ARRAY, (V.UINT32, [])
    item = draw(gguf_value(depth + 1))
    n = draw(st.integers(0, 6))
    items = [item[1]] * n
    if item[0] == V.ARRAY:
        return V.ARRAY, (V.ARRAY, items)
    return V.ARRAY, (item[0], items)


def _deep_array(depth: int) -> bytes:
    inner = struct.pack("<IQ", V.UINT8, 0)
    for _ in range(depth):
        inner = struct.pack("<IQ", V.ARRAY, 1) + inner
    return gb.s("tokenizer.ggml.junk") + struct.pack("<I", V.ARRAY) + inner


@st.composite
def gguf_bytes(draw) -> bytes:
    """One GGUF file: a valid small llama with one to three changes, or a structural attack."""
    kind = draw(st.sampled_from(["values", "values", "values", "structure", "bytes", "valid"]))
    meta_over, raw, n_kv, n_tensors, version = {}, b"", None, None, 3
    # small tensors: the data section (zeros) stays ~25 KB, since hypothesis keeps what it draws
    tensors = gb.llama_tensors(n_embd=32, n_vocab=64)
    if kind == "values":
        for _ in range(draw(st.integers(1, 3))):
            key = draw(st.sampled_from(KEYS))
            meta_over[key] = None if draw(st.integers(0, 7)) == 0 else draw(gguf_value())
    elif kind == "structure":
        attack = draw(st.sampled_from(["deep", "claims", "tensors", "dims", "version", "strings", "types"]))
        if attack == "deep":
            raw = _deep_array(draw(st.sampled_from([5, 9, 50, 990, 5000])))
        elif attack == "claims":  # counts far past the bytes that follow
            raw = gb.s("tokenizer.ggml.tokens") + struct.pack("<IIQ", V.ARRAY, draw(st.sampled_from(
                [V.STRING, V.ARRAY, V.UINT8, V.FLOAT64])), draw(st.sampled_from([2 ** 20, 2 ** 32, 2 ** 63, 2 ** 64 - 1])))
        elif attack == "tensors":
            n_tensors = draw(st.sampled_from([0, 10 ** 5 + 1, 999_999, 2 ** 32, 2 ** 64 - 1]))
        elif attack == "dims":
            i = draw(st.integers(0, len(tensors) - 1))
            name, shape, t, off = tensors[i]
            shape = draw(st.sampled_from([(), (0,), (2 ** 63, 2), (7, 3), (1,) * 5, (2 ** 40 + 1,)]))
            t = draw(st.sampled_from([t, 4, 5, 99, 2 ** 31, 12]))
            off = draw(st.sampled_from([off, off + 1, 2 ** 63, 2 ** 64 - 1]))
            tensors = tensors[:i] + [(name, shape, t, off)] + tensors[i + 1:]
        elif attack == "version":
            version = draw(st.sampled_from([0, 1, 2, 4, 2 ** 32 - 1]))
        elif attack == "strings":
            n = draw(st.sampled_from([10, 5000, 200_000]))
            raw = gb.s("tokenizer.ggml.merges") + struct.pack("<IIQ", V.ARRAY, V.STRING, n) + b"\0" * 8 * n
        else:
            raw = gb.s("x") + struct.pack("<I", draw(st.sampled_from([13, 99, 2 ** 32 - 1])))
        n_kv = len(gb.llama_meta(**meta_over)) + (1 if raw else 0)
        n_kv = draw(st.sampled_from([n_kv, n_kv, 2 ** 20, 2 ** 64 - 1])) if attack != "claims" else n_kv
    meta = gb.llama_meta(**meta_over)
    try:
        data = gb.gguf_file(meta, tensors, raw_meta=raw, n_kv=n_kv, n_tensors=n_tensors, version=version)
    except (struct.error, OverflowError, MemoryError):
        data = gb.header(meta, [], raw_meta=raw, n_kv=n_kv, version=version)
    if kind == "bytes":
        data = gb.gguf_file(tensors=gb.llama_tensors(n_embd=32, n_vocab=64))
        cut = draw(st.integers(0, len(data)))
        if draw(st.booleans()):
            data = data[:cut]
        else:
            flips = draw(st.lists(st.tuples(st.integers(0, max(len(data) - 1, 0)), st.integers(0, 255)), max_size=8))
            buf = bytearray(data)
            for i, b in flips:
                if buf:
                    buf[i] = b
            data = bytes(buf)
    return data


_NAMES = ["m.Q8_0.gguf", "m-00000-of-00000.gguf", "m-00002-of-00001.gguf", "m-00001-of-00002.gguf", "mmproj.gguf",
          "M.GGUF"]


@st.composite
def gguf_cases(draw) -> Case:
    """`fitplan check FILE.gguf` (or a folder of one to three files) on a described GPU."""
    n = draw(st.integers(1, 3)) if draw(st.booleans()) else 1
    files = tuple((f"g/{draw(st.sampled_from(_NAMES)) if i == 0 else f'f{i}.gguf'}", draw(gguf_bytes()))
                  for i in range(n))
    files = tuple(dict(files).items())  # one content per name
    target = "{D}/g" if n > 1 or draw(st.booleans()) else "{D}/" + files[0][0]
    gpu = draw(st.sampled_from(["--gpu=rtx4090", "--gpu=t4", "--gpu=2xrtx4090"]))
    return Case("gguf", files, ("check", target, gpu, *draw(st.sampled_from([(), ("--json",)]))))


# -- inventory cache entries ---------------------------------------------------------------------------------

_JUNK = [None, True, -1, 0, 2 ** 70, 1.5, float("nan"), "abc", "", [], {}, [[[]]], {"a": {"b": {}}}, [1, -1]]


@st.composite
def entry_damage(draw):
    """A function taking an entry's bytes and returning damaged bytes (or a special file kind)."""
    kind = draw(st.sampled_from(["field", "field", "field", "envelope", "bytes", "deep", "special", "resealed"]))
    if kind in ("field", "resealed"):
        path = draw(st.sampled_from(["hidden_size", "num_layers", "vocab_size", "parameters", "tensors",
                                     "kv_layers", "num_attention_heads", "tensors.0.shape", "tensors.0.name",
                                     "kv_layers.0.elements_per_token", "stored_bytes", "max_positions",
                                     "quantization", "notes", "extra_field"]))
        value = draw(st.sampled_from(_JUNK) | st.integers(-2 ** 63, 2 ** 63))
        return (kind, path, value)
    if kind == "envelope":
        return (kind, draw(st.sampled_from(["format", "inputs", "sha256", "inventory"])), draw(st.sampled_from(_JUNK)))
    if kind == "bytes":
        return (kind, draw(st.integers(0, 10 ** 6)), draw(st.binary(max_size=16)))
    if kind == "deep":
        return (kind, draw(st.sampled_from([100, 10_000, 200_000])), None)
    return (kind, draw(st.sampled_from(["fifo", "dir", "devzero", "devnull", "dangling", "huge"])), None)


def _set(d, path: str, value):
    keys = path.split(".")
    for k in keys[:-1]:
        d = d[int(k)] if isinstance(d, list) else d[k]
        if isinstance(d, list) and not d:
            return
    last = keys[-1]
    if isinstance(d, list):
        if d:
            d[int(last)] = value
    else:
        d[last] = value


def damage_entry(path, damage, *, huge: int) -> None:
    """Apply `damage` (from `entry_damage`) to the entry file at `path`."""
    import hashlib
    import os

    kind, a, b = damage
    raw = path.read_bytes()
    if kind in ("field", "resealed"):
        outer = json.loads(raw)
        inv = json.loads(outer["inventory"])
        _set(inv, a, b)
        outer["inventory"] = json.dumps(inv)
        if kind == "resealed":  # a forger who recomputes the digest: the value checks still hold
            outer["sha256"] = hashlib.sha256(outer["inventory"].encode()).hexdigest()
        path.write_text(json.dumps(outer))
    elif kind == "envelope":
        outer = json.loads(raw)
        outer[a] = b
        path.write_text(json.dumps(outer))
    elif kind == "bytes":
        i = a % (len(raw) + 1)
        path.write_bytes(raw[:i] + b + raw[i + len(b):] if b else raw[:i])
    elif kind == "deep":
        path.write_bytes(b"[" * a + b"]" * a)
    else:
        path.unlink()
        if a == "fifo":
            os.mkfifo(path)
        elif a == "dir":
            path.mkdir()
        elif a == "devzero":
            path.symlink_to("/dev/zero")
        elif a == "devnull":
            path.symlink_to("/dev/null")
        elif a == "dangling":
            path.symlink_to(path.with_name("nowhere"))
        else:
            with open(path, "wb") as f:
                f.truncate(huge)  # sparse


def restore_entry(path, raw: bytes) -> None:
    import shutil

    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif os_lexists(path):
        path.unlink()
    path.write_bytes(raw)


def os_lexists(path) -> bool:
    import os

    return os.path.lexists(path)


def same_inventory(a, b) -> bool:
    da, db = a.to_dict(), b.to_dict()
    da.pop("notes"), db.pop("notes")
    return json.dumps(da, sort_keys=True, default=str) == json.dumps(db, sort_keys=True, default=str) and not any(
        isinstance(x, float) and math.isnan(x) for x in ())
