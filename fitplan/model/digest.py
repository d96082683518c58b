"""A local model folder's content, as one digest: what a lock pins and what `load()` re-checks.

The digest covers what a plan is made from and what `from_pretrained` loads: `config.json`, the
safetensors index, and each `*.safetensors` file's header (tensor names, dtypes, shapes and data
offsets), each with its file name. Weights themselves are not read: a header changes whenever the
model does (another architecture, size or dtype), and hashing gigabytes would make every load slow.
Reading is bounded like every user file (`fitplan.safeio`): regular files, capped sizes.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

from ..errors import FileError, ModelChangedError

#: safetensors' own header limit (as `source.MAX_HEADER_BYTES`).
_MAX_HEADER = 100_000_000
_CAP = 8 << 20  # config.json and the index, as `source.MAX_CONFIG_BYTES`


def folder_digest(folder: str | os.PathLike) -> str:
    """SHA-256 over config.json, the safetensors index and every safetensors header in `folder`."""
    from ..safeio import check_regular, read_capped

    folder = Path(folder).expanduser()
    h = hashlib.sha256()
    try:
        names = sorted(p.name for p in folder.iterdir())
    except OSError as err:
        raise FileError(f"cannot list {folder} ({err.strerror or err})", path=str(folder)) from None
    for name in names:
        p = folder / name
        if name in ("config.json", "model.safetensors.index.json"):
            data = read_capped(p, limit=_CAP, what=name)
        elif name.endswith(".safetensors"):
            check_regular(p)
            with open(p, "rb", buffering=0) as f:
                head = f.read(8)
                n = int.from_bytes(head, "little") if len(head) == 8 else 0
                data = head + (f.read(n) if n <= _MAX_HEADER else b"")
        else:
            continue
        h.update(name.encode() + b"\0" + len(data).to_bytes(8, "little") + data)
    return h.hexdigest()


def checked_digest(folder: str | os.PathLike, expected: str | None, *, since: str, fix: str) -> str:
    """`folder`'s digest; when `expected` (a lock's or a plan's) is given and differs, a `ModelChangedError`
    saying the folder changed since it was `since` ("locked", "planned") and `fix`."""
    found = folder_digest(folder)
    if expected and found != expected:
        path = str(folder)
        raise ModelChangedError(f"the model folder {path} changed since it was {since} (its config.json or "
                                f"safetensors headers differ: {expected[:12]} then, {found[:12]} now); {fix}",
                                path=path, since=since, expected=expected, found=found)
    return found
