"""Where a model's config.json and safetensors tensor headers come from, never its weights.

`resolve()` looks in this order and stops at the first hit:

1. an existing local folder (`local.py`: config.json plus the headers of its safetensors files);
2. fitplan's shipped catalogue (`catalogue.py`, `fitplan/data/model_catalogue.json`): a config, no
   headers; skipped when a non-default revision is asked;
3. the Hugging Face Hub (`hub.py`, through huggingface_hub): config.json into the normal HF cache,
   tensor headers by HTTP Range requests, weights never. Offline (`offline=True` or
   `HF_HUB_OFFLINE=1`) the local HF cache replaces the Hub.

Each source returns the same `ModelSource` (`base.py`, with the readers the sources share). No torch
or transformers here, and huggingface_hub is imported only when the Hub or its cache is needed.
"""
from __future__ import annotations

from pathlib import Path

from ...errors import ref, FileError, HubError, ModelNotFoundError, OptionError
from .base import ModelSource, TensorHeader, decode_special_floats, shown
from .catalogue import CatalogueModel, catalogue_entry, catalogue_models, near_catalogue_id
from .hub import HubClient, from_hf_cache, from_hub, offline_variable, timeout_seconds, validate_repo_id
from .local import from_folder, looks_like_path, read_safetensors_header

__all__ = ["ModelSource", "TensorHeader", "CatalogueModel", "HubClient", "resolve", "catalogue_entry",
           "catalogue_models", "read_safetensors_header", "decode_special_floats"]


def resolve(model: str, *, revision: str | None = None, token: str | bool | None = None,
            offline: bool | None = None, use_catalogue: bool = True, with_tensors: bool = True,
            timeout: float | None = None) -> ModelSource:
    """Find `model` (a folder or a Hub repo id) without downloading weights. See the module docstring.

    `token` goes to huggingface_hub as is (None: HF_TOKEN or the saved login). `offline=None` reads
    HF_HUB_OFFLINE. `timeout` is seconds per Hub request (default: HF_HUB_ETAG_TIMEOUT, else 10).
    """
    if not isinstance(model, str) or not model.strip():
        raise OptionError("no model given: pass a Hub repo id like 'org/name' or a local folder", option="model")
    try:
        path = Path(model).expanduser()
    except RuntimeError:  # `~name/...` naming no user of this machine
        raise ModelNotFoundError(f"no such folder: {shown(model)} ('~' names no user here; check the path)",
                                 repo_id=None,
                                 path=model) from None
    if path.is_dir():
        return from_folder(model, path, with_tensors)
    if looks_like_path(model):
        if path.exists():
            raise FileError(f"{shown(model)} is a file, not a model folder: pass the folder that contains config.json",
                            path=model)
        raise ModelNotFoundError(f"no such folder: {shown(model)} (check the path; a Hub repo id looks like 'org/name')",
                                 repo_id=None, path=model)

    default_revision = revision in (None, "main")
    if use_catalogue and default_revision:
        hit = catalogue_entry(model)
        if hit is not None:
            return hit
    validate_repo_id(model)
    offline_reason = ref("offline", True) if offline else (offline_variable() if offline is None else None)
    if offline_reason:
        cached = from_hf_cache(model, revision, with_tensors)
        if cached is not None:
            return cached
        where = "fitplan's catalogue or " if use_catalogue and default_revision else ""
        near = near_catalogue_id(model) if where else ""
        raise HubError(f"'{model}'{'' if default_revision else f' at revision {revision!r}'} is not in {where}the "
                       f"local Hugging Face cache and offline mode is on ({offline_reason}){near}: "
                       + (f"drop {ref('offline', True)}" if offline else f"unset {offline_reason.split('=')[0]}")
                       + " to fetch its config from the Hub, or pass a local folder", repo_id=model, status=None)
    return from_hub(model, revision, token, with_tensors, timeout_seconds(timeout))

