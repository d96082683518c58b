"""Where a model's config.json and safetensors tensor headers come from, never its weights.

`resolve()` looks in this order and stops at the first hit:

1. an existing local folder (config.json plus the headers of its safetensors files, read locally);
2. fitplan's shipped catalogue (`fitplan/data/model_catalogue.json`): a config, no headers;
   skipped when a non-default revision is asked;
3. the Hugging Face Hub through huggingface_hub: config.json is downloaded into the normal HF cache,
   tensor headers come from HTTP Range requests (`get_safetensors_metadata`), weights never move.
   Offline (`offline=True` or `HF_HUB_OFFLINE=1`) the local HF cache replaces the Hub.

Hub failures become one-line `fitplan.errors` with what to do. Retries are ours and bounded:
huggingface_hub retries only some calls, some with a 60 s timeout and sleeps the server may set,
so each request we retry is one huggingface_hub sends once (see docs/sources.md).

No torch or transformers here, and huggingface_hub is imported only when the Hub or its cache is
needed: the cached CLI path must stay fast.

Why one module (~650 lines): the three sources return one `ModelSource`, share one config reader
and one safetensors-header parser, and `resolve()` falls from one to the next (an unreachable Hub
falls back to the HF cache). Split in two, the Hub half and the rest would import each other; the
clean split is three modules (shared types and parsers; folder and catalogue; the Hub, whose
`_Explainer`/`_retrying` `fitplan.gguf.hub` also uses) and is the next step.
"""
from __future__ import annotations

import inspect
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from importlib import resources
from math import prod
from pathlib import Path
from typing import Any, Callable

from ..errors import (ref, FitplanError, GatedModelError, HubError, InputError, LibraryChangedError, ModelNotFoundError,
                     UnsupportedModelError)

#: safetensors' own loader refuses headers above 100 MB (MAX_HEADER_SIZE in the safetensors crate).
MAX_HEADER_BYTES = 100_000_000
#: Attempts per Hub request we retry (429, 5xx, timeouts, connection errors), first one included.
ATTEMPTS = 3
#: Sleep before the 2nd attempt, doubled before each next one (not after timeouts: they waited already).
BACKOFF_S = 0.5
#: A 429's Retry-After longer than this is not waited for: the error says how long to wait instead.
MAX_RETRY_AFTER_S = 10.0
#: Seconds per Hub request when neither `timeout=` nor HF_HUB_ETAG_TIMEOUT says otherwise.
DEFAULT_TIMEOUT_S = 10.0

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
_TRUE = {"1", "ON", "YES", "TRUE"}  # huggingface_hub's reading of boolean environment variables
_TRANSIENT_STATUS = (408, 429, 500, 502, 503, 504)


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


def resolve(model: str, *, revision: str | None = None, token: str | bool | None = None,
            offline: bool | None = None, use_catalogue: bool = True, with_tensors: bool = True,
            timeout: float | None = None) -> ModelSource:
    """Find `model` (a folder or a Hub repo id) without downloading weights. See the module docstring.

    `token` goes to huggingface_hub as is (None: HF_TOKEN or the saved login). `offline=None` reads
    HF_HUB_OFFLINE. `timeout` is seconds per Hub request (default: HF_HUB_ETAG_TIMEOUT, else 10).
    """
    if not isinstance(model, str) or not model.strip():
        raise InputError("no model given: pass a Hub repo id like 'org/name' or a local folder")
    try:
        path = Path(model).expanduser()
    except RuntimeError:  # `~name/...` naming no user of this machine
        raise ModelNotFoundError(f"no such folder: {_shown(model)} ('~' names no user here; check the path)") from None
    if path.is_dir():
        return _from_folder(model, path, with_tensors)
    if _looks_like_path(model):
        if path.exists():
            raise InputError(f"{_shown(model)} is a file, not a model folder: pass the folder that contains config.json")
        raise ModelNotFoundError(f"no such folder: {_shown(model)} (check the path; a Hub repo id looks like 'org/name')")

    default_revision = revision in (None, "main")
    if use_catalogue and default_revision:
        hit = catalogue_entry(model)
        if hit is not None:
            return hit
    _validate_repo_id(model)
    offline_reason = ref("offline", True) if offline else (_env_offline_variable() if offline is None else None)
    if offline_reason:
        cached = _from_hf_cache(model, revision, with_tensors)
        if cached is not None:
            return cached
        where = "fitplan's catalogue or " if use_catalogue and default_revision else ""
        near = _near_catalogue_id(model) if where else ""
        raise HubError(f"'{model}'{'' if default_revision else f' at revision {revision!r}'} is not in {where}the "
                       f"local Hugging Face cache and offline mode is on ({offline_reason}){near}: "
                       + (f"drop {ref('offline', True)}" if offline else f"unset {offline_reason.split('=')[0]}")
                       + " to fetch its config from the Hub, or pass a local folder")
    return _from_hub(model, revision, token, with_tensors, _timeout(timeout))


# -- local folders ----------------------------------------------------------------------------------

def _looks_like_path(model: str) -> bool:
    """`./x`, `../x`, `/x`, `~/x`, `.`, or anything with a backslash: never a Hub repo id, so never sent there."""
    return (model.startswith(("./", "../", "/", "~", ".\\", "..\\")) or model in (".", "..") or "\\" in model
            or os.path.isabs(model))


def _from_folder(model: str, folder: Path, with_tensors: bool) -> ModelSource:
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise InputError(f"{folder} has no config.json, so it is not a transformers model folder: pass the folder "
                         "that contains config.json, or a Hub repo id")
    config = _load_config(cfg_path.read_bytes(), str(cfg_path), InputError, "fix or re-download it")
    tensors, files = _folder_tensors(folder, cache=False) if with_tensors else (None, ())
    return ModelSource(model_id=model, origin="local", config=config, revision=None, tensors=tensors,
                       local_path=str(folder.resolve()), weight_files=files)


def _folder_tensors(folder: Path, *, cache: bool) -> tuple[tuple[TensorHeader, ...] | None, tuple[str, ...]]:
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
            raise InputError(f"{folder} lacks {missing[0]}" + (f" and {len(missing) - 1} more shard(s)" if
                             len(missing) > 1 else "") + f" listed in {INDEX_FILE}: finish the download")
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
        raise InputError(f"{where} is not valid JSON ({_reason(e)}): re-download it") from None
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) and v and "/" not in v and "\\" not in v
                                                   and v not in (".", "..") for v in weight_map.values()):
        raise InputError(f"{where} has no valid 'weight_map' (tensor name -> shard file name): re-download it")
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
            raise InputError(f"{bad}: it is only {len(head)} bytes long; re-download it")
        n = int.from_bytes(head, "little")
        if n > MAX_HEADER_BYTES:
            raise InputError(f"{bad}: its header claims {n:,} bytes, over the {MAX_HEADER_BYTES:,}-byte limit "
                             "safetensors itself enforces; the file is corrupt, re-download it")
        if 8 + n > size:
            raise InputError(f"{bad}: its header claims {n:,} bytes but the file has {size - 8:,} after the length; "
                             "it is truncated, re-download it")
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise InputError(f"{bad}: its header is not valid JSON ({_reason(e)}); re-download it") from None
    tensors = _tensor_headers(header, bad, InputError, "re-download it")
    end = max((t[1] for t in tensors), default=0)
    if 8 + n + end > size:
        raise InputError(f"{bad}: its tensors need {end:,} data bytes but the file has {size - 8 - n:,}; "
                         "it is truncated, re-download it")
    return tuple(t[0] for t in tensors)


def _tensor_headers(header: Any, bad: str, error: type[FitplanError], fix: str) -> list[tuple[TensorHeader, int]]:
    """Validate a decoded header; each tensor with the end of its data, for the truncation check."""
    if not isinstance(header, dict):
        raise error(f"{bad}: its header is JSON but not an object; {fix}")
    out = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        dtype = entry.get("dtype") if isinstance(entry, dict) else None
        shape = entry.get("shape") if isinstance(entry, dict) else None
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if not (isinstance(dtype, str) and isinstance(shape, list) and _all_nonneg_ints(shape)
                and isinstance(offsets, list) and len(offsets) == 2 and _all_nonneg_ints(offsets)
                and offsets[0] <= offsets[1]):
            raise error(f"{bad}: header entry {name!r} needs dtype, shape and data_offsets [start, end]; {fix}")
        out.append((TensorHeader(name, dtype, tuple(shape), offsets[1] - offsets[0]), offsets[1]))
    return out


def _all_nonneg_ints(xs: list) -> bool:
    return all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in xs)


def _load_config(raw: bytes, where: str, error: type[FitplanError], fix: str) -> dict:
    try:
        config = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise error(f"{where} is not valid JSON ({_reason(e)}): {fix}") from None
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


def _shown(text: str) -> str:
    """User text inside an error line: as typed, or escaped where it holds line breaks or control characters."""
    return text if text.isprintable() else repr(text)[1:-1]


def _reason(e: Exception) -> str:
    if isinstance(e, json.JSONDecodeError):
        return f"{e.msg} at line {e.lineno} column {e.colno}"
    return _one_line(str(e))


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


# -- the shipped catalogue --------------------------------------------------------------------------

@dataclass(frozen=True)
class CatalogueModel:
    """One entry of the shipped catalogue (`fitplan/data/model_catalogue.json`).

    `source` says where the config values came from; `parameters` is a published count and
    `parameters_source` where it was published (both None when no figure was found; the index may also say
    `parameters_rounded_to`, the unit a published figure like "117B" was rounded to); `fails`
    is the start of the refusal fitplan gives for this model today, set for architectures fitplan does
    not plan yet (tests/test_model_catalogue.py checks it is still true).
    """

    repo_id: str
    file: str
    source: str | None = None
    parameters: int | None = None
    parameters_source: str | None = None
    gated: bool | None = None
    fails: str | None = None
    parameters_rounded_to: int | None = None


def _catalogue_root(root):
    return resources.files("fitplan") / "data" if root is None else root


def _corrupt(why: str) -> FitplanError:
    return FitplanError(f"fitplan's shipped model catalogue is corrupt ({why}): reinstall fitplan, or pass "
                        "use_catalogue=False to ask the Hub")


def catalogue_models(root=None) -> tuple[CatalogueModel, ...]:
    """Every catalogue entry, validated, in the index's order. `root` is the folder holding
    model_catalogue.json and models/ (default: fitplan/data, read with importlib.resources). A catalogue
    not shipped yet counts as empty; a corrupt one is a packaging bug, reported as such."""
    index_file = _catalogue_root(root) / "model_catalogue.json"
    if not index_file.is_file():
        return ()
    try:
        index = json.loads(index_file.read_text(encoding="utf-8"))
    except ValueError as e:
        raise _corrupt(f"model_catalogue.json: {_reason(e)}") from None
    if not isinstance(index, dict):
        raise _corrupt("model_catalogue.json is not an object")
    return tuple(_catalogue_model(key, entry) for key, entry in index.items() if isinstance(key, str))


def _catalogue_model(key: str, entry) -> CatalogueModel:
    file = entry.get("file") if isinstance(entry, dict) else None
    if not (isinstance(file, str) and file.endswith(".json") and "/" not in file and "\\" not in file):
        raise _corrupt(f"entry {key!r} has no valid 'file'")
    params, gated = entry.get("parameters"), entry.get("gated")
    texts = [entry.get(k) for k in ("parameters_source", "source", "fails")]
    if not ((params is None or (isinstance(params, int) and not isinstance(params, bool) and params > 0))
            and all(t is None or isinstance(t, str) for t in texts) and (gated is None or isinstance(gated, bool))):
        raise _corrupt(f"entry {key!r} has a malformed parameters, parameters_source, source, fails or gated field")
    rounded = entry.get("parameters_rounded_to")
    if not (rounded is None or (type(rounded) is int and rounded > 0)):
        raise _corrupt(f"entry {key!r} has a malformed parameters_rounded_to field")
    return CatalogueModel(key, file, texts[1], params, texts[0], gated, texts[2], rounded)


def _near_catalogue_id(model: str) -> str:
    """` (did you mean 'org/name'?)` for a near miss of a catalogue id, else empty."""
    from ..vocab.kinds import did_you_mean

    return did_you_mean(model, [m.repo_id for m in catalogue_models()])


def catalogue_entry(repo_id: str, root=None) -> ModelSource | None:
    """The catalogue's config for `repo_id` (matched case-insensitively), or None."""
    wanted = repo_id.lower()
    hit = next((m for m in catalogue_models(root) if m.repo_id.lower() == wanted), None)
    if hit is None:
        return None
    cfg_file = _catalogue_root(root) / "models" / hit.file
    if not cfg_file.is_file():
        raise _corrupt(f"models/{hit.file} for {hit.repo_id!r} is missing")
    config = _load_config(cfg_file.read_bytes(), f"fitplan's catalogue file models/{hit.file}", FitplanError,
                          "reinstall fitplan")
    return ModelSource(model_id=repo_id, origin="catalogue", config=config, revision=None, tensors=None,
                       repo_id=hit.repo_id, parameters=hit.parameters, parameters_source=hit.parameters_source,
                       gated=hit.gated, parameters_exact=hit.parameters is not None and hit.parameters_rounded_to is None)


# -- the Hub and its local cache ----------------------------------------------------------------------

def _env_offline() -> bool:
    """huggingface_hub's own test, read now rather than at its import."""
    return _env_offline_variable() is not None


def _env_offline_variable() -> str | None:
    """`NAME=value` of the variable that turns offline mode on (HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE)."""
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        value = os.environ.get(name) or ""
        if value.upper() in _TRUE:
            return f"{name}={value}"
    return None


def _timeout(timeout: float | None) -> float:
    if timeout is not None:
        if not timeout > 0:
            raise InputError(f"timeout must be a positive number of seconds, not {timeout!r}")
        return float(timeout)
    env = os.environ.get("HF_HUB_ETAG_TIMEOUT")
    try:
        return float(env) if env and float(env) > 0 else DEFAULT_TIMEOUT_S
    except ValueError:
        raise InputError(f"HF_HUB_ETAG_TIMEOUT must be a number of seconds, not {env!r}") from None


def _validate_repo_id(model: str) -> None:
    """huggingface_hub's own rule, so we never reject what the Hub accepts or send what it would refuse."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(model)
    except HFValidationError:
        raise InputError(f"'{_shown(model)}' is neither an existing folder nor a valid Hub repo id ('org/name' or 'name': "
                         "letters, digits, '-', '_', '.', at most 96 characters): check the spelling or the path"
                         ) from None


def _from_hf_cache(repo_id: str, revision: str | None, with_tensors: bool) -> ModelSource | None:
    """config.json (and headers of fully downloaded safetensors files) from the local HF cache, no network."""
    from huggingface_hub import try_to_load_from_cache

    path = try_to_load_from_cache(repo_id, "config.json", revision=revision)
    if not isinstance(path, str):
        return None
    snapshot = Path(path).parent
    try:
        tensors, files = _folder_tensors(snapshot, cache=True) if with_tensors else (None, ())
    except InputError as e:  # a corrupt file in the cache
        raise HubError(f"{e} (in the Hugging Face cache: delete {snapshot} to fetch it again)") from None
    return _hub_source(repo_id, Path(path), tensors, files, from_cache=True)


def _hub_source(repo_id: str, cfg_path: Path, tensors: tuple[TensorHeader, ...] | None, files: tuple[str, ...],
                *, from_cache: bool) -> ModelSource:
    """A "hub" source around a config.json in the HF cache (`.../snapshots/<commit sha>/config.json`)."""
    snapshot = cfg_path.parent
    sha = snapshot.name
    config = _load_config(cfg_path.read_bytes(), f"config.json of '{repo_id}' at {sha[:12]}", HubError,
                          f"the repo's file is broken; pick another {ref('revision')}, or pass a local folder")
    return ModelSource(model_id=repo_id, origin="hub", config=config, revision=sha, tensors=tensors,
                       repo_id=repo_id, local_path=str(snapshot), weight_files=files, from_cache=from_cache)


class _GaveUp(Exception):
    """A transient Hub failure that outlived our retries (or asked for a wait longer than we allow)."""

    def __init__(self, error: BaseException, attempts: int, retry_after: float | None = None):
        super().__init__(str(error))
        self.error, self.attempts, self.retry_after = error, attempts, retry_after


def _from_hub(repo_id: str, revision: str | None, token, with_tensors: bool, timeout: float) -> ModelSource:
    import huggingface_hub
    from huggingface_hub import HfApi
    from huggingface_hub.errors import NotASafetensorsRepoError

    from ..versions import fitplan_version

    api = HfApi(library_name="fitplan", library_version=fitplan_version())
    if with_tensors and "timeout" not in inspect.signature(api.get_safetensors_metadata).parameters:
        # before 1.25 the header request has no timeout: a stalled server would hang fitplan for ever
        raise LibraryChangedError(library="huggingface_hub", version=huggingface_hub.__version__,
                                  what="get_safetensors_metadata takes no timeout (added in 1.25)")
    explain = _Explainer(repo_id, revision, token, api.endpoint, timeout)
    url = huggingface_hub.hf_hub_url(repo_id, "config.json", revision=revision, endpoint=api.endpoint)
    try:
        # A HEAD sent once per attempt: sorts out 404, gated and bad revisions, and rides out 429/5xx/
        # timeouts within our bounds, before hf_hub_download (whose own retry can take minutes) runs.
        try:
            meta = _retrying(lambda: api.get_hf_file_metadata(url=url, token=token, timeout=timeout))
        except _GaveUp as gave_up:
            cached = _from_hf_cache(repo_id, revision, with_tensors)
            if cached is not None:  # what huggingface_hub itself does when the Hub cannot be reached
                return cached
            raise explain.transient(gave_up) from None
        if not meta.commit_hash:
            raise HubError(f"{api.endpoint} does not answer like the Hugging Face Hub (no X-Repo-Commit header): "
                           "check HF_ENDPOINT")
        # With the caller's revision, not the sha, so the cache records refs/<revision> for offline use;
        # the returned path (.../snapshots/<sha>/config.json) names the commit the file came from.
        cfg_path = Path(api.hf_hub_download(repo_id, "config.json", revision=revision, token=token,
                                            etag_timeout=timeout))
        sha = cfg_path.parent.name
        tensors, files = None, ()
        if with_tensors:
            try:
                st = _retrying(lambda: api.get_safetensors_metadata(repo_id, revision=sha, token=token,
                                                                    timeout=timeout))
            except NotASafetensorsRepoError:
                pass  # e.g. only pytorch_model.bin: the estimate works from config.json alone
            except _GaveUp as gave_up:
                raise explain.transient(gave_up) from None
            except (AttributeError, TypeError, KeyError) as e:  # huggingface_hub choking on a non-object header
                raise HubError(f"a safetensors header in '{repo_id}' at {sha[:12]} is not a valid header "
                               f"({type(e).__name__}: {_one_line(e)[:120]}): the checkpoint looks corrupt; pick "
                               f"another {ref('revision')} or tell the repo owner") from None
            else:
                tensors, files = _hub_tensors(st, repo_id, sha)
    except FitplanError:
        raise
    except Exception as e:  # noqa: BLE001 - every other huggingface_hub/httpx failure gets one clear line
        raise explain.error(e) from None
    return _hub_source(repo_id, cfg_path, tensors, files, from_cache=False)


def _hub_tensors(meta, repo_id: str, sha: str) -> tuple[tuple[TensorHeader, ...], tuple[str, ...]]:
    """Flatten huggingface_hub's `SafetensorsRepoMetadata`, shards in name order, tensors in header order."""
    files = tuple(sorted(meta.files_metadata))
    tensors: list[TensorHeader] = []
    for name in files:
        header = {k: {"dtype": t.dtype, "shape": t.shape, "data_offsets": list(t.data_offsets)}
                  for k, t in meta.files_metadata[name].tensors.items()}
        found = _tensor_headers(header, f"{name} of '{repo_id}' at {sha[:12]} is not a valid safetensors file",
                                HubError, f"pick another {ref('revision')} or tell the repo owner")
        tensors.extend(t for t, _ in found)
    return tuple(tensors), files


def _retrying(call: Callable[[], Any]) -> Any:
    """`call()`, retried on 429/5xx/timeouts/connection errors: at most ATTEMPTS tries, exponential
    backoff from BACKOFF_S, Retry-After honoured up to MAX_RETRY_AFTER_S. Use only around calls
    that huggingface_hub does not retry itself, so retries never multiply."""
    for attempt in range(1, ATTEMPTS + 1):
        try:
            return call()
        except Exception as e:  # noqa: BLE001 - sorted below, re-raised when not transient
            kind = _transient_kind(e)
            if kind is None:
                raise
            retry_after = _retry_after(e)
            if attempt == ATTEMPTS or (retry_after is not None and retry_after > MAX_RETRY_AFTER_S):
                raise _GaveUp(e, attempt, retry_after) from None
            if retry_after is not None:
                time.sleep(retry_after)
            elif kind != "timeout":
                time.sleep(BACKOFF_S * 2 ** (attempt - 1))
    raise AssertionError("unreachable")


#: The HTTP client huggingface_hub sends with: httpx up to 1.x, its fork httpx2 from 2.0. Both keep
#: httpx's exception classes under the same names.
_HTTP_CLIENTS = ("httpx", "httpx2")


def _http_errors(*names: str) -> tuple[type[BaseException], ...]:
    """Those exception classes of each HTTP client already imported: an exception raised by a client
    implies its module is loaded, and neither is imported (or required) here on its own."""
    return tuple(getattr(mod, name) for client in _HTTP_CLIENTS if (mod := sys.modules.get(client)) is not None
                 for name in names if hasattr(mod, name))


def _transient_kind(e: BaseException) -> str | None:
    from huggingface_hub.errors import HfHubHTTPError

    if isinstance(e, _http_errors("TimeoutException")):
        return "timeout"
    if isinstance(e, _http_errors("NetworkError", "RemoteProtocolError")):
        return "network"
    if isinstance(e, HfHubHTTPError) and e.response is not None and e.response.status_code in _TRANSIENT_STATUS:
        return "status"
    return None


def _retry_after(e: BaseException) -> float | None:
    response = getattr(e, "response", None)
    value = response.headers.get("Retry-After") if response is not None else None
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None  # an HTTP date: fall back to our backoff


@dataclass(frozen=True)
class _Explainer:
    """Turns huggingface_hub/httpx exceptions into one-line fitplan errors that say what to do."""

    repo_id: str
    revision: str | None
    token: Any
    endpoint: str
    timeout: float

    @property
    def _tokened(self) -> bool:
        """Whether the request carried a token: the one passed, else HF_TOKEN or the saved login."""
        if self.token is False:
            return False
        if isinstance(self.token, str):
            return bool(self.token)
        from huggingface_hub import get_token

        return get_token() is not None

    def transient(self, g: _GaveUp) -> FitplanError:
        e, n = g.error, g.attempts
        tries = f"after {n} attempt{'s' if n > 1 else ''}"
        kind = _transient_kind(e)
        if kind == "timeout":
            return HubError(f"the Hub ({self.endpoint}) did not answer within {self.timeout:g} s for '{self.repo_id}' "
                            f"({tries}): check your connection, or allow more time with HF_HUB_ETAG_TIMEOUT=<seconds>")
        if kind == "network":
            return HubError(f"cannot reach the Hub at {self.endpoint} ({_one_line(e) or type(e).__name__}, {tries}): "
                            f"check your connection and HF_ENDPOINT, or use {ref('offline', True)} with a cached model or a "
                            "local folder")
        status = e.response.status_code
        if status == 429:
            if g.retry_after is not None and g.retry_after > MAX_RETRY_AFTER_S:
                wait = f"it asks to wait {g.retry_after:g} s"
            else:
                wait = tries
            return HubError(f"the Hub is rate-limiting requests for '{self.repo_id}' (429, {wait}): retry in a few "
                            f"minutes, or pass a token (HF_TOKEN or {ref('token')}): logged-in users get higher limits")
        return HubError(f"the Hub answered {status} for '{self.repo_id}' ({tries}): it may be down "
                        f"(https://status.huggingface.co); retry later, or use {ref('offline', True)} with a cached model or a "
                        "local folder")

    def _data(self, e: BaseException, cls: type[FitplanError], message: str) -> FitplanError:
        """The error with what a caller can act on: the repo, the revision and the HTTP status."""
        return cls(message, repo_id=self.repo_id, revision=self.revision, status=_status(e))

    def error(self, e: BaseException) -> FitplanError:
        from huggingface_hub import errors as hf

        repo, page = self.repo_id, f"{self.endpoint}/{self.repo_id}"
        if isinstance(e, hf.GatedRepoError):
            if self._tokened:
                return self._data(e, GatedModelError, f"'{repo}' is gated and your token has no access to it yet: accept its terms "
                                       f"at {page} with the account of that token (approval can take a while), or "
                                       f"set HF_TOKEN / {ref('token')} to a token of an account that has access")
            return self._data(e, GatedModelError, f"'{repo}' is gated: accept its terms at {page} while logged in, then set HF_TOKEN "
                                   f"or pass {ref('token')} with a token of that account")
        if isinstance(e, hf.RevisionNotFoundError):
            return self._data(e, ModelNotFoundError, f"revision '{self.revision or 'main'}' does not exist in '{repo}': pass an "
                                      f"existing branch, tag or commit sha to {ref('revision')}")
        if isinstance(e, hf.DisabledRepoError):
            return self._data(e, ModelNotFoundError, f"'{repo}' has been disabled on the Hub: pick another model")
        if isinstance(e, hf.RepositoryNotFoundError) or (
                _status(e) == 404 and not isinstance(e, hf.RemoteEntryNotFoundError)):
            fix = ("check the spelling, and that your token can read it if it is private" if self._tokened else
                   f"check the spelling, or pass a token (HF_TOKEN or {ref('token')}) if it is private")
            return self._data(e, ModelNotFoundError, f"no model '{repo}' on the Hub ({self.endpoint}) nor a local folder of that "
                                      f"name: {fix}")
        if isinstance(e, hf.RemoteEntryNotFoundError):
            return self._data(e, UnsupportedModelError, f"'{repo}' has no config.json at revision '{self.revision or 'main'}', so "
                                         "it is not a transformers model (GGUF-only, diffusers and adapter repos are "
                                         "not supported): pass the base model's repo id, or a local folder")
        if _status(e) in (401, 403):
            return self._data(e, GatedModelError, f"the Hub refused access to '{repo}' ({_status(e)}): if it is gated or private, "
                                   f"accept its terms at {page} and set HF_TOKEN or pass {ref('token')} with a token "
                                   "that can read it")
        if isinstance(e, hf.OfflineModeIsEnabled):
            return self._data(e, HubError, "huggingface_hub is in offline mode (HF_HUB_OFFLINE was set when it was imported): "
                            f"unset HF_HUB_OFFLINE, or use {ref('offline', True)} with a cached model or a local folder")
        if isinstance(e, hf.SafetensorsParsingError):
            return self._data(e, HubError, f"a safetensors header in '{repo}' is invalid ({_one_line(e)}): the checkpoint looks "
                            f"corrupt; pick another {ref('revision')} or tell the repo owner")
        if isinstance(e, hf.FileMetadataError):
            return self._data(e, HubError, f"{self.endpoint} did not answer like the Hugging Face Hub ({_one_line(e)[:200]}): "
                            "check HF_ENDPOINT and your proxy settings")
        if isinstance(e, hf.LocalEntryNotFoundError):
            return self._data(e, HubError, f"could not fetch config.json of '{repo}' from the Hub and it is not in the local cache "
                            "(connection or Hub problem): retry later, or pass a local folder")
        if _transient_kind(e) is not None:
            return self.transient(_GaveUp(e, 1))
        if isinstance(e, hf.HfHubHTTPError):
            return self._data(e, HubError, f"the Hub refused the request for '{repo}' ({_status(e)}: "
                            f"{_one_line(e.server_message or e)[:200]})")
        if isinstance(e, OSError):
            return self._data(e, HubError, f"fetching '{repo}' from the Hub failed ({type(e).__name__}: {_one_line(e)[:200]}): "
                            "retry; if it persists, check your disk space and HF_HOME")
        return self._data(e, HubError, f"fetching '{repo}' from the Hub failed unexpectedly ({type(e).__name__}: "
                        f"{_one_line(e)[:200]}): retry, or pass a local folder")


def _status(e: BaseException) -> int | None:
    response = getattr(e, "response", None)
    return getattr(response, "status_code", None)
