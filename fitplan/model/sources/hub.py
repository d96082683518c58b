"""The Hugging Face Hub and its local cache as a model source, and fitplan's one Hub client.

config.json is downloaded into the normal HF cache; tensor headers come from HTTP Range requests
(`get_safetensors_metadata`); weights never move. Offline (`offline=True` or `HF_HUB_OFFLINE=1`) the
local HF cache replaces the Hub.

`HubClient` is what every Hub request of fitplan goes through (this module and `fitplan.gguf.hub`):
huggingface_hub's `HfApi` named as fitplan, one timeout per request, bounded retries, and one-line
`fitplan.errors` with what to do for every failure. Retries are ours and bounded: huggingface_hub
retries only some calls, some with a 60 s timeout and sleeps the server may set, so each request
`HubClient.call` retries is one huggingface_hub sends once (see docs/sources.md).

huggingface_hub is imported only when the Hub or its cache is needed: the cached CLI path must stay fast.
"""
from __future__ import annotations

import inspect
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, TypeVar

from ...errors import (ref, FileError, FitplanError, GatedModelError, HubError, LibraryChangedError, ModelNotFoundError,
                       OptionError, UnsupportedModelError)
from .base import ModelSource, TensorHeader, load_config, one_line, shown, tensor_headers
from .local import folder_tensors

#: Attempts per Hub request we retry (429, 5xx, timeouts, connection errors), first one included.
ATTEMPTS = 3
#: Sleep before the 2nd attempt, doubled before each next one (not after timeouts: they waited already).
BACKOFF_S = 0.5
#: A 429's Retry-After longer than this is not waited for: the error says how long to wait instead.
MAX_RETRY_AFTER_S = 10.0
#: Seconds per Hub request when neither `timeout=` nor HF_HUB_ETAG_TIMEOUT says otherwise.
DEFAULT_TIMEOUT_S = 10.0

_TRUE = {"1", "ON", "YES", "TRUE"}  # huggingface_hub's reading of boolean environment variables
_TRANSIENT_STATUS = (408, 429, 500, 502, 503, 504)

T = TypeVar("T")


@dataclass(frozen=True)
class HubClient:
    """Requests about one Hub repo: `api` (huggingface_hub's `HfApi`, named as fitplan), `timeout`
    (seconds per request), `call()` (bounded retries, every failure one line), `explainer` (the
    wording of failures caught elsewhere), `file_url()` and `headers()` for raw ranged reads."""

    repo_id: str
    revision: str | None
    token: Any
    timeout: float
    api: Any

    @classmethod
    def open(cls, repo_id: str, *, revision: str | None = None, token: Any = None,
             timeout: float | None = None) -> "HubClient":
        """A client for `repo_id`. `timeout` None: HF_HUB_ETAG_TIMEOUT, else DEFAULT_TIMEOUT_S."""
        from huggingface_hub import HfApi

        from ...versions import fitplan_version

        seconds = timeout_seconds(timeout)
        return cls(repo_id, revision, token, seconds, HfApi(library_name="fitplan", library_version=fitplan_version()))

    @property
    def endpoint(self) -> str:
        return self.api.endpoint

    @property
    def explainer(self) -> "_Explainer":
        return _Explainer(self.repo_id, self.revision, self.token, self.endpoint, self.timeout)

    def call(self, request: Callable[[], T]) -> T:
        """`request()`, retried on 429/5xx/timeouts/connection errors (at most ATTEMPTS tries); any
        failure becomes a one-line `FitplanError`. Use only around requests huggingface_hub sends once."""
        try:
            return _retrying(request)
        except _GaveUp as gave_up:
            raise self.explainer.transient(gave_up) from None
        except FitplanError:
            raise
        except Exception as e:  # noqa: BLE001 - huggingface_hub/httpx failures become one line
            raise self.explainer.error(e) from None

    def file_url(self, filename: str) -> str:
        """The resolve URL of `filename` at this client's revision, on its endpoint."""
        import huggingface_hub

        return huggingface_hub.hf_hub_url(self.repo_id, filename, revision=self.revision, endpoint=self.endpoint)

    def headers(self) -> dict[str, str]:
        """The headers huggingface_hub sends (token, user agent naming fitplan)."""
        from huggingface_hub.utils import build_hf_headers

        from ...versions import fitplan_version

        return build_hf_headers(token=self.token, library_name="fitplan", library_version=fitplan_version())


def offline_variable() -> str | None:
    """`NAME=value` of the variable that turns offline mode on (HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE)."""
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        value = os.environ.get(name) or ""
        if value.upper() in _TRUE:
            return f"{name}={value}"
    return None


def timeout_seconds(timeout: float | None) -> float:
    if timeout is not None:
        if not timeout > 0:
            raise OptionError(f"timeout must be a positive number of seconds, not {timeout!r}", option="timeout")
        return float(timeout)
    env = os.environ.get("HF_HUB_ETAG_TIMEOUT")
    try:
        return float(env) if env and float(env) > 0 else DEFAULT_TIMEOUT_S
    except ValueError:
        raise OptionError(f"HF_HUB_ETAG_TIMEOUT must be a number of seconds, not {env!r}", option="timeout") from None


def validate_repo_id(model: str) -> None:
    """huggingface_hub's own rule, so we never reject what the Hub accepts or send what it would refuse."""
    from huggingface_hub.utils import HFValidationError
    from huggingface_hub.utils import validate_repo_id as hub_rule

    try:
        hub_rule(model)
    except HFValidationError:
        raise OptionError(f"'{shown(model)}' is neither an existing folder nor a valid Hub repo id ('org/name' or "
                          "'name': letters, digits, '-', '_', '.', at most 96 characters): check the spelling or the path",
                          option="model") from None


def from_hf_cache(repo_id: str, revision: str | None, with_tensors: bool) -> ModelSource | None:
    """config.json (and headers of fully downloaded safetensors files) from the local HF cache, no network."""
    from huggingface_hub import try_to_load_from_cache

    path = try_to_load_from_cache(repo_id, "config.json", revision=revision)
    if not isinstance(path, str):
        return None
    snapshot = Path(path).parent
    try:
        tensors, files = folder_tensors(snapshot, cache=True) if with_tensors else (None, ())
    except FileError as e:  # a corrupt file in the cache
        raise HubError(f"{e} (in the Hugging Face cache: delete {snapshot} to fetch it again)", repo_id=repo_id,
                       status=None) from None
    return _hub_source(repo_id, Path(path), tensors, files, from_cache=True)


def _hub_source(repo_id: str, cfg_path: Path, tensors: tuple[TensorHeader, ...] | None, files: tuple[str, ...],
                *, from_cache: bool) -> ModelSource:
    """A "hub" source around a config.json in the HF cache (`.../snapshots/<commit sha>/config.json`)."""
    snapshot = cfg_path.parent
    sha = snapshot.name
    config = load_config(cfg_path.read_bytes(), f"config.json of '{repo_id}' at {sha[:12]}",
                         lambda m: HubError(m, repo_id=repo_id, status=None),
                         f"the repo's file is broken; pick another {ref('revision')}, or pass a local folder")
    return ModelSource(model_id=repo_id, origin="hub", config=config, revision=sha, tensors=tensors,
                       repo_id=repo_id, local_path=str(snapshot), weight_files=files, from_cache=from_cache)


class _GaveUp(Exception):
    """A transient Hub failure that outlived our retries (or asked for a wait longer than we allow)."""

    def __init__(self, error: BaseException, attempts: int, retry_after: float | None = None):
        super().__init__(str(error))
        self.error, self.attempts, self.retry_after = error, attempts, retry_after


def from_hub(repo_id: str, revision: str | None, token, with_tensors: bool, timeout: float) -> ModelSource:
    import huggingface_hub
    from huggingface_hub.errors import NotASafetensorsRepoError

    client = HubClient.open(repo_id, revision=revision, token=token, timeout=timeout)
    api = client.api
    if with_tensors and "timeout" not in inspect.signature(api.get_safetensors_metadata).parameters:
        # before 1.25 the header request has no timeout: a stalled server would hang fitplan for ever
        raise LibraryChangedError(library="huggingface_hub", version=huggingface_hub.__version__,
                                  what="get_safetensors_metadata takes no timeout (added in 1.25)")
    explain = client.explainer
    url = client.file_url("config.json")
    try:
        # A HEAD sent once per attempt: sorts out 404, gated and bad revisions, and rides out 429/5xx/
        # timeouts within our bounds, before hf_hub_download (whose own retry can take minutes) runs.
        try:
            meta = _retrying(lambda: api.get_hf_file_metadata(url=url, token=token, timeout=timeout))
        except _GaveUp as gave_up:
            cached = from_hf_cache(repo_id, revision, with_tensors)
            if cached is not None:  # what huggingface_hub itself does when the Hub cannot be reached
                return cached
            raise explain.transient(gave_up) from None
        if not meta.commit_hash:
            raise HubError(f"{api.endpoint} does not answer like the Hugging Face Hub (no X-Repo-Commit header): "
                           "check HF_ENDPOINT", repo_id=repo_id, status=None, url=url)
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
                               f"({type(e).__name__}: {one_line(e)[:120]}): the checkpoint looks corrupt; pick "
                               f"another {ref('revision')} or tell the repo owner",
                               repo_id=repo_id, status=None) from None
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
        found = tensor_headers(header, f"{name} of '{repo_id}' at {sha[:12]} is not a valid safetensors file",
                               lambda m: HubError(m, repo_id=repo_id, status=None),
                               f"pick another {ref('revision')} or tell the repo owner")
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
                            f"({tries}): check your connection, or allow more time with HF_HUB_ETAG_TIMEOUT=<seconds>",
                            repo_id=self.repo_id, revision=self.revision, status=None, url=self.endpoint)
        if kind == "network":
            return HubError(f"cannot reach the Hub at {self.endpoint} ({one_line(e) or type(e).__name__}, {tries}): "
                            f"check your connection and HF_ENDPOINT, or use {ref('offline', True)} with a cached model or a "
                            "local folder",
                            repo_id=self.repo_id, revision=self.revision, status=None, url=self.endpoint)
        status = e.response.status_code
        if status == 429:
            if g.retry_after is not None and g.retry_after > MAX_RETRY_AFTER_S:
                wait = f"it asks to wait {g.retry_after:g} s"
            else:
                wait = tries
            return HubError(f"the Hub is rate-limiting requests for '{self.repo_id}' (429, {wait}): retry in a few "
                            f"minutes, or pass a token (HF_TOKEN or {ref('token')}): logged-in users get higher limits",
                            repo_id=self.repo_id, revision=self.revision, status=429, url=self.endpoint, retry_after=g.retry_after)
        return HubError(f"the Hub answered {status} for '{self.repo_id}' ({tries}): it may be down "
                        f"(https://status.huggingface.co); retry later, or use {ref('offline', True)} with a cached model or a "
                        "local folder",
                        repo_id=self.repo_id, revision=self.revision, status=status, url=self.endpoint, retry_after=g.retry_after)

    def error(self, e: BaseException) -> FitplanError:
        from huggingface_hub import errors as hf

        repo, page = self.repo_id, f"{self.endpoint}/{self.repo_id}"
        if isinstance(e, hf.GatedRepoError):
            if self._tokened:
                return GatedModelError(f"'{repo}' is gated and your token has no access to it yet: accept its terms "
                                       f"at {page} with the account of that token (approval can take a while), or "
                                       f"set HF_TOKEN / {ref('token')} to a token of an account that has access",
                                       repo_id=repo, revision=self.revision, status=_status(e))
            return GatedModelError(f"'{repo}' is gated: accept its terms at {page} while logged in, then set HF_TOKEN "
                                   f"or pass {ref('token')} with a token of that account",
                                   repo_id=repo, revision=self.revision, status=_status(e))
        if isinstance(e, hf.RevisionNotFoundError):
            return ModelNotFoundError(f"revision '{self.revision or 'main'}' does not exist in '{repo}': pass an "
                                      f"existing branch, tag or commit sha to {ref('revision')}",
                                      repo_id=repo, revision=self.revision, path=None, status=_status(e))
        if isinstance(e, hf.DisabledRepoError):
            return ModelNotFoundError(f"'{repo}' has been disabled on the Hub: pick another model",
                                      repo_id=repo, revision=self.revision, path=None, status=_status(e))
        if isinstance(e, hf.RepositoryNotFoundError) or (
                _status(e) == 404 and not isinstance(e, hf.RemoteEntryNotFoundError)):
            fix = ("check the spelling, and that your token can read it if it is private" if self._tokened else
                   f"check the spelling, or pass a token (HF_TOKEN or {ref('token')}) if it is private")
            return ModelNotFoundError(f"no model '{repo}' on the Hub ({self.endpoint}) nor a local folder of that "
                                      f"name: {fix}",
                                      repo_id=repo, revision=self.revision, path=None, status=_status(e))
        if isinstance(e, hf.RemoteEntryNotFoundError):
            return UnsupportedModelError(f"'{repo}' has no config.json at revision '{self.revision or 'main'}', so "
                                         "it is not a transformers model (GGUF-only, diffusers and adapter repos are "
                                         "not supported): pass the base model's repo id, or a local folder",
                                         model_type=None)
        if _status(e) in (401, 403):
            return GatedModelError(f"the Hub refused access to '{repo}' ({_status(e)}): if it is gated or private, "
                                   f"accept its terms at {page} and set HF_TOKEN or pass {ref('token')} with a token "
                                   "that can read it", repo_id=repo, revision=self.revision, status=_status(e))
        if isinstance(e, hf.OfflineModeIsEnabled):
            return HubError("huggingface_hub is in offline mode (HF_HUB_OFFLINE was set when it was imported): "
                            f"unset HF_HUB_OFFLINE, or use {ref('offline', True)} with a cached model or a local folder",
                            repo_id=repo, revision=self.revision, status=None)
        if isinstance(e, hf.SafetensorsParsingError):
            return HubError(f"a safetensors header in '{repo}' is invalid ({one_line(e)}): the checkpoint looks "
                            f"corrupt; pick another {ref('revision')} or tell the repo owner",
                            repo_id=repo, revision=self.revision, status=_status(e))
        if isinstance(e, hf.FileMetadataError):
            return HubError(f"{self.endpoint} did not answer like the Hugging Face Hub ({one_line(e)[:200]}): "
                            "check HF_ENDPOINT and your proxy settings",
                            repo_id=repo, revision=self.revision, status=_status(e), url=self.endpoint)
        if isinstance(e, hf.LocalEntryNotFoundError):
            return HubError(f"could not fetch config.json of '{repo}' from the Hub and it is not in the local cache "
                            "(connection or Hub problem): retry later, or pass a local folder",
                            repo_id=repo, revision=self.revision, status=_status(e))
        if _transient_kind(e) is not None:
            return self.transient(_GaveUp(e, 1))
        if isinstance(e, hf.HfHubHTTPError):
            return HubError(f"the Hub refused the request for '{repo}' ({_status(e)}: "
                            f"{one_line(e.server_message or e)[:200]})",
                            repo_id=repo, revision=self.revision, status=_status(e))
        if isinstance(e, OSError):
            return HubError(f"fetching '{repo}' from the Hub failed ({type(e).__name__}: {one_line(e)[:200]}): "
                            "retry; if it persists, check your disk space and HF_HOME",
                            repo_id=repo, revision=self.revision, status=_status(e))
        return HubError(f"fetching '{repo}' from the Hub failed unexpectedly ({type(e).__name__}: "
                        f"{one_line(e)[:200]}): retry, or pass a local folder",
                        repo_id=repo, revision=self.revision, status=_status(e))


def _status(e: BaseException) -> int | None:
    response = getattr(e, "response", None)
    return getattr(response, "status_code", None)
