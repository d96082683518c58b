"""When nothing fits: say by how much, and what would make it fit (shorter context, smaller batch,
another GPU, offload). Each suggestion is checked by re-running the policy, not guessed, and is
data: the option changes that make it fit, and words naming options with `ref()`."""
from __future__ import annotations

from dataclasses import dataclass, field, replace

from ..errors import ref, render_refs
from ..hardware.machine import Hardware
from ..model.inventory import Inventory
from ..options import PlanOptions
from ..vocab.units import fmt_bytes
from .policy import Choice, choose
from .workload import Workload


@dataclass(frozen=True)
class Suggestion:
    """`changes`: option values that make the plan fit (empty when it takes other hardware)."""

    text: str
    changes: dict = field(default_factory=dict)

    def render(self, style: str = "api") -> str:
        return render_refs(self.text, style)


def suggestions(inv: Inventory, hw: Hardware, opts: PlanOptions, work: Workload, choice: Choice) -> list[Suggestion]:
    """What would make the plan for `work` (the workload `opts` ask of `inv`) fit, each re-checked."""
    def choice_with(machine: Hardware = hw, **changes) -> Choice:
        """The policy's choice with `changes` to the options (the workload they then ask) on `machine`."""
        changed = replace(opts, **changes)
        changed_work = work.with_options(changed) if changes else work
        return choose(inv, machine, changed, changed_work)

    def fits(**changes) -> bool:
        return choice_with(**changes).chosen is not None

    missing = _missing_package(inv, hw, choice_with)
    if missing is not None:  # no row loads on this target without it: nothing else would make it fit
        return [missing]
    out = []
    # Longest context that fits at this batch (binary search over powers of two, then refine).
    lo, hi = 0, opts.context
    while hi - lo > max(64, opts.context // 64):
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(context=mid) else (lo, mid)
    if lo >= 256:
        n = lo - lo % 256 or lo
        out.append(Suggestion(f"shorter context: {ref('context', n)} fits", {"context": n}))
    if opts.batch > 1:
        b = opts.batch - 1
        while b >= 1 and not fits(batch=b):
            b //= 2
        if b >= 1:
            out.append(Suggestion(f"smaller batch: {ref('batch', b)} fits", {"batch": b}))
    offloaded = choice_with(offload=True).chosen if not opts.offload and hw.gpus else None
    if offloaded is not None:
        d = offloaded
        slow = f" (at most {d.speed.pcie_ceiling:.1f} tokens/s)" if d.speed and d.speed.pcie_ceiling else ""
        out.append(Suggestion(f"allow offload to CPU RAM ({ref('offload', True)}): {d.precision} fits, but generation "
                              f"will be much slower{slow}", {"offload": True}))
    ram = _ram_that_fits(hw, opts, choice, choice_with)
    if ram is not None:
        out.append(Suggestion(f"more CPU RAM for the offloaded layers: {fmt_bytes(ram)} would do (planned with "
                              f"{fmt_bytes(hw.cpu_ram_bytes)})"))
    if opts.precision and fits(precision=None):
        out.append(Suggestion(f"drop {ref('precision')}: another precision fits", {"precision": None}))
    if opts.min_precision and fits(min_precision=None):
        out.append(Suggestion("lower min_precision: a smaller precision fits", {"min_precision": None}))
    sw = hw.software  # a target described, not probed: its packages decide whether mxfp4 / fp8 stay packed
    if hw.gpus and inv.prequantized and sw is not None and not sw.kernels:
        declared = tuple(dict.fromkeys((*sw.declared, "kernels")))
        packed = choice_with(replace(hw, software=replace(sw, kernels=True, declared=declared))).chosen
        if packed is not None:
            out.append(Suggestion(f"the kernels package on the target, declared in its hardware file (software: "
                                  f"{{kernels: true}}, docs/hardware.md): {packed.precision} then fits"))
    allowed = [d.estimate for d in choice.decisions if d.ruled_out is None] or [d.estimate for d in choice.decisions]
    smallest = min(allowed, key=lambda e: e.total_bytes)
    if hw.gpus:
        g = max(hw.gpus, key=lambda g: g.free_bytes)
        need = _with_headroom(smallest.total_bytes, opts.headroom)
        if len(hw.gpus) == 1:
            out.append(Suggestion(f"a GPU with at least {fmt_bytes(need)} of memory "
                                  f"(this one: {fmt_bytes(g.total_bytes)}), or several GPUs"))
        else:
            out.append(Suggestion(f"a GPU with at least {fmt_bytes(need)} of memory (the largest of these "
                                  f"{len(hw.gpus)}: {fmt_bytes(g.total_bytes)}), or more GPUs than these"))
    return out


def _missing_package(inv: Inventory, hw: Hardware, choice_with) -> Suggestion | None:
    """The package that the target lacks and without which transformers loads no row of this pre-quantized
    checkpoint (`prequant.refusal`: 5.0's fp8 without triton), as the one suggestion, re-checked with it there."""
    from ..hardware.software import default_software
    from . import prequant

    if not inv.prequantized:
        return None
    target = prequant.target_of(inv, hw.gpus, hw.software)
    if target.lacks is None or prequant.refusal(inv, target) is None:
        return None
    pkg = target.lacks
    sw = hw.software or default_software()
    declared = tuple(dict.fromkeys((*sw.declared, pkg)))
    chosen = choice_with(replace(hw, software=replace(sw, **{pkg: True}, declared=declared))).chosen
    where = (f"{pkg} on the target, declared in its hardware file (software: {{{pkg}: true}}, docs/hardware.md)"
             if hw.software is not None else f"{pkg} installed here (pip install {pkg})")
    return Suggestion(f"{where}: {chosen.precision} then fits" if chosen is not None else
                      f"{where}: without it no row of this checkpoint loads; with it, nothing fits either "
                      "(plan again once it is there for what would)")


def _with_headroom(nbytes: int, headroom: float | int) -> int:
    """The memory whose usable part, after `headroom`, is `nbytes`."""
    return int(nbytes / (1 - headroom)) if isinstance(headroom, float) else nbytes + headroom


def _ram_that_fits(hw: Hardware, opts: PlanOptions, choice: Choice, choice_with) -> int | None:
    """With offload allowed and only CPU RAM short: the RAM that lets the smallest offloaded share fit
    (re-checked by the policy through `choice_with(machine)`), else None."""
    short = [d for d in choice.decisions if d.ruled_out is None and d.offload_bytes and not d.fits]
    if not (opts.offload and hw.gpus and short):
        return None
    ram = _with_headroom(min(d.offload_bytes for d in short), opts.headroom) + 1
    return ram if choice_with(replace(hw, cpu_ram_bytes=ram)).chosen is not None else None
