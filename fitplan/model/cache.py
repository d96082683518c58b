"""The on-disk inventory cache: one JSON file per (config, library versions, model, stored bytes).

A cached inventory is read without importing torch or transformers, so a repeated `fitplan check`
stays fast. The key holds the library versions, so an upgrade rebuilds rather than misreads.

An entry is verified, never trusted (`entrycheck.py`): it must be a regular file under
MAX_ENTRY_BYTES, carry the digest of the inputs it was built from (so an entry copied under another
key is refused) and the digest of its own inventory text (so an edited or damaged entry is refused),
and every value in it must have its field's type and a sane range. Anything else is rebuilt, with a
note saying so; the answer is the rebuilt one, never the entry's.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Callable

from ..versions import lib_versions
from .inventory import Inventory

#: The layout of an entry file (the envelope below); part of the key, so older entries are never read.
ENTRY_FORMAT = "fitplan-inventory-entry/2"
#: An inventory is tens of KB (a 256-layer MoE a few MB); an entry past this is not one.
MAX_ENTRY_BYTES = 32 << 20


def _cache_dir() -> Path:
    base = os.environ.get("FITPLAN_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "fitplan")
    return Path(base) / "inventory"


def _inputs(config: dict, model_id: str, stored_bytes: int | None, stored_parameters: int | None,
            auto_class: str | None) -> str:
    """The SHA-256 of everything an inventory is built from."""
    from .hf import kernel_presence

    blob = json.dumps({"config": config, "versions": lib_versions(), "kernels": kernel_presence(),
                       "id": model_id, "stored": stored_bytes, "stored_parameters": stored_parameters,
                       "auto_class": auto_class, "entry_format": ENTRY_FORMAT}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def inventory_cache_key(config: dict, model_id: str, stored_bytes: int | None,
                        stored_parameters: int | None = None, auto_class: str | None = None) -> str:
    return _inputs(config, model_id, stored_bytes, stored_parameters, auto_class)[:32]


def get_inventory(config: dict, *, model_id: str, stored_bytes: int | None = None,
                  stored_parameters: int | None = None, auto_class: str | None = None, use_cache: bool = True,
                  on_build: Callable[[str], None] | None = None) -> Inventory:
    """The inventory, from the on-disk cache when this config and these library versions were seen.

    The cached path imports neither torch nor transformers: a repeated `fitplan check` stays fast.
    `on_build(model_id)` is called before a (slow, seconds) meta-device build, e.g. to show progress.
    A damaged, edited or foreign entry is rebuilt, and the inventory carries a note saying so.
    """
    from .entrycheck import BadEntry, read_entry

    inputs = _inputs(config, model_id, stored_bytes, stored_parameters, auto_class)
    path = _cache_dir() / f"{inputs[:32]}.json"
    note = None
    if use_cache:
        try:
            return read_entry(path, inputs, limit=MAX_ENTRY_BYTES, entry_format=ENTRY_FORMAT)
        except FileNotFoundError:
            pass  # not cached yet
        except BadEntry as bad:
            note = f"inventory cache entry {path} {bad}; rebuilt it (the answer never comes from a bad entry)"
        except OSError as err:
            note = f"inventory cache entry {path} cannot be read ({err.strerror or err}); rebuilt it"
    from .build import build_inventory

    if on_build is not None:
        on_build(model_id)
    inv = build_inventory(config, model_id=model_id, stored_bytes=stored_bytes, stored_parameters=stored_parameters,
                          auto_class=auto_class)
    if use_cache:
        from .entrycheck import write_entry

        write_entry(path, inputs, inv, ENTRY_FORMAT)
    return replace(inv, notes=inv.notes + (note,)) if note else inv
