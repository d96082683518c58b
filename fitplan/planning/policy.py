"""Choose the precision and placement: the best quality that fits with headroom, and why not the others.

Pure: an `Inventory`, a `Hardware` and `PlanOptions` in; `Decision`s out. For each precision, the
candidates in the vocabulary's order for `prefer`, it sizes the generation setup each placement allows
(fitplan.planning.generation, fitplan.planning.estimate) and hands that to the placement
(fitplan.planning.placement: the single GPU with the most free memory, then a split over all GPUs,
then, only when allowed, CPU offload within the RAM there is). A decision says whether that precision
fits in memory and nothing else; `choose` then times what fits, rules out, ranks and picks: every
plan that keeps all layers on GPUs before any offloaded one, offloaded plans by the bytes they copy
over PCIe each step.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from ..vocab import precision as P
from .estimate import load_dtype, sizes, weights_bytes
from .workload import Workload
from ..hardware.machine import Hardware
from ..errors import OptionError
from . import prequant
from ..options import PlanOptions
from ..model.inventory import Inventory
from ..model.prequant import scheme
from .layout import float_dtype_for
from ..vocab.precision import BF16_MIN_CC, BNB_MIN_CC, DTYPE_BYTES, Precision, cc_text
from .placement import Decision, place
from .speed import decode_speed
from . import generation as G
from ..vocab.units import fmt_bytes

def compute_dtype_for(hw: Hardware) -> str:
    """bf16 where every GPU has it (`BF16_MIN_CC`), else fp16; bf16 on the CPU."""
    if hw.gpus and not all(g.supports_bf16 for g in hw.gpus):
        return "float16"
    return "bfloat16"




def _decide(inv: Inventory, prec: Precision, opts: PlanOptions, work: Workload, hw: Hardware,
            compute: str) -> Decision:
    """Whether `prec` fits in memory on `hw` for `work` (offloading only if `opts.offload`), where, how it
    generates (fitplan.planning.generation: the setup is sized into the estimate), and why."""

    def setup(placement: str):
        gen = G.choose(inv, prec, work, gpus=hw.gpus, placement=placement, fast=opts.fast, compute_dtype=compute)
        return gen, sizes(inv, prec, work, compute, "cuda" if hw.gpus else "cpu", allocator=hw.allocator,
                          generation=gen)

    d = place(prec, opts, hw, setup)
    if d.offload_bytes:  # offloaded: transformers compiles no such model
        d = replace(d, generation=setup("offload")[0])
    return d if d.generation is not None else replace(d, generation=setup("split" if d.fits else "no-fit")[0])


def _candidates(opts: PlanOptions, hw: Hardware, compute: str) -> list[tuple[Precision, str | None]]:
    """Precisions in preference order, each with a reason it is ruled out whatever its size (or None)."""
    order = P.CPU_ORDER if not hw.gpus else ("fp32", *P.ORDERS[opts.prefer])
    # names were checked when the options were made (`fitplan.options`): read, not parsed again
    floor = P.NAMES.index(opts.min_precision) if opts.min_precision else None
    out = []
    for name in order:
        p = P.BY_NAME[name]
        why = None
        if opts.precision and name != opts.precision:
            why = f"not asked for (precision {opts.precision} was)"
        elif floor is not None and P.NAMES.index(name) > floor:
            why = f"below min_precision {opts.min_precision}"
        elif hw.gpus and name == "fp32" and not opts.precision:
            why = "fp32 doubles the memory of 16-bit weights for no inference gain on a GPU"
        elif hw.gpus and name == "bf16" and compute == "float16":
            why = f"a GPU here has no bf16 (compute capability < {cc_text(BF16_MIN_CC)}); fp16 is used instead"
        elif hw.gpus and name == "fp16" and compute == "bfloat16" and not opts.precision:
            why = f"bf16 is preferred on compute capability >= {cc_text(BF16_MIN_CC)} (same size, wider range)"
        elif not hw.gpus and p.quantized and not opts.precision:
            why = "bitsandbytes on the CPU only when asked for by precision; it is slower than 16-bit"
        elif hw.gpus and p.quantized and any(g.compute_capability < BNB_MIN_CC for g in hw.gpus):
            why = f"bitsandbytes needs compute capability {cc_text(BNB_MIN_CC)} or newer"
        out.append((p, why))
    return out


def _with_speed(d: Decision, hw: Hardware, work: Workload) -> Decision:
    """A decision that fits on GPUs with its decode speed (`fitplan.planning.speed`), from the sizes and
    placement it was made with; the one place a speed is computed."""
    if not (d.fits and hw.gpus and d.sizes is not None):
        return d
    return replace(d, speed=decode_speed(d.sizes, d.placement, hw.gpus, work.batch))


@dataclass(frozen=True)
class Choice:
    """The policy's answer: the chosen decision (or None) and every option with its reason."""

    chosen: Decision | None
    decisions: tuple[Decision, ...]
    compute_dtype: str


def _prequantized_candidates(inv: Inventory, opts: PlanOptions, hw: Hardware,
                             compute: str) -> list[tuple[Precision, str | None]]:
    """A pre-quantized checkpoint loads as stored: its rows (fitplan.planning.prequant.rows), `--precision` only
    picks among them, and bitsandbytes or float precisions do not apply to it."""
    rows = prequant.rows(inv, prequant.target_of(inv, hw.gpus, hw.software), P.get("bf16" if compute == "bfloat16" else "fp16"))
    names = [p.name for p, _ in rows]
    if opts.precision and opts.precision not in names:
        raise OptionError(f"{inv.model_id} is pre-quantized ({names[0]}): it loads as stored, so precision "
                         f"{opts.precision!r} does not apply; choose {' or '.join(names)} or drop it",
                          option="precision")
    return [(p, why or (f"not asked for (precision {opts.precision} was)" if opts.precision and p.name != opts.precision
                        else None)) for p, why in rows]


def precision_named(inv: Inventory, name: str) -> Precision:
    """The `Precision` of a plan's row name: a pre-quantized checkpoint's as-stored row, or one of `P.ALL`."""
    if inv.prequantized and name == scheme(inv).label:
        return prequant.as_stored(inv)
    return P.get(name)


def _tokens_per_s(d: Decision) -> float:
    return d.speed.tokens_per_s if d.speed and d.speed.tokens_per_s is not None else -1.0


def _best(decisions: list[Decision], prefer: str) -> Decision | None:
    """Every candidate with all layers on GPUs before any offloaded one; among those, the preference
    order (`speed`: the decode estimate, the order breaking ties); among offloaded ones, the fewest
    bytes copied over PCIe per step."""
    on_gpus = [d for d in decisions if d.candidate and not d.offload_bytes]
    if on_gpus:
        return max(on_gpus, key=_tokens_per_s) if prefer == "speed" else on_gpus[0]
    offloaded = [d for d in decisions if d.candidate]
    return min(offloaded, key=lambda d: d.offload_bytes) if offloaded else None


def _why_not(d: Decision, chosen: Decision | None, prefer: str) -> str | None:
    if chosen is not None and d.precision == chosen.precision:
        return None
    if d.ruled_out:
        return d.ruled_out
    if not d.fits or chosen is None:
        return d.reason
    if d.offload_bytes and not chosen.offload_bytes:
        return (f"fits only by offloading {fmt_bytes(d.offload_bytes)} to CPU RAM; {chosen.precision} keeps every "
                "layer on the GPUs")
    if d.offload_bytes and d.offload_bytes != chosen.offload_bytes:
        return (f"offloads {fmt_bytes(d.offload_bytes)}, copied over PCIe every step, against "
                f"{fmt_bytes(chosen.offload_bytes)} for {chosen.precision}")
    if prefer == "speed" and _tokens_per_s(chosen) > 0:
        return (f"fits, but {chosen.precision} decodes faster (about {_tokens_per_s(chosen):.0f} against "
                f"{_tokens_per_s(d):.0f} tokens/s)")
    return f"fits, but {chosen.precision} ranks higher (prefer={prefer})"


def choose(inv: Inventory, hw: Hardware, opts: PlanOptions, work: Workload) -> Choice:
    """Every precision considered for `work` on `hw`, each with its reason, and the one chosen."""
    compute = compute_dtype_for(hw)
    if inv.prequantized:
        candidates = _prequantized_candidates(inv, opts, hw, compute)
    elif opts.precision and P.is_label(opts.precision):
        raise OptionError(f"precision {opts.precision!r} names a pre-quantized checkpoint's stored form, and "
                          f"{inv.model_id} is not pre-quantized; choose one of {', '.join(P.BY_NAME)}",
                          option="precision")
    else:
        candidates = _candidates(opts, hw, compute)
    decisions = [replace(_decide(inv, prec, opts, work, hw, compute), ruled_out=why) for prec, why in candidates]
    decisions = [_with_speed(d, hw, work) for d in decisions]
    chosen = _best(decisions, opts.prefer)
    decisions = tuple(replace(d, rejected_because=_why_not(d, chosen, opts.prefer)) for d in decisions)
    chosen = next((d for d in decisions if chosen is not None and d.precision == chosen.precision), None)
    return Choice(chosen, decisions, compute)


def weights_fraction_for_accelerate(inv: Inventory, prec: Precision, compute: str) -> float:
    """accelerate's size of the weights over their true size at `prec`.

    accelerate (through transformers' quantizer) counts a 4-bit weight as 0.5 byte/element and an
    int8 one as 1, ignoring absmax, code tables and SCB. `max_memory` handed to it must be in its
    units, or it packs more layers on a GPU than the GPU can hold.
    """
    dt = load_dtype(prec, compute)
    if inv.prequantized and not prec.quantized:
        return prequant.accelerate_fraction(inv, prec, dt)
    true = weights_bytes(inv, prec, compute)
    seen = 0
    for t in inv.tensors:
        if prec.quantized and t.quantizable:
            seen += t.numel * (prec.bits / 8)
        else:
            seen += t.numel * DTYPE_BYTES[float_dtype_for(t, dt)]
    return seen / true if true else 1.0
