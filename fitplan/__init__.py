"""fitplan: will this Hugging Face model fit? An exact memory plan before download, and a loader that follows it.

    import fitplan
    plan = fitplan.plan("Qwen/Qwen2.5-7B-Instruct", context=8192)
    model, tokenizer = fitplan.load("Qwen/Qwen2.5-7B-Instruct", context=8192)

Importing fitplan is cheap: torch and transformers are imported only when a model is built or loaded.
The stages, one sub-package each (docs/architecture.md): `hardware` → `model` → `planning` →
`runtime`, with `profiles` for deployment files and `cli` for the command.
"""
from .api import plan
from .errors import (ConfigError, DependencyError, DoesNotFitError, FileError, FitplanError, GatedModelError,
                     HardwareError, HubError, InputError, LibraryChangedError, ModelNotFoundError, NoGpuError,
                     OptionError, UnsupportedModelError)
from .hardware.machine import GPU, Hardware
from .versions import fitplan_version

__version__ = fitplan_version()


def load(*args, **kwargs):
    """Plan, then load per plan. See `fitplan.runtime.load.load` for the arguments."""
    from .runtime.load import load as _load

    return _load(*args, **kwargs)


__all__ = ["plan", "load", "Hardware", "GPU", "FitplanError", "InputError", "OptionError", "FileError", "ConfigError",
           "ModelNotFoundError", "GatedModelError", "HubError", "UnsupportedModelError", "LibraryChangedError",
           "HardwareError", "NoGpuError", "DependencyError", "DoesNotFitError", "__version__"]
