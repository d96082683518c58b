"""GGUF headers written byte by byte, so a test can put any value of any type under any key
(NaN where a count belongs, a string for `general.file_type`, arrays nested 990 deep), which
`gguf.GGUFWriter` refuses to write. Layout: gguf-py/gguf/gguf_reader.py of llama.cpp."""
from __future__ import annotations

import struct

from gguf import GGUF_MAGIC, GGUFValueType as V

FMT = {V.UINT8: "<B", V.INT8: "<b", V.UINT16: "<H", V.INT16: "<h", V.UINT32: "<I", V.INT32: "<i",
       V.FLOAT32: "<f", V.BOOL: "<?", V.UINT64: "<Q", V.INT64: "<q", V.FLOAT64: "<d"}


def s(text: str | bytes) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(raw)) + raw


def value(vtype: V, v) -> bytes:
    """The bytes of one value of `vtype` (without the type tag). Arrays: `v = (item_type, items)`."""
    if vtype == V.STRING:
        return s(v)
    if vtype == V.ARRAY:
        itype, items = v
        return struct.pack("<IQ", itype, len(items)) + b"".join(value(itype, x) for x in items)
    return struct.pack(FMT[vtype], v)


def kv(key: str, vtype: V, v) -> bytes:
    return s(key) + struct.pack("<I", vtype) + value(vtype, v)


def header(meta: list[tuple[str, V, object]], tensors: list[tuple[str, tuple[int, ...], int, int]] = (),
           *, version: int = 3, raw_meta: bytes = b"", n_kv: int | None = None, n_tensors: int | None = None) -> bytes:
    """A whole GGUF header: `meta` as (key, type, value), `tensors` as (name, ggml shape, ggml type id,
    offset); `raw_meta` is appended to the metadata as is (its pairs counted by `n_kv`)."""
    body = b"".join(kv(*m) for m in meta) + raw_meta
    infos = b"".join(s(name) + struct.pack("<I", len(shape)) + b"".join(struct.pack("<Q", d) for d in shape)
                     + struct.pack("<IQ", t, off) for name, shape, t, off in tensors)
    return (struct.pack("<IIQQ", GGUF_MAGIC, version, len(tensors) if n_tensors is None else n_tensors,
                        len(meta) if n_kv is None else n_kv) + body + infos)


def llama_meta(**over) -> list[tuple[str, V, object]]:
    """A small llama's metadata; `over` replaces a key's (type, value) by its name after `llama.`
    (dots as `__`) or its full name (`general__file_type`); a value None drops the key."""
    base = {"general.architecture": (V.STRING, "llama"), "general.file_type": (V.UINT32, 7),
            "llama.block_count": (V.UINT32, 2), "llama.embedding_length": (V.UINT32, 256),
            "llama.attention.head_count": (V.UINT32, 4), "llama.attention.head_count_kv": (V.UINT32, 2),
            "llama.feed_forward_length": (V.UINT32, 512), "llama.context_length": (V.UINT32, 2048),
            "llama.vocab_size": (V.UINT32, 512)}
    for k, tv in over.items():
        key = k.replace("__", ".")
        key = key if key.startswith("general.") or key.startswith("tokenizer.") else f"llama.{key}"
        if tv is None:
            base.pop(key, None)
        else:
            base[key] = tv
    return [(k, t, v) for k, (t, v) in base.items()]


def llama_tensors(n_layer: int = 2, n_embd: int = 256, n_vocab: int = 512) -> list[tuple[str, tuple[int, ...], int, int]]:
    """F32 tensors (type 0) of a small llama, laid out back to back at 32-byte alignment."""
    shapes = [("token_embd.weight", (n_embd, n_vocab))]
    for i in range(n_layer):
        shapes += [(f"blk.{i}.attn_q.weight", (n_embd, n_embd)), (f"blk.{i}.ffn_down.weight", (n_embd, n_embd))]
    out, off = [], 0
    for name, shape in shapes:
        out.append((name, shape, 0, off))
        off += -(-(4 * shape[0] * shape[1]) // 32) * 32
    return out


def gguf_file(meta=None, tensors=None, **kw) -> bytes:
    """Header plus zero data: a file whose tensors all fit, so only the header can be wrong."""
    meta = llama_meta() if meta is None else meta
    tensors = llama_tensors() if tensors is None else tensors
    head = header(meta, tensors, **kw)
    pad = -len(head) % 32
    end = max((off + 4 * _n(shape) for _, shape, _, off in tensors), default=0)
    return head + b"\0" * (pad + end)


def _n(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n
