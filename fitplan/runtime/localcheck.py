"""What `load()` checks of a local model folder before `from_pretrained` reads a weight.

- `require_weights`: the folder holds weight files at all (transformers' own error for a folder
  with config.json and nothing else is a raw `OSError` naming files the user never heard of);
- `require_unchanged`: the folder still holds what the plan was made from (`Plan.model_digest`,
  `fitplan.model.digest`), so a folder swapped between planning and loading is refused;
- `local_load_errors`: errors `from_pretrained` raises because a local file is bad (unreadable,
  truncated, not safetensors) become one-line `InputError`s naming the folder. Out-of-memory and
  other errors are not bad input and pass through.
"""
from __future__ import annotations

import contextlib
import json
from pathlib import Path

from ..errors import FileError, InputError

#: What transformers loads weights from (safetensors, PyTorch, TF, Flax, GGUF; sharded or not).
WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.h5", "*.msgpack", "*.ckpt.index", "*.gguf")


def require_weights(model: str, subfolder: str | None = None) -> None:
    folder = Path(model).expanduser() / (subfolder or "")
    if not any(any(folder.glob(pattern)) for pattern in WEIGHT_PATTERNS):
        raise FileError(f"{folder} has a config.json but no weights (no *.safetensors or *.bin file): "
                        "finish the download, or pass the folder that holds the weights", path=str(folder))


def require_unchanged(plan) -> None:
    if not plan.model_digest:
        return
    from ..model.digest import checked_digest

    checked_digest(Path(plan.model_id).expanduser(), plan.model_digest, since="planned",
                   fix="make sure nothing rewrites the folder while it loads, then load again")


def _bad_input_errors() -> tuple[type[BaseException], ...]:
    out: list[type[BaseException]] = [OSError, json.JSONDecodeError, UnicodeDecodeError]
    try:
        from safetensors import SafetensorError
        out.append(SafetensorError)
    except ImportError:  # pragma: no cover - safetensors ships with transformers
        pass
    return tuple(out)


@contextlib.contextmanager
def local_load_errors(model: str):
    try:
        yield
    except _bad_input_errors() as exc:
        if isinstance(exc, InputError):
            raise
        reason = " ".join(str(exc).split())[:240] or type(exc).__name__
        raise FileError(f"transformers could not load the weights in {model} ({type(exc).__name__}: {reason}); "
                        "re-download the model files", path=str(model)) from None
