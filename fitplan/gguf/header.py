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
from .model import DEFAULT_ALIGNMENT, GGUFModel, GGUFTensor
from .ggml_types import file_type_name, ggml_type, tensor_bytes

#: Refuse headers past this size: a real one is a few MB (tokenizer), 64 MiB is far beyond any seen.
MAX_HEADER_BYTES = 64 << 20
#: ggml's GGML_MAX_DIMS.
MAX_DIMS = 4
#: Sliding-window layer patterns llama.cpp hard-codes per architecture when the file carries no
#: `{arch}.attention.sliding_window_pattern` array (src/llama-model.cpp `hparams.set_swa_pattern(n)`:
#: of every n layers, the first n-1 use the window and the last one is global).
SWA_PATTERNS = {"gemma2": 2, "gemma3": 6, "cohere2": 4}
#: Architectures whose sliding window llama.cpp does not implement: their layers attend to the whole
#: context, so a window in the file does not shrink the KV cache.
SWA_IGNORED = {"llama", "mistral"}

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
    """Reads forward through the header, asking `read(offset, size)` for more bytes as needed."""

    def __init__(self, read: Callable[[int, int], bytes], first_chunk: int, where: str):
        self._read, self._buf, self._chunk, self.pos = read, b"", first_chunk, 0
        self.where = where  # the file, named in errors

    def take(self, n: int) -> bytes:
        end = self.pos + n
        if end > MAX_HEADER_BYTES:
            raise FileError(f"header longer than {MAX_HEADER_BYTES >> 20} MiB", path=self.where)
        while end > len(self._buf):
            want = max(self._chunk, end - len(self._buf))
            more = self._read(len(self._buf), want)
            if not more:
                raise _Truncated()
            self._buf += more
            self._chunk *= 2  # geometric growth: few requests for a large header
        out = self._buf[self.pos:end]
        self.pos = end
        return out

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
        self.take(n)

    def value(self, vtype: int, keep: bool):
        try:
            t = GGUFValueType(vtype)
        except ValueError:
            raise FileError(f"unknown metadata value type {vtype}", path=self.where) from None
        if t in _SCALARS:
            return self.unpack(_SCALARS[t])
        if t == GGUFValueType.STRING:
            return self.string() if keep else self.skip_string()
        if t == GGUFValueType.ARRAY:
            itype, n = self.unpack("<I"), self.unpack("<Q")
            if n > MAX_HEADER_BYTES:
                raise FileError(f"an array claims {n:,} elements", path=self.where)
            keep_items = keep and n <= _KEEP_ARRAY
            items = [self.value(itype, keep_items) for _ in range(n)] if itype in (
                GGUFValueType.STRING, GGUFValueType.ARRAY) else self._scalar_array(itype, n, keep_items)
            return items if keep_items else _ArrayLen(n)
        raise FileError(f"unknown metadata value type {vtype}", path=self.where)

    def _scalar_array(self, itype: int, n: int, keep: bool):
        try:
            fmt = _SCALARS[GGUFValueType(itype)]
        except (ValueError, KeyError):
            raise FileError(f"unknown array element type {itype}", path=self.where) from None
        raw = self.take(n * struct.calcsize(fmt))
        return list(struct.unpack("<" + fmt[1:] * n, raw)) if keep else None


class _ArrayLen(int):
    """A long array's length, standing in for the array (only its length is needed)."""


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
        if n_tensors > 1_000_000 or n_kv > 1_000_000:
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
            t = ggml_type(cur.unpack("<I"), path=where)
            offset = cur.unpack("<Q")
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
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
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
    return _model(meta, tuple(tensors), where=where, header_bytes=data_start, alignment=alignment,
                  file_bytes=file_size if file_size is not None else data_start + end)


def _model(meta: dict, tensors: tuple[GGUFTensor, ...], *, where: str, header_bytes: int, alignment: int,
           file_bytes: int) -> GGUFModel:
    arch = meta.get("general.architecture")
    if not isinstance(arch, str) or not arch:
        raise FileError(f"{where} has no general.architecture: it is not a llama.cpp model file; re-convert it",
                        path=where, key="general.architecture")

    def get(key: str, default=None):
        return meta.get(f"{arch}.{key}", default)

    def count(key: str, default=None) -> int | None:
        v = get(key, default)
        if isinstance(v, list):
            v = max(v) if v else default
        return int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else default

    n_layer = count("block_count")
    n_embd = count("embedding_length")
    n_head = count("attention.head_count")
    if not n_layer or not n_embd or not n_head:
        raise FileError(f"{where} lacks {arch}.block_count, .embedding_length or .attention.head_count: "
                         "fitplan plans decoder models with attention; this file is not one it can plan",
                        path=where, key=f"{arch}.block_count")
    kv = get("attention.head_count_kv", n_head)
    n_head_kv = tuple(int(x) for x in kv) if isinstance(kv, list) else (int(kv),) * n_layer
    if len(n_head_kv) != n_layer:
        raise FileError(f"{where}: {arch}.attention.head_count_kv has {len(n_head_kv)} entries for {n_layer} "
                         "layers; re-convert the file", path=where, key=f"{arch}.attention.head_count_kv")
    head_k = count("attention.key_length", n_embd // n_head)
    head_v = count("attention.value_length", n_embd // n_head)
    tokens = meta.get("tokenizer.ggml.tokens")
    embd = next((t for t in tensors if t.name == "token_embd.weight"), None)
    n_vocab = count("vocab_size") or (int(tokens) if isinstance(tokens, int) else len(tokens or ())) or (
        embd.shape[1] if embd is not None and len(embd.shape) > 1 else 0)
    window = count("attention.sliding_window")
    pattern = get("attention.sliding_window_pattern")
    notes = []
    if window and isinstance(pattern, list) and len(pattern) == n_layer:
        swa = tuple(bool(x) for x in pattern)
    elif window and arch in SWA_PATTERNS:
        n = SWA_PATTERNS[arch]
        swa = tuple(i % n < n - 1 for i in range(n_layer))
    else:
        swa = (False,) * n_layer
        if window and arch not in SWA_IGNORED:
            notes.append(f"{arch} declares a {window}-token sliding window without a layer pattern fitplan knows: "
                         "planned as full attention (an upper bound)")
    return GGUFModel(
        name=Path(where).name, origin="local", architecture=arch,
        file_type=file_type_name(meta.get("general.file_type")),
        tensors=tensors, n_layer=n_layer, n_embd=n_embd, n_head=n_head, n_head_kv=n_head_kv,
        head_dim_k=head_k, head_dim_v=head_v, n_vocab=n_vocab, context_length=count("context_length"),
        header_bytes=header_bytes, file_bytes=file_bytes, alignment=alignment, n_ff=count("feed_forward_length", 0),
        sliding_window=window if any(swa) else None, swa_layers=swa,
        n_expert=count("expert_count", 0), n_expert_used=count("expert_used_count", 0), notes=tuple(notes))


# -- local files (the side effects) ---------------------------------------------------------------

def read_gguf(path: str | os.PathLike) -> GGUFModel:
    """The header of a local `.gguf` file (or of every shard of a `-0000i-of-0000n.gguf` split set)."""
    p = Path(path)
    if not p.is_file():
        raise FileError(f"no such file: {p} (pass a .gguf file or a folder holding .gguf files)", path=str(p))
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
    m = _SPLIT.match(name)
    return (name.lower().endswith(".gguf") and not name.lower().startswith("mmproj")
            and not (m and int(m["i"]) != 1))


def split_parts(name: str) -> list[str] | None:
    """All part names of the split GGUF `name` belongs to (`x-00001-of-00003.gguf`), None if not split."""
    m = _SPLIT.match(name)
    if not m:
        return None
    return [f"{m['stem']}-{i:05d}-of-{m['n']}.gguf" for i in range(1, int(m["n"]) + 1)]


def gguf_files(folder: str | os.PathLike) -> tuple[Path, ...]:
    """The model files in `folder` (`is_model_file`), in name order."""
    return tuple(p for p in sorted(Path(folder).glob("*.gguf")) if is_model_file(p.name))


def read_gguf_folder(folder: str | os.PathLike) -> tuple[GGUFModel, ...]:
    """Every model file in a folder holding several quantizations, in file name order."""
    files = gguf_files(folder)
    if not files:
        raise FileError(f"{folder} holds no .gguf file: pass a folder with GGUF files, or a .gguf file",
                        path=str(folder))
    return tuple(read_gguf(p) for p in files)
