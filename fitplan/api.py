"""The Python API: `fitplan.plan()`. Its keywords are the options of `fitplan.options`, read off the
declarations (the same names as the CLI flags), never typed here."""
from __future__ import annotations

import inspect

from .options import OPTION_KEYS
from .planning.plan import Plan


def plan(model: str, *, use_cache: bool = True, **options) -> Plan:
    """Plan `model` (Hub id or local folder) for this machine, or for `gpu`/`hardware` if given.

    Never downloads weights; raises a `FitplanError` for bad input. A plan that does not fit is
    returned (check `plan.fits`), not raised: `load()` is what refuses to go on. `plan.inventory.auto_class`
    says which transformers Auto class the plan is for. `options`: those of `fitplan.options` (None or
    absent: the default), `hardware` also as a fitplan `Hardware`.
    """
    from .pipeline import plan_model

    return plan_model(model, use_cache=use_cache, **options)


#: What `help(fitplan.plan)` and editors show: every declared option as a keyword, default None.
plan.__signature__ = inspect.Signature(
    [inspect.Parameter("model", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=str)]
    + [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None) for name in OPTION_KEYS]
    + [inspect.Parameter("use_cache", inspect.Parameter.KEYWORD_ONLY, default=True, annotation=bool)],
    return_annotation=Plan)
