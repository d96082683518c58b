"""The `fitplan` command. A thin shell over the library: parse, call, print, choose the exit code.

Exit codes: 0 the plan fits (or the command succeeded), 1 nothing fits / measured over the
prediction, 2 bad input or environment — one line on stderr, never a traceback.
"""
from __future__ import annotations

import json
import sys

import click

from ..versions import fitplan_version
from ..vocab.precision import cc_text
from ..vocab.units import gib
from .common import collect, plan_options
from .errors import fail, handle_errors
from .models import models
from .profiles import lock, profile

class _OneLineErrors(click.Group):
    """Usage errors (bad flag, bad choice) as one line with exit 2, like every other error."""

    def main(self, args=None, prog_name=None, **kwargs):
        if not (sys.argv[1:] if args is None else args):  # bare `fitplan`: the help, as asked for
            with click.Context(self, info_name=prog_name or "fitplan") as ctx:
                click.echo(self.get_help(ctx))
            sys.exit(0)
        try:
            rv = super().main(args=args, prog_name=prog_name, standalone_mode=False, **kwargs)
        except (click.ClickException, click.exceptions.Abort) as exc:
            fail(exc)
        sys.exit(rv if isinstance(rv, int) else 0)


@click.group(cls=_OneLineErrors, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(version=fitplan_version(), prog_name="fitplan")
def main():
    """Will this Hugging Face model fit? An exact memory plan before download, and a loader that follows it."""


def _progress(text: str) -> None:
    click.echo(f"fitplan: {text} ...", err=True)


def _is_gguf(model: str) -> bool:
    """A local .gguf file, or a folder holding .gguf files and no config.json."""
    import os

    if model.lower().endswith(".gguf"):
        return True
    return (os.path.isdir(model) and not os.path.exists(os.path.join(model, "config.json"))
            and any(n.lower().endswith(".gguf") for n in os.listdir(model)))


@main.command()
@click.argument("model", required=False)
@plan_options
@click.option("--profile", type=click.Path(dir_okay=False), default=None,
              help="A deployment profile (YAML); flags override its values.")
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON (schema: docs/json.md).")
@click.option("--no-cache", is_flag=True, help="Rebuild the model inventory instead of using the cache.")
@handle_errors
def check(model, profile, as_json, no_cache, **kw):
    """Plan MODEL (Hub id or local folder) for this machine or the given GPUs. Exit 0 fits, 1 not, 2 error."""
    from ..pipeline import plan_model, plan_profile
    from ..render import render_text

    given = collect(kw)
    progress = _progress if sys.stderr.isatty() and not as_json else None  # nothing in --json or CI logs
    if profile:
        p = plan_profile(profile, model=model, overrides=given, use_cache=not no_cache, progress=progress)
    else:
        if not model:
            raise click.UsageError("give a MODEL (Hub id or local folder) or --profile FILE")
        if _is_gguf(model):
            from ..options import PlanOptions, PLAN_KEYS
            from ..pipeline import plan_gguf_file, resolve_hardware

            hw = resolve_hardware(given.get("gpu"), given.get("hardware"))
            choice = plan_gguf_file(model, hardware=hw, options=PlanOptions.from_values(
                **{k: v for k, v in given.items() if k in PLAN_KEYS}))
            click.echo(json.dumps(choice.to_dict(), indent=2) if as_json else "\n".join(choice.render_lines()))
            sys.exit(0 if choice.fits else 1)
        p = plan_model(model, use_cache=not no_cache, progress=progress, **given)
    click.echo(json.dumps(p.to_dict("cli"), indent=2) if as_json else render_text(p))
    sys.exit(0 if p.fits else 1)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the catalogue as JSON, and nothing else.")
def gpus(as_json):
    """List the GPU catalogue names usable with --gpu."""
    from ..hardware.catalogue import load_gpu_catalogue

    cat = load_gpu_catalogue()
    if as_json:
        click.echo(json.dumps({k: {"name": s.name, "memory_bytes": s.memory_bytes,
                                   "compute_capability": ".".join(map(str, s.compute_capability)),
                                   "bandwidth_gbs": s.bandwidth_gbs} for k, s in cat.items()}, indent=2))
        return
    for key, s in cat.items():
        click.echo(f"{key:18} {gib(s.memory_bytes):>7} GiB  cc {cc_text(s.compute_capability)}  {s.name}")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print what was found as JSON (notes inside it), and nothing "
              "else on stdout.")
@handle_errors
def probe(as_json):
    """Show what fitplan sees on this machine (GPUs via NVML, CPU RAM)."""
    from ..hardware.probe import probe as run

    hw = run()
    click.echo(json.dumps(hw.to_dict(), indent=2) if as_json else hw.describe())
    for n in hw.notes:  # in --json they are inside the JSON too; stdout stays machine-readable
        click.echo(f"note: {n}", err=as_json)


@main.command()
@click.argument("model")
@plan_options
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=32, help="Tokens generated in the check.")
@handle_errors
def verify(model, max_new_tokens, **kw):
    """Load MODEL per plan, generate at the planned context and batch, compare predicted vs measured."""
    from ..runtime.verify import verify as run

    from ..render import render_verify

    report = run(model, max_new_tokens=max_new_tokens, **collect(kw))
    click.echo(render_verify(report))
    sys.exit(0 if report.ok else 1)


main.add_command(profile)
main.add_command(lock)
main.add_command(models)
