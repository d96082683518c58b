"""`fitplan models`: the shipped catalogue of model configs that plan offline, with where each came from."""
from __future__ import annotations

import json
import textwrap

import click

from .errors import handle_errors

WIDTH = 99  # every text line stays under 100 columns


def _rows() -> list[dict]:
    from importlib import resources

    from ..model.sources import catalogue_models

    models_dir = resources.files("fitplan") / "data" / "models"
    out = []
    for m in catalogue_models():
        cfg = json.loads((models_dir / m.file).read_text(encoding="utf-8"))
        archs = cfg.get("architectures") or [None]
        out.append({"id": m.repo_id, "model_type": cfg.get("model_type"), "architecture": archs[0],
                    "quantization": (cfg.get("quantization_config") or {}).get("quant_method"),
                    "parameters": m.parameters, "parameters_source": m.parameters_source, "source": m.source,
                    "gated": m.gated, "fails": m.fails})
    return sorted(out, key=lambda r: r["id"].lower())


def _count(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.0f}M"


def render(rows: list[dict]) -> str:
    """Two lines or more per model: id, published parameters, type (and flags); then where the config came from."""
    lines = [f"{len(rows)} model configs ship with fitplan and answer offline (parameters: the published figure)", ""]
    for r in rows:
        flags = [f for f, on in (("gated", r["gated"]), (r["quantization"] or "", r["quantization"])) if on]
        kind = r["model_type"] + (f" [{', '.join(flags)}]" if flags else "")
        lines.append(f"{r['id'][:60]:60} {_count(r['parameters']):>9}  {kind}"[:WIDTH])
        wrap = dict(width=WIDTH, initial_indent="    ", subsequent_indent="      ", break_on_hyphens=False)
        lines += textwrap.wrap(f"config: {r['source']}", **wrap)
        if r["fails"]:
            lines += textwrap.wrap(f"not planned yet: {r['fails']}", **wrap)
    return "\n".join(lines)


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the catalogue as JSON (nothing else on stdout).")
@handle_errors
def models(as_json):
    """List the models whose configs ship with fitplan (they plan offline), with parameters and sources."""
    rows = _rows()
    click.echo(json.dumps(rows, indent=2) if as_json else render(rows))
