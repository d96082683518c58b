"""A model in a local folder: config.json plus the headers of its safetensors files, read locally
(weights never). An HF cache snapshot is read the same way (`folder_tensors(cache=True)`).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from ...errors import FileError
from .base import ModelSource, TensorHeader, load_config, reason, tensor_headers

#: safetensors' own loader refuses headers above 100 MB (MAX_HEADER_SIZE in the safetensors crate).
MAX_HEADER_BYTES = 100_000_000
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


def looks_like_path(model: str) -> bool:
    """`./x`, `../x`, `/x`, `~/x`, `.`, or anything with a backslash: never a Hub repo id, so never sent there."""
    return (model.startswith(("./", "../", "/", "~", ".\\", "..\\")) or model in (".", "..") or "\\" in model
            or os.path.isabs(model))


def from_folder(model: str, folder: Path, with_tensors: bool) -> ModelSource:
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise FileError(f"{folder} has no config.json, so it is not a transformers model folder: pass the folder "
                        "that contains config.json, or a Hub repo id", path=str(folder))
    config = load_config(cfg_path.read_bytes(), str(cfg_path), lambda m: FileError(m, path=str(cfg_path)),
                         "fix or re-download it")
    tensors, files = folder_tensors(folder, cache=False) if with_tensors else (None, ())
    return ModelSource(model_id=model, origin="local", config=config, revision=None, tensors=tensors,
                       local_path=str(folder.resolve()), weight_files=files)


def folder_tensors(folder: Path, *, cache: bool) -> tuple[tuple[TensorHeader, ...] | None, tuple[str, ...]]:
    """Headers of the safetensors files transformers would load from `folder`, in huggingface_hub's
    order: `model.safetensors`, else the shards named by `model.safetensors.index.json`, else (a
    local folder only) every `*.safetensors`. In a local folder a shard the index names but the folder
    lacks is an unfinished download, an error. An HF cache snapshot (`cache`) holds only the files
    that were downloaded, so there anything incomplete means "headers unknown" (None)."""
    if (folder / SINGLE_FILE).is_file():
        files = [SINGLE_FILE]
    elif (folder / INDEX_FILE).is_file():
        files = _index_shards((folder / INDEX_FILE).read_bytes(), str(folder / INDEX_FILE))
        missing = [f for f in files if not (folder / f).is_file()]
        if missing:
            if cache:
                return None, ()
            raise FileError(f"{folder} lacks {missing[0]}" + (f" and {len(missing) - 1} more shard(s)" if
                            len(missing) > 1 else "") + f" listed in {INDEX_FILE}: finish the download",
                            path=str(folder / missing[0]))
    elif not cache:
        files = sorted(p.name for p in folder.glob("*.safetensors") if p.is_file())
    else:
        files = []
    if not files:
        return None, ()
    tensors: list[TensorHeader] = []
    for name in files:
        tensors.extend(read_safetensors_header(folder / name))
    return tuple(tensors), tuple(files)


def _index_shards(raw: bytes, where: str) -> list[str]:
    try:
        index = json.loads(raw)
    except ValueError as e:
        raise FileError(f"{where} is not valid JSON ({reason(e)}): re-download it", path=where) from None
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) and v and "/" not in v and "\\" not in v
                                                   and v not in (".", "..") for v in weight_map.values()):
        raise FileError(f"{where} has no valid 'weight_map' (tensor name -> shard file name): re-download it",
                        path=where, key="weight_map")
    return sorted(set(weight_map.values()))


def read_safetensors_header(path: str | os.PathLike) -> tuple[TensorHeader, ...]:
    """The tensors a safetensors file declares, reading only its header (8-byte little-endian length,
    then that many bytes of JSON). The data section is never read, so a 10 GB shard costs one small read."""
    path = Path(path)
    bad = f"{path} is not a valid safetensors file"
    size = path.stat().st_size
    with open(path, "rb", buffering=0) as f:
        head = f.read(8)
        if len(head) < 8:
            raise FileError(f"{bad}: it is only {len(head)} bytes long; re-download it", path=str(path))
        n = int.from_bytes(head, "little")
        if n > MAX_HEADER_BYTES:
            raise FileError(f"{bad}: its header claims {n:,} bytes, over the {MAX_HEADER_BYTES:,}-byte limit "
                            "safetensors itself enforces; the file is corrupt, re-download it", path=str(path))
        if 8 + n > size:
            raise FileError(f"{bad}: its header claims {n:,} bytes but the file has {size - 8:,} after the length; "
                            "it is truncated, re-download it", path=str(path))
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise FileError(f"{bad}: its header is not valid JSON ({reason(e)}); re-download it", path=str(path)) from None
    tensors = tensor_headers(header, bad, lambda m: FileError(m, path=str(path)), "re-download it")
    end = max((t[1] for t in tensors), default=0)
    if 8 + n + end > size:
        raise FileError(f"{bad}: its tensors need {end:,} data bytes but the file has {size - 8 - n:,}; "
                        "it is truncated, re-download it", path=str(path))
    return tuple(t[0] for t in tensors)
