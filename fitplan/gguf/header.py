"""Read a GGUF file's header (metadata and tensor infos), never its tensor data.

The GGUF layout (gguf-py/gguf/gguf_reader.py and ggml/src/gguf.cpp of llama.cpp): magic `GGUF`,
uint32 version (2 or 3), uint64 tensor count, uint64 metadata count, the metadata key/value pairs,
one info per tensor (name, n_dims, dims in ggml order, ggml type, offset into the data section),
then padding to `general.alignment` (32 by default) and the data section.

One parser serves local files and Hub files: it pulls bytes through `read(offset, size)`, so a
local file is read with seek+read and a Hub file with HTTP Range requests (`hub.py`), each only as
far as the header goes. `gguf.GGUFReader` is not used for this because it memory-maps the whole
file and walks every array element in Python (the 128k-token vocabularies of current models make
that seconds per header), and because it cannot work on a byte range of a remote file; the tests
check that this parser and `GGUFReader` agree on every file they write.

What the metadata means (hyperparameters, each checked for type and range) is `hparams.py`; here the
work a header costs is bounded: at most MAX_TENSORS tensors, MAX_KV keys, MAX_ITEMS strings and arrays
inside arrays, MAX_NESTING levels of arrays, MAX_HEADER_BYTES in all, long arrays skipped in place.

Side effects are confined to `read_gguf` / `read_gguf_folder` (file reads); `parse_header` is pure
given its `read` function.
"""
from __future__ import annotations

import os
import re
import struct
from pathlib import Path
from typing import Callable

from gguf import GGUF_MAGIC, GGUFValueType

from ..errors import FileError, InputError
from .hparams import ArrayLen as _ArrayLen, model_of
from .model import DEFAULT_ALIGNMENT, GGUFModel, GGUFTensor
from .ggml_types import ggml_type, tensor_bytes

#: Refuse headers past this size: a real one is a few MB (tokenizer), 64 MiB is far beyond any seen.
MAX_HEADER_BYTES = 64 << 20
#: ggml's GGML_MAX_DIMS.
MAX_DIMS = 4
#: Bounds of what a real model file holds, so that the work and memory a header costs stay bounded
#: whatever it claims. Tensors: DeepSeek-V3 with every expert a tensor of its own has ~47,000.
MAX_TENSORS = 100_000
#: Metadata keys: real files have 30-60 (tokenizer arrays are one key each).
MAX_KV = 65_536
#: Strings and arrays inside metadata arrays, all arrays together: Llama 3's 128,256 tokens plus
#: 280,147 merges are ~410,000; Gemma 3's 262,144 tokens fewer.
MAX_ITEMS = 1_000_000
#: Arrays inside arrays: real files nest none; gguf-py can write a few levels.
MAX_NESTING = 8
MAX_TENSOR_DIM = 1 << 40
_SCALARS = {
    GGUFValueType.UINT8: "<B", GGUFValueType.INT8: "<b", GGUFValueType.UINT16: "<H", GGUFValueType.INT16: "<h",
    GGUFValueType.UINT32: "<I", GGUFValueType.INT32: "<i", GGUFValueType.FLOAT32: "<f", GGUFValueType.BOOL: "<?",
    GGUFValueType.UINT64: "<Q", GGUFValueType.INT64: "<q", GGUFValueType.FLOAT64: "<d",
}
#: Arrays longer than this are kept as their length only (tokenizer tokens, merges, scores).
_KEEP_ARRAY = 4096
_SPLIT = re.compile(r"^(?P<stem>.+)-(?P<i>\d{5})-of-(?P<n>\d{5})\.gguf$", re.IGNORECASE)


class _Truncated(Exception):
    pass


class _Cursor:
    """Reads forward through the header, asking `read(offset, size)` for more bytes as needed. Counts
    what it walks (`items`): strings and arrays inside arrays, bounded by MAX_ITEMS."""

    def __init__(self, read: Callable[[int, int], bytes], first_chunk: int, where: str):
        self._read, self._buf, self._chunk, self.pos = read, b"", first_chunk, 0
        self.items = 0
        self.where = where  # the file, named in errors

    def _ensure(self, end: int) -> None:
        if end > MAX_HEADER_BYTES:
            raise FileError(f"header longer than {MAX_HEADER_BYTES >> 20} MiB", path=self.where)
        while end > len(self._buf):
            want = max(self._chunk, end - len(self._buf))
            more = self._read(len(self._buf), want)
            if not more:
                raise _Truncated()
            self._buf += more
            self._chunk *= 2  # geometric growth: few requests for a large header

    def take(self, n: int) -> bytes:
        end = self.pos + n
        self._ensure(end)
        out = self._buf[self.pos:end]
        self.pos = end
        return out

    def skip(self, n: int) -> None:
        self._ensure(self.pos + n)
        self.pos += n

    def unpack(self, fmt: str):
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        n = self.unpack("<Q")
        if n > MAX_HEADER_BYTES:
            raise FileError(f"a string claims {n:,} bytes", path=self.where)
        return self.take(n).decode("utf-8", errors="replace")

    def skip_string(self) -> None:
        n = self.unpack("<Q")
        if n > MAX_HEADER_BYTES:
            raise FileError(f"a string claims {n:,} bytes", path=self.where)
        self.skip(n)

    def skip_strings(self, n: int) -> None:
        """Walk `n` length-prefixed strings in the buffer itself: one step per string, no copies."""
        pos, unpack_from = self.pos, struct.unpack_from
        for _ in range(n):
            if pos + 8 > len(self._buf):
                self._ensure(pos + 8)
            length = unpack_from("<Q", self._buf, pos)[0]
            if length > MAX_HEADER_BYTES:
                raise FileError(f"a string claims {length:,} bytes", path=self.where)
            pos += 8 + length
        self._ensure(pos)
        self.pos = pos

    def count(self, n: int) -> None:
        self.items += n
        if self.items > MAX_ITEMS:
            raise FileError(f"its metadata arrays hold more than {MAX_ITEMS:,} strings and arrays, more than "
                             "any real model's tokenizer", path=self.where)

    def value(self, vtype: int, keep: bool, depth: int = 0):
        try:
            t = GGUFValueType(vtype)
        except ValueError:
            raise FileError(f"unknown metadata value type {vtype}", path=self.where) from None
        if t in _SCALARS:
            return self.unpack(_SCALARS[t])
        if t == GGUFValueType.STRING:
            return self.string() if keep else self.skip_string()
        if t == GGUFValueType.ARRAY:
            if depth >= MAX_NESTING:
                raise FileError(f"its metadata holds arrays nested more than {MAX_NESTING} deep", path=self.where)
            itype, n = self.unpack("<I"), self.unpack("<Q")
            if n > MAX_HEADER_BYTES:
                raise FileError(f"an array claims {n:,} elements", path=self.where)
            keep_items = keep and n <= _KEEP_ARRAY
            if itype == GGUFValueType.STRING:
                self.count(n)
                if not keep_items:
                    self.skip_strings(n)
                    return _ArrayLen(n)
                return [self.string() for _ in range(n)]
            if itype == GGUFValueType.ARRAY:
                self.count(n)
                items = [self.value(itype, keep_items, depth + 1) for _ in range(n)]
            else:
                items = self._scalar_array(itype, n, keep_items)
            return items if keep_items else _ArrayLen(n)
        raise FileError(f"unknown metadata value type {vtype}", path=self.where)

    def _scalar_array(self, itype: int, n: int, keep: bool):
        try:
            fmt = _SCALARS[GGUFValueType(itype)]
        except (ValueError, KeyError):
            raise FileError(f"unknown array element type {itype}", path=self.where) from None
        size = n * struct.calcsize(fmt)
        if not keep:
            self.skip(size)
            return None
        return list(struct.unpack("<" + fmt[1:] * n, self.take(size)))


def parse_header(read: Callable[[int, int], bytes], *, where: str, file_size: int | None = None,
                 first_chunk: int = 1 << 20) -> GGUFModel:
    """The `GGUFModel` of the GGUF file whose bytes `read(offset, size)` returns (fewer at the end).

    `where` names the file in errors. With `file_size`, a file too short for its tensors is an error.
    Errors are `InputError`s with one line: what is wrong with which file, and what to do.
    """
    cur = _Cursor(read, first_chunk, where)
    bad = f"{where} is not a valid GGUF file"
    try:
        magic = cur.unpack("<I")
        if magic != GGUF_MAGIC:
            raise FileError(f"{where} is not a GGUF file (it does not start with 'GGUF'): pass a .gguf file "
                             "made by llama.cpp's convert script or llama-quantize", path=where)
        version = cur.unpack("<I")
        if version not in (2, 3):
            raise FileError(f"{where} is GGUF version {version}; fitplan reads versions 2 and 3: re-convert it "
                             "with a current llama.cpp", path=where)
        n_tensors, n_kv = cur.unpack("<Q"), cur.unpack("<Q")
        if n_tensors > MAX_TENSORS or n_kv > MAX_KV:
            raise FileError(f"{bad}: its header claims {n_tensors:,} tensors and {n_kv:,} metadata keys; "
                             "the file is corrupt, re-download it", path=where)
        meta: dict = {}
        for _ in range(n_kv):
            key = cur.string()
            meta[key] = cur.value(cur.unpack("<I"), keep=True)
        infos = []
        for _ in range(n_tensors):
            name = cur.string()
            n_dims = cur.unpack("<I")
            if not 1 <= n_dims <= MAX_DIMS:
                raise FileError(f"tensor {name!r} has {n_dims} dimensions", path=where)
            shape = tuple(cur.unpack("<Q") for _ in range(n_dims))
            if any(d > MAX_TENSOR_DIM for d in shape):
                raise FileError(f"tensor {name!r} claims a dimension of {max(shape):,} elements", path=where)
            t = ggml_type(cur.unpack("<I"), path=where)
            offset = cur.unpack("<Q")
            if offset > MAX_TENSOR_DIM * 1024:
                raise FileError(f"tensor {name!r} claims an offset of {offset:,} bytes", path=where)
            infos.append((name, shape, t, offset))
        header_end = cur.pos
    except _Truncated:
        raise FileError(f"{bad}: it ends inside its header (truncated after {cur.pos:,} bytes); "
                         "re-download it", path=where) from None
    except InputError as e:
        if str(e).startswith(where):
            raise
        raise FileError(f"{bad}: {e}; re-download it", path=where) from None
    except (struct.error, UnicodeDecodeError) as e:
        raise FileError(f"{bad}: its header cannot be decoded ({e}); re-download it", path=where) from None

    alignment = meta.get("general.alignment", DEFAULT_ALIGNMENT)
    if (not isinstance(alignment, int) or isinstance(alignment, bool) or alignment <= 0
            or alignment & (alignment - 1) or alignment > 1 << 20):
        raise FileError(f"{bad}: general.alignment {alignment!r} is not a power of two; re-download it",
                        path=where, key="general.alignment")
    data_start = -(-header_end // alignment) * alignment
    tensors = []
    end = 0
    for name, shape, t, offset in infos:
        try:
            tensor = GGUFTensor(name, shape, int(t))
            nbytes = tensor_bytes(t, shape)
        except ValueError as e:  # a FileError, or row_bytes refusing the shape
            raise FileError(f"{bad}: tensor {name!r}: {e}; re-download it", path=where) from None
        if offset % alignment:
            raise FileError(f"{bad}: tensor {name!r} starts at offset {offset}, not a multiple of the "
                             f"alignment {alignment}; re-download it", path=where)
        tensors.append(tensor)
        end = max(end, offset + nbytes)
    if file_size is not None and data_start + end > file_size:
        raise FileError(f"{bad}: its tensors need {data_start + end:,} bytes but the file has {file_size:,}; "
                        "it is truncated, re-download it", path=where)
    return model_of(meta, tuple(tensors), where=where, header_bytes=data_start, alignment=alignment,
                  file_bytes=file_size if file_size is not None else data_start + end)


# -- local files (the side effects) ---------------------------------------------------------------

def read_gguf(path: str | os.PathLike) -> GGUFModel:
    """The header of a local `.gguf` file (or of every shard of a `-0000i-of-0000n.gguf` split set)."""
    from ..safeio import check_regular

    p = Path(path)
    if not p.exists():
        raise FileError(f"no such file: {p} (pass a .gguf file or a folder holding .gguf files)", path=str(p))
    check_regular(p)  # a FIFO or a device is refused before it is opened
    parts = split_parts(p.name)
    if parts:
        shards = [p.with_name(n) for n in parts]
        missing = [s.name for s in shards if not s.is_file()]
        if missing:
            raise FileError(f"{p.name} is part of a {len(parts)}-file split GGUF but {missing[0]} is "
                             "missing: download every part", path=str(p))
        return merge_shards([_read_one(s) for s in shards], where=str(shards[0]))
    return _read_one(p)


def _read_one(p: Path) -> GGUFModel:
    size = p.stat().st_size
    with open(p, "rb", buffering=0) as f:
        def read(offset: int, n: int) -> bytes:
            f.seek(offset)
            return f.read(n)

        model = parse_header(read, where=str(p), file_size=size)
    from dataclasses import replace

    return replace(model, origin="local", path=str(p.resolve()), files=(p.name,))


def merge_shards(parts: list[GGUFModel], *, where: str) -> GGUFModel:
    """One model from the shards of a split GGUF: the first shard's metadata, every shard's tensors."""
    from dataclasses import replace

    first = parts[0]
    return replace(first, tensors=tuple(t for part in parts for t in part.tensors),
                   file_bytes=sum(p.file_bytes for p in parts), header_bytes=sum(p.header_bytes for p in parts),
                   files=tuple(f for p in parts for f in p.files), name=Path(where).name)


def is_model_file(name: str) -> bool:
    """Whether a file name (no folder) names a GGUF model to plan: a `.gguf`, split sets by their
    first part, vision projectors (`mmproj*`) left out since they are not language models."""
    return (name.lower().endswith(".gguf") and not name.lower().startswith("mmproj")
            and (split_parts(name) is None or _SPLIT.match(name)["i"].lstrip("0") == "1"))


def split_parts(name: str) -> list[str] | None:
    """All part names of the split GGUF `name` belongs to (`x-00001-of-00003.gguf`), None if not split."""
    m = _SPLIT.match(name)
    if not m or not 1 <= int(m["i"]) <= int(m["n"]):  # `-00000-of-00000`, `-00002-of-00001`: no split set
        return None
    return [f"{m['stem']}-{i:05d}-of-{m['n']}.gguf" for i in range(1, int(m["n"]) + 1)]


def gguf_files(folder: str | os.PathLike) -> tuple[Path, ...]:
    """The model files in `folder` (`is_model_file`), in name order."""
    return tuple(p for p in sorted(Path(folder).glob("*.gguf")) if is_model_file(p.name))


def read_gguf_folder(folder: str | os.PathLike) -> tuple[GGUFModel, ...]:
    """Every model file in a folder holding several quantizations, in file name order."""
    files = gguf_files(folder)
    if not files:
        raise FileError(f"{folder} holds no .gguf file: pass a folder with GGUF files, or a .gguf file", path=str(folder))
    models, skipped, first = [], [], None
    for p in files:
        try:
            models.append(read_gguf(p))
        except InputError as err:  # one bad file leaves the others planned, with a note naming it
            if len(files) == 1:
                raise
            first = first or err
            skipped.append(f"{p.name} left out: {err}")
    if not models:
        raise FileError(f"none of the {len(files)} .gguf files in {folder} can be read; the first: {first}", path=str(folder))
    from dataclasses import replace

    return (replace(models[0], notes=models[0].notes + tuple(skipped)), *models[1:])
