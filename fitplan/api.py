"""The Python API: `fitplan.plan()`. Same option names as the CLI flags (`fitplan.options`)."""
from __future__ import annotations

from .hardware.machine import Hardware
from .planning.plan import Plan


def plan(model: str, *, context: int | None = None, batch: int | None = None, images: int | None = None,
         auto_class: str | None = None, precision: str | None = None,
         gpu: str | None = None, hardware: "str | Hardware | None" = None, headroom=None,
         offload: bool | None = None, min_precision: str | None = None, prefer: str | None = None,
         fast: bool | None = None, revision: str | None = None, token: str | None = None, offline: bool | None = None,
         use_cache: bool = True) -> Plan:
    """Plan `model` (Hub id or local folder) for this machine, or for `gpu`/`hardware` if given.

    Never downloads weights; raises a `FitplanError` for bad input. A plan that does not fit is
    returned (check `plan.fits`), not raised: `load()` is what refuses to go on. `plan.inventory.auto_class`
    says which transformers Auto class the plan is for.
    """
    from .pipeline import plan_model

    return plan_model(model, context=context, batch=batch, images=images, auto_class=auto_class,
                      precision=precision, gpu=gpu, hardware=hardware,
                      headroom=headroom, offload=offload, min_precision=min_precision, prefer=prefer,
                      fast=fast, revision=revision, token=token, offline=offline, use_cache=use_cache)
