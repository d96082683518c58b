"""`fitplan profile init|validate|schema` and `fitplan lock`: the command-line side of fitplan/profile.py.

Same exit codes as `check`: 0 done (or fits), 1 the plan does not fit, 2 bad input — one line on
stderr. Files are written with `write_atomic`: never half a file, never over one without --force.
"""
from __future__ import annotations

import sys

import click

from .common import collect, plan_options
from .errors import handle_errors


@click.group()
def profile():
    """Deployment profiles (YAML checked into the deployment repo); see docs/profiles.md."""


@profile.command()
@click.argument("model")
@plan_options
@click.option("--output", "-o", type=click.Path(dir_okay=False), default=None,
              help="Write the profile here instead of printing it.")
@click.option("--force", is_flag=True, help="Overwrite --output if it exists.")
@click.option("--no-cache", is_flag=True, help="Rebuild the model inventory instead of using the cache.")
@handle_errors
def init(model, output, force, no_cache, **kw):
    """Plan MODEL as `check` would and write a commented profile of it. Exit 1 if it does not fit."""
    from ..atomic import write_atomic
    from ..pipeline import plan_model
    from ..profiles.settings import profile_from_text
    from ..profiles.writer import render_profile

    given = collect(kw)
    p = plan_model(model, use_cache=not no_cache, **given)
    text = render_profile(p, given=given)
    profile_from_text(text, output or "<profile init>")  # what we write must read back
    if output is not None:
        write_atomic(output, text, force=force)
        click.echo(f"wrote {output}: {p.summary_line()}", err=True)
    else:
        click.echo(text, nl=False)
    if not p.fits:
        click.echo(f"fitplan: note: {p.summary_line()}; `fitplan check --profile` will exit 1 until it fits",
                   err=True)
        sys.exit(1)


@profile.command()
@click.argument("file", type=click.Path(dir_okay=False))
@handle_errors
def validate(file):
    """Check FILE against the profile schema (GPU names included); lists every problem. Exit 0 valid, 2 not."""
    from ..profiles.settings import load_profile, profile_problems
    from .errors import message, say

    problems = profile_problems(file)
    for err in problems:  # every problem, one line each, not only the first
        say(message(err))
    if problems:
        sys.exit(2)
    prof = load_profile(file)
    hw = prof.hardware
    where = ("this machine (auto)" if hw is None or hw.auto else
             f"{len(hw.gpus)} GPU{'s' if len(hw.gpus) != 1 else ''}" if hw.gpus else "CPU only")
    if hw is not None and hw.gpus_per_node:
        where += f" on {len(hw.gpus) // hw.gpus_per_node} nodes"
    click.echo(f"{file}: valid profile (model {prof.model or '(none: give MODEL)'}, hardware {where})")


@profile.command()
@click.option("--output", "-o", type=click.Path(dir_okay=False), default=None,
              help="Write the JSON Schema here instead of printing it.")
@click.option("--force", is_flag=True, help="Overwrite --output if it exists.")
@handle_errors
def schema(output, force):
    """Print the JSON Schema of profiles (for editors and CI validators)."""
    from ..atomic import write_atomic
    from ..profiles.schema import schema_text

    if output is not None:
        write_atomic(output, schema_text(), force=force)
        click.echo(f"wrote {output}", err=True)
    else:
        click.echo(schema_text(), nl=False)


@click.command()
@click.argument("profile_file", metavar="PROFILE", type=click.Path(dir_okay=False))
@click.option("--output", "-o", type=click.Path(dir_okay=False), default=None,
              help="Where to write the lock (default: PROFILE's name with .lock.yaml, beside it).")
@click.option("--force", is_flag=True, help="Replace an existing lock.")
@click.option("--no-cache", is_flag=True, help="Rebuild the model inventory instead of using the cache.")
@handle_errors
def lock(profile_file, output, force, no_cache):
    """Resolve PROFILE's plan and pin it in PROFILE.lock.yaml, which fitplan.load(profile=...) follows.

    Exit 0 locked, 1 nothing fits (no lock written), 2 bad input.
    """
    from ..atomic import write_atomic
    from ..errors import DoesNotFitError
    from ..pipeline import resolve_profile
    from ..profiles.lock import engine_summary, lock_path_for, render_lock

    prof, settings, p = resolve_profile(profile_file, use_cache=not no_cache)
    if p.engine is not None:  # a serving-engine deployment: its own fit and summary, not the transformers load's
        if not p.engine.plan.fits:
            raise DoesNotFitError(engine_summary(p) + "; no lock written", model_id=p.model_id)
    elif not p.fits:
        hint = p.suggestions("profile")
        raise DoesNotFitError(p.summary_line() + (f"; try: {hint[0]}" if hint else "") + "; no lock written",
                              model_id=p.model_id)
    target = lock_path_for(profile_file) if output is None else output
    write_atomic(target, render_lock(p, prof, settings, profile_file), force=force)
    click.echo(f"locked {engine_summary(p) if p.engine is not None else p.summary_line()} -> {target}")
