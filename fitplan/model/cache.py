"""The on-disk inventory cache: one JSON file per (config, library versions, model, stored bytes).

A cached inventory is read without importing torch or transformers, so a repeated `fitplan check`
stays fast. The key holds the library versions, so an upgrade rebuilds rather than misreads.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable

from ..versions import lib_versions
from .inventory import Inventory


def _cache_dir() -> Path:
    base = os.environ.get("FITPLAN_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "fitplan")
    return Path(base) / "inventory"


def inventory_cache_key(config: dict, model_id: str, stored_bytes: int | None,
                        stored_parameters: int | None = None, auto_class: str | None = None) -> str:
    from .hf import kernel_presence

    blob = json.dumps({"config": config, "versions": lib_versions(), "kernels": kernel_presence(),
                       "id": model_id, "stored": stored_bytes,
                       "stored_parameters": stored_parameters, "auto_class": auto_class}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def get_inventory(config: dict, *, model_id: str, stored_bytes: int | None = None,
                  stored_parameters: int | None = None, auto_class: str | None = None, use_cache: bool = True,
                  on_build: Callable[[str], None] | None = None) -> Inventory:
    """The inventory, from the on-disk cache when this config and these library versions were seen.

    The cached path imports neither torch nor transformers: a repeated `fitplan check` stays fast.
    `on_build(model_id)` is called before a (slow, seconds) meta-device build, e.g. to show progress.
    """
    path = _cache_dir() / f"{inventory_cache_key(config, model_id, stored_bytes, stored_parameters, auto_class)}.json"
    if use_cache:
        try:
            return Inventory.from_dict(json.loads(path.read_text()))
        except (OSError, ValueError, TypeError, KeyError):
            pass  # missing, stale or corrupt: rebuild
    from .build import build_inventory

    if on_build is not None:
        on_build(model_id)
    inv = build_inventory(config, model_id=model_id, stored_bytes=stored_bytes, stored_parameters=stored_parameters,
                          auto_class=auto_class)
    if use_cache:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(inv.to_dict()))
            os.replace(tmp, path)
        except OSError:
            pass  # a read-only cache only costs speed
    return inv


