"""GGUF headers of files on the Hugging Face Hub, read with HTTP Range requests: never the weights.

The request is the one huggingface_hub itself sends for safetensors headers
(`HfApi.parse_safetensors_file_metadata`): `GET hf_hub_url(...)` with a `Range: bytes=a-b` header on
huggingface_hub's shared session, which follows the Hub's redirect to its CDN. A GGUF header has no
length prefix, so `header.parse_header` asks for 1 MiB first and doubles the request until the
header is complete (a 128k-token vocabulary makes it about 8 MB: 4 requests).

Every request goes through fitplan's one Hub client (`fitplan.model.sources.hub.HubClient`: its
retries, timeout and error wording), so a GGUF repo fails the way a transformers repo does.
"""
from __future__ import annotations

import re
from dataclasses import replace

from ..errors import FileError, OptionError
from ..model.sources.hub import HubClient
from .header import is_model_file, merge_shards, parse_header, split_parts
from .model import GGUFModel

_CONTENT_RANGE = re.compile(r"bytes \d+-\d+/(\d+)")


def read_hub_gguf(repo_id: str, filename: str, *, revision: str | None = None, token=None,
                  timeout: float | None = None) -> GGUFModel:
    """The header of `filename` in the Hub repo `repo_id` (all parts of a split file), by ranged reads."""
    folder, _, base = filename.rpartition("/")
    parts = split_parts(base)
    if parts:
        names = [f"{folder}/{n}" if folder else n for n in parts]
        return merge_shards([_read_one(repo_id, n, revision, token, timeout) for n in names], where=names[0])
    return _read_one(repo_id, filename, revision, token, timeout)


def hub_gguf_files(repo_id: str, *, revision: str | None = None, token=None, timeout: float | None = None
                   ) -> tuple[str, ...]:
    """The `.gguf` model files of a Hub repo (split sets by their first part, `mmproj*` left out)."""
    client = HubClient.open(repo_id, revision=revision, token=token, timeout=timeout)
    info = client.call(lambda: client.api.model_info(repo_id, revision=revision, token=token, timeout=client.timeout))
    out = sorted(s.rfilename for s in (info.siblings or ()) if is_model_file(s.rfilename.rpartition("/")[2]))
    if not out:
        raise OptionError(f"'{repo_id}' holds no .gguf file: pass a GGUF repo (e.g. one named '...-GGUF') or a "
                          "transformers repo id for the what-if estimate", option="model")
    return tuple(out)


def _read_one(repo_id: str, filename: str, revision, token, timeout) -> GGUFModel:
    from huggingface_hub.utils import get_session, hf_raise_for_status

    client = HubClient.open(repo_id, revision=revision, token=token, timeout=timeout)
    url, headers = client.file_url(filename), client.headers()
    total: list[int] = []

    def get(offset: int, size: int) -> bytes:
        if total and offset >= total[0]:
            return b""
        rng = {"Range": f"bytes={offset}-{offset + size - 1}"}

        def once():
            response = get_session().get(url, headers={**headers, **rng}, timeout=client.timeout)
            if response.status_code == 416:
                return None  # asked past the end: the file is shorter than its header
            hf_raise_for_status(response)
            return response

        response = client.call(once)
        if response is None:
            return b""
        if response.status_code == 200:  # a server that ignores Range: keep only what was asked
            total[:] = [len(response.content)]
            return response.content[offset:offset + size]
        m = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
        if m:
            total[:] = [int(m.group(1))]
        return response.content

    model = parse_header(get, where=f"{repo_id}/{filename}", file_size=None)
    size = total[0] if total else None
    if size is not None and size < model.file_bytes:
        raise FileError(f"{repo_id}/{filename} is not a valid GGUF file: its tensors need {model.file_bytes:,} "
                        f"bytes but the file has {size:,}; it is truncated, tell the repo owner",
                        path=f"{repo_id}/{filename}")
    return replace(model, origin="hub", repo_id=repo_id, files=(filename,),
                   file_bytes=size if size is not None else model.file_bytes)
