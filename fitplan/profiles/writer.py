"""`fitplan profile init`: a commented profile that reproduces a plan, read back before it is written."""
from __future__ import annotations

from typing import Any, Mapping

import yaml

from ..hardware.catalogue import spec_for_probed
from ..hardware.machine import Hardware
from ..planning.plan import Plan
from ..vocab.units import GiB, MiB
from .schema import SCHEMA


# -- writing a profile (`fitplan profile init`) ---------------------------------------------------

def format_size(n: int) -> str:
    """Bytes as a profile writes them: the largest binary unit that is exact."""
    for unit, size in (("GiB", GiB), ("MiB", MiB)):
        if n and n % size == 0:
            return f"{n // size}{unit}"
    return f"{n}B"


def format_headroom(h: float | int) -> str:
    return f"{round(h * 100, 6):g}%" if isinstance(h, float) else format_size(h)


def hardware_entries(hw: Hardware) -> list:
    """Hardware as `gpus:` items: catalogue keys where the card is the catalogue's, else full mappings."""
    entries: list = []
    for g in hw.gpus:
        spec = spec_for_probed(g.name, g.total_bytes)
        if spec and spec.memory_bytes == g.total_bytes and spec.compute_capability == g.compute_capability:
            entry: Any = spec.key
            if hw.source == "file" and g.free_bytes != g.total_bytes:
                entry = {"gpu": spec.key, "free": format_size(g.free_bytes)}
        else:
            entry = {"name": g.name, "memory": format_size(g.total_bytes),
                     "compute_capability": f"{g.compute_capability[0]}.{g.compute_capability[1]}"}
            if hw.source == "file" and g.free_bytes != g.total_bytes:
                entry["free"] = format_size(g.free_bytes)
        _add_counted(entries, entry)
    return [f"{n}x {e}" if isinstance(e, str) and n > 1 else ({**e, "count": n} if n > 1 else e)
            for e, n in entries]


def _add_counted(entries: list, entry) -> None:
    if entries and entries[-1][0] == entry:
        entries[-1] = (entry, entries[-1][1] + 1)
    else:
        entries.append((entry, 1))


def _flow(value: Any) -> str:
    """One YAML scalar or flow collection, as safe_dump writes it."""
    text = yaml.safe_dump(value, default_flow_style=True, width=1 << 16, allow_unicode=True).strip()
    return text.removesuffix("\n...").removesuffix("...").strip()


def _serving(plan: Plan) -> dict:
    """The engine settings the plan resolved (what fitplan chose), so the profile plans the same deployment."""
    o, p = plan.options, plan.engine.plan
    return {"tensor_parallel_size": p.tensor_parallel_size, "pipeline_parallel_size": p.pipeline_parallel_size,
            "gpu_memory_utilization": p.gpu_memory_utilization, "kv_cache_dtype": p.kv_cache_dtype,
            "quantization": p.quantization, "max_num_seqs": o.max_num_seqs,
            "max_num_batched_tokens": o.max_num_batched_tokens, "enforce_eager": p.enforce_eager}


def render_profile(plan: Plan, *, given: Mapping[str, Any]) -> str:
    """A commented profile that reproduces `plan`: explicit values as given, the rest as resolved.

    `min_precision` is written commented out with the precision chosen now: uncomment it to make
    `check --profile` fail instead of quietly planning a lower precision one day.
    """
    o = plan.options
    values = {"model": plan.model_id, "revision": given.get("revision") or "main",
              "auto_class": o.auto_class or plan.inventory.auto_class,
              "workload": {"context": o.context, "batch": o.batch, "images": o.images, "kv_type": o.kv_type},
              "constraints": {"precision": o.precision, "min_precision": o.min_precision, "prefer": o.prefer,
                              "headroom": format_headroom(o.headroom), "offload": o.offload,
                              "fast": o.fast}}
    engine = o.engine != "transformers"  # a transformers profile is written as before the engines existed
    if engine:
        values["engine"] = o.engine
        values["workload"]["concurrency"] = o.concurrency
        values["serving"] = _serving(plan)
    lines = ["# fitplan deployment profile, written by `fitplan profile init` (reference: docs/profiles.md).",
             "# CI gate: fitplan check --profile THIS_FILE   (exit 0 fits, 1 does not, 2 invalid)",
             f"# Planned when written: {plan.summary_line()}"]

    def row(indent: int, text: str, doc: str) -> str:
        body = " " * indent + text
        return f"{body:<36} # {doc}" if doc else body

    for f in SCHEMA:
        if f.key not in values and f.kind != "hardware":
            continue
        if f.kind == "section":
            lines.append(row(0, f"{f.key}:", f.doc))
            for g in f.fields:
                if g.key not in values[f.key]:
                    continue
                v = values[f.key][g.key]
                if v is None and not g.decl["choices"]:
                    lines.append(row(2, f"# {g.key}:", g.doc))
                elif v is None:
                    hint = g.doc
                    if g.key == "min_precision" and plan.precision:
                        hint = f"the plan chose {plan.precision}; uncomment to fail the check below it"
                    lines.append(row(2, f"# {g.key}: {plan.precision or g.decl['choices'][0]}", hint))
                else:
                    lines.append(row(2, f"{g.key}: {_flow(v)}", g.doc))
        elif f.kind == "hardware":
            lines.append(row(0, "hardware:", f.doc))
            hw = plan.hardware
            gpus = hardware_entries(hw)
            lines.append(row(2, f"gpus: {_flow(gpus)}" if not gpus else "gpus:",
                             "CPU only" if not gpus else f"planned for: {hw.describe()}"))
            lines += [row(4, f"- {_flow(e)}", "") for e in gpus]
            if hw.gpus_per_node:
                lines.append(row(2, f"nodes: {len(hw.gpus) // hw.gpus_per_node}",
                                 f"machines of {hw.gpus_per_node} GPUs each"))
            if not gpus or o.offload:
                ram = hw.cpu_ram_bytes - hw.cpu_ram_bytes % MiB  # whole MiB: readable, never more than there is
                lines.append(row(2, f"cpu_ram: {format_size(ram)}", "RAM the plan may use"))
        else:
            lines.append(row(0, f"{f.key}: {_flow(values[f.key])}", f.doc))
    return "\n".join(lines) + "\n"

