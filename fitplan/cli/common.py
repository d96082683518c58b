"""The flags every planning command shares, generated from the option declarations
(`fitplan.options`): names, types, choices, defaults and help are never typed here."""
from __future__ import annotations

from dataclasses import fields

import click

from ..options import PlanOptions, SourceOptions, env_var, flag
from ..vocab.kinds import kind


def _click_option(f):
    m = f.metadata
    text = m["help"].rstrip(".")
    if m["default_text"] not in ("none", "false"):
        text += f" (default {m['default_text']})"
    kw = {"default": None, "help": text + "."}
    if m["kind"] == "bool":
        return click.option(f"{flag(f.name)}/--no-{f.name.replace('_', '-')}", f.name, **kw)
    if m["kind"] == "flag":
        return click.option(flag(f.name), f.name, is_flag=True, default=False, help=kw["help"])
    var = env_var(f.name)
    if var and not var.startswith("FITPLAN_"):  # FITPLAN_* are read by profiles, with their precedence
        kw.update(envvar=var, show_envvar=True)
    return click.option(flag(f.name), f.name, **kw, **kind(m["kind"]).click(m))


_DECLARED = [*fields(PlanOptions), *fields(SourceOptions)]


def plan_options(fn):
    """The flags shared by `check`, `verify` and `profile init`; same names as `fitplan.plan()`."""
    for f in reversed(_DECLARED):
        fn = _click_option(f)(fn)
    return fn


def collect(kw: dict) -> dict:
    """The option values given on the command line (None or an unset flag means: not given)."""
    return {f.name: kw[f.name] for f in _DECLARED
            if kw.get(f.name) is not None and not (f.metadata["kind"] == "flag" and not kw[f.name])}
