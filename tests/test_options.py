"""Options are declared once (fitplan/options.py); everything that names them is derived from there.
These tests fail when a new option is declared but one of its faces is missing, or a face names an
option that is not declared."""
from __future__ import annotations

import inspect
import re
from dataclasses import fields
from pathlib import Path

import pytest

from fitplan.cli.main import check
from fitplan.errors import InputError
from fitplan.options import OPTION_KEYS, PLAN_KEYS, PlanOptions, SourceOptions, env_var, flag
from fitplan.profiles.schema import ENV_VARS, SCHEMA, SETTINGS

ROOT = Path(__file__).resolve().parent.parent


def test_every_option_is_a_flag_of_check_and_nothing_else_is():
    names = {p.name for p in check.params}
    assert set(OPTION_KEYS) <= names
    assert names - set(OPTION_KEYS) == {"model", "profile", "as_json", "no_cache"}
    for p in check.params:
        if p.name in OPTION_KEYS:
            assert flag(p.name) in p.opts


def test_profile_schema_and_environment_come_from_the_declarations():
    declared = {f.name: f.metadata["profile"] for f in (*fields(PlanOptions), *fields(SourceOptions))
                if f.metadata["profile"]}
    assert {k: v for k, v in SETTINGS.items() if k != "model"} == declared
    for section in (f for f in SCHEMA if f.kind == "section"):
        for g in section.fields:
            meta = next(f for f in fields(PlanOptions) if f.name == g.key).metadata
            assert (g.doc, g.kind, g.decl) == (meta["help"], meta["kind"], meta)
    assert all(ENV_VARS[name] == env_var(name) for name in ENV_VARS if name != "model")


def test_plan_and_load_accept_exactly_the_declared_options():
    import fitplan

    assert set(inspect.signature(fitplan.plan).parameters) - {"model", "use_cache"} == set(OPTION_KEYS)
    with pytest.raises(InputError, match="unknown option contxt"):
        PlanOptions.from_values(contxt=4096)
    # load() takes the options and from_pretrained's arguments; a typo is refused before anything runs
    with pytest.raises(InputError, match="does not know contxt"):
        fitplan.load("Qwen/Qwen2.5-0.5B", contxt=4096)


def test_the_api_doc_lists_every_option_with_its_flag():
    text = (ROOT / "docs" / "api.md").read_text()
    for name in PLAN_KEYS + ("gpu", "hardware"):
        row = re.search(rf"^\| `{name}` \| `([^`]+)` \|", text, re.M)
        assert row and row.group(1) == flag(name), name
    assert "`revision`, `token`, `offline`" in text


def test_enums_are_case_insensitive_from_python_and_the_command_line():
    o = PlanOptions.from_values(prefer="Speed", precision="NF4", min_precision="INT8")
    assert (o.prefer, o.precision, o.min_precision) == ("speed", "nf4", "int8")


def test_a_bad_value_names_its_option_as_each_front_door_spells_it():
    """One check per kind, one message: the API names the keyword, the CLI the flag, a profile the key."""
    from fitplan.errors import OptionError

    with pytest.raises(OptionError) as info:
        PlanOptions.from_values(min_precision="int3")
    err = info.value
    assert err.option == "min_precision"
    assert str(err).startswith("min_precision has unknown precision 'int3' (did you mean 'int8'?)")
    assert err.render("cli").startswith("--min-precision has unknown precision")
    assert err.render("profile").startswith("'min_precision:' has unknown precision")
