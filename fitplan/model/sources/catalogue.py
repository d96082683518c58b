"""fitplan's shipped catalogue of model configs (`fitplan/data/model_catalogue.json` and
`fitplan/data/models/`): a config without the Hub, no tensor headers.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources

from ...errors import FileError
from .base import ModelSource, load_config, reason


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


def _corrupt(why: str, path) -> FileError:
    """A packaging bug: the catalogue fitplan shipped does not read back."""
    return FileError(f"fitplan's shipped model catalogue is corrupt ({why}): reinstall fitplan, or pass "
                     "use_catalogue=False to ask the Hub", path=str(path))


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
        raise _corrupt(f"model_catalogue.json: {reason(e)}", index_file) from None
    if not isinstance(index, dict):
        raise _corrupt("model_catalogue.json is not an object", index_file)
    return tuple(_catalogue_model(key, entry, index_file) for key, entry in index.items() if isinstance(key, str))


def _catalogue_model(key: str, entry, index_file) -> CatalogueModel:
    file = entry.get("file") if isinstance(entry, dict) else None
    if not (isinstance(file, str) and file.endswith(".json") and "/" not in file and "\\" not in file):
        raise _corrupt(f"entry {key!r} has no valid 'file'", index_file)
    params, gated = entry.get("parameters"), entry.get("gated")
    texts = [entry.get(k) for k in ("parameters_source", "source", "fails")]
    if not ((params is None or (isinstance(params, int) and not isinstance(params, bool) and params > 0))
            and all(t is None or isinstance(t, str) for t in texts) and (gated is None or isinstance(gated, bool))):
        raise _corrupt(f"entry {key!r} has a malformed parameters, parameters_source, source, fails or gated field",
                       index_file)
    rounded = entry.get("parameters_rounded_to")
    if not (rounded is None or (type(rounded) is int and rounded > 0)):
        raise _corrupt(f"entry {key!r} has a malformed parameters_rounded_to field", index_file)
    return CatalogueModel(key, file, texts[1], params, texts[0], gated, texts[2], rounded)


def near_catalogue_id(model: str) -> str:
    """` (did you mean 'org/name'?)` for a near miss of a catalogue id, else empty."""
    from ...vocab.kinds import did_you_mean

    return did_you_mean(model, [m.repo_id for m in catalogue_models()])


def catalogue_entry(repo_id: str, root=None) -> ModelSource | None:
    """The catalogue's config for `repo_id` (matched case-insensitively), or None."""
    wanted = repo_id.lower()
    hit = next((m for m in catalogue_models(root) if m.repo_id.lower() == wanted), None)
    if hit is None:
        return None
    cfg_file = _catalogue_root(root) / "models" / hit.file
    if not cfg_file.is_file():
        raise _corrupt(f"models/{hit.file} for {hit.repo_id!r} is missing", cfg_file)
    config = load_config(cfg_file.read_bytes(), f"fitplan's catalogue file models/{hit.file}",
                         lambda m: FileError(m, path=str(cfg_file)), "reinstall fitplan")
    return ModelSource(model_id=repo_id, origin="catalogue", config=config, revision=None, tensors=None,
                       repo_id=hit.repo_id, parameters=hit.parameters, parameters_source=hit.parameters_source,
                       gated=hit.gated, parameters_exact=hit.parameters is not None and hit.parameters_rounded_to is None)
