"""Load a GGUF plan with llama-cpp-python (`pip install llama-cpp-python`, the `llama-cpp` extra).

llama-cpp-python is optional: fitplan never imports it unless a load is asked for, and a missing
install is one clear line. Building it from PyPI's source distribution took 544 s on this project's
2-core CI machine (docs/gguf.md), so CI tests the arguments fitplan passes (`llama_kwargs`) and a
real load runs only where llama-cpp-python is installed.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import DependencyError, DoesNotFitError, FileError
from .plan import GGUFChoice, GGUFRow


def llama_kwargs(choice: GGUFChoice, row: GGUFRow | None = None, *, model_path: str | None = None) -> dict:
    """The keyword arguments `load_gguf` passes to `llama_cpp.Llama` for `row` (default: the
    recommended one), or to `llama_cpp.Llama.from_pretrained` (`repo_id`, `filename`) for a file on
    the Hub. `model_path` replaces the row's file (a what-if row names the file to download)."""
    row = row or choice.recommended
    if row is None:
        raise DoesNotFitError(f"no GGUF option for {choice.model} fits {choice.hardware}: see the plan's reasons",
                              model_id=str(choice.model))
    kw = choice.llama_cpp_kwargs(row)
    if model_path is not None:
        kw["model_path"] = str(model_path)
    elif row.repo_id:  # a Hub file: llama_cpp.Llama.from_pretrained downloads it
        return {"repo_id": row.repo_id, "filename": kw.pop("model_path"), **kw}
    if not Path(kw["model_path"]).is_file():
        what = ("download a GGUF file of this type and pass model_path=" if row.origin == "estimate"
                else "check the path, or pass model_path=")
        raise FileError(f"no GGUF file at {kw['model_path']}: {what}", path=str(kw["model_path"]))
    return kw


def load_gguf(choice: GGUFChoice, row: GGUFRow | None = None, *, model_path: str | None = None, **overrides):
    """A `llama_cpp.Llama` built as the plan says (`n_ctx`, `n_gpu_layers`, batch sizes, flash
    attention, KV cache type); a Hub file is downloaded by `Llama.from_pretrained`. `overrides`
    are passed on as given (e.g. `verbose=False`)."""
    kw = {**llama_kwargs(choice, row, model_path=model_path), **overrides}
    try:
        import llama_cpp
    except ImportError:
        raise DependencyError("loading a GGUF plan needs llama-cpp-python: pip install llama-cpp-python "
                         "(or pip install 'fitplan[llama-cpp]')", package="llama-cpp-python") from None
    if "repo_id" in kw:
        return llama_cpp.Llama.from_pretrained(**kw)
    return llama_cpp.Llama(**kw)
