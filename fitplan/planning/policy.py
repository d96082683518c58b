"""Choose the precision and placement: the best quality that fits with headroom, and why not the others.

Pure: an `Inventory`, a `Hardware` and `PlanOptions` in; `Decision`s out. For each precision it
tries the single GPU with the most free memory, then a split over all GPUs (whole decoder layers
per GPU, as accelerate places them), then, only when allowed, CPU offload within the RAM there is.
A decision says whether that precision fits in memory and nothing else; `choose` then rules out,
ranks and picks: every plan that keeps all layers on GPUs before any offloaded one, offloaded
plans by the bytes they copy over PCIe each step.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from ..vocab import precision as P
from .estimate import Estimate, Sizes, load_dtype, sizes, weights_bytes
from .workload import Workload
from ..hardware.machine import Hardware
from ..errors import OptionError
from . import prequant
from ..options import PlanOptions
from ..model.inventory import Inventory
from ..model.prequant import scheme
from .headroom import headroom_bytes
from .layout import float_dtype_for
from ..vocab.precision import BF16_MIN_CC, BNB_MIN_CC, DTYPE_BYTES, Precision, cc_text
from .speed import Speed, decode_speed, pcie_seconds
from . import generation as G
from ..vocab.units import fmt_bytes

@dataclass(frozen=True)
class DeviceShare:
    """What one device is planned to hold. `device` is a CUDA index or "cpu". `staging_bytes`: on the
    GPU that runs offloaded layers, the largest module of them, copied in for its forward."""

    device: int | str
    weights_bytes: int
    kv_cache_bytes: int
    activation_bytes: int
    overhead_bytes: int
    budget_bytes: int  # what may be used on it: free memory (or RAM) less headroom
    layers: tuple[int, ...] = ()
    staging_bytes: int = 0

    @property
    def total_bytes(self) -> int:
        return (self.weights_bytes + self.kv_cache_bytes + self.activation_bytes + self.overhead_bytes
                + self.staging_bytes)

    def to_dict(self) -> dict:
        return {"device": self.device, "weights_bytes": self.weights_bytes,
                "kv_cache_bytes": self.kv_cache_bytes, "activation_bytes": self.activation_bytes,
                "overhead_bytes": self.overhead_bytes, "staging_bytes": self.staging_bytes,
                "total_bytes": self.total_bytes, "budget_bytes": self.budget_bytes,
                "layers": [min(self.layers), max(self.layers)] if self.layers else []}


@dataclass(frozen=True)
class Decision:
    """One precision considered. `fits` and `reason`: whether it fits in memory on this hardware, and
    why (not); nothing else. `ruled_out`: why it is no candidate whatever its size; `rejected_because`
    (set by `choose`): why it was not chosen, None for the chosen one."""

    precision: str
    estimate: Estimate
    fits: bool
    reason: str
    placement: tuple[DeviceShare, ...] = field(default_factory=tuple)
    offload_bytes: int = 0  # weights in CPU RAM, as they sit there, copied to the GPU every step
    speed: Speed | None = None
    sizes: Sizes | None = field(default=None, repr=False, compare=False)  # what the decision was made from
    generation: Any = None  # how it generates (fitplan.planning.generation.Generation), sized into its estimate
    ruled_out: str | None = None
    rejected_because: str | None = None

    @property
    def candidate(self) -> bool:
        return self.fits and self.ruled_out is None


def compute_dtype_for(hw: Hardware) -> str:
    """bf16 where every GPU has it (`BF16_MIN_CC`), else fp16; bf16 on the CPU."""
    if hw.gpus and not all(g.supports_bf16 for g in hw.gpus):
        return "float16"
    return "bfloat16"




def cpu_budget(hw: Hardware, opts: PlanOptions) -> int:
    """CPU RAM a plan may use: the machine's RAM less the headroom."""
    return max(hw.cpu_ram_bytes - headroom_bytes(hw.cpu_ram_bytes, opts.headroom), 0)


def _place_layers(sz: Sizes, opts: PlanOptions, gpus, first_kv: int = 0,
                  first_staging: int = 0) -> tuple[tuple[DeviceShare, ...], tuple[int, ...]] | None:
    """Fill `gpus` in order with whole decoder layers; returns (shares, layers left over) or None.

    Every GPU pays its CUDA context, the allocator's fixed reserve and the activation peak (hidden
    states pass through each); the first holds what sits outside the layers (embeddings, norm,
    lm_head: accelerate keeps tied weights together), each holds the KV cache of its own layers.
    Its reserve is `Sizes.overhead` over its own share, so one GPU holding everything is exactly
    the whole-model estimate. `first_kv` and `first_staging` are what the first GPU also holds for
    offloaded layers, which run there: their KV cache and the largest module copied in. Reads the
    sizes the estimate was made from; computes none.
    """
    layers, act = sz.layer_weights, sz.activation
    shares, i = [], 0
    for n, g in enumerate(gpus):
        budget = g.free_bytes - headroom_bytes(g.total_bytes, opts.headroom)
        w = sz.outside_weights if n == 0 else 0
        k = first_kv if n == 0 else 0
        staged = first_staging if n == 0 else 0
        taken = []
        if w + k + staged + act + sz.overhead(w, k + staged) > budget:
            return None if n == 0 else (tuple(shares), tuple(li for li, _ in layers[i:]))
        while i < len(layers):
            li, lw = layers[i]
            w2, k2 = w + lw, k + sz.kv_of(li)
            if w2 + k2 + staged + act + sz.overhead(w2, k2 + staged) > budget:
                break
            w, k = w2, k2
            taken.append(li)
            i += 1
        shares.append(DeviceShare(g.index, w, k, act, sz.overhead(w, k + staged), budget, tuple(taken), staged))
    return tuple(shares), tuple(li for li, _ in layers[i:])


def _place_offloaded(sz: Sizes, opts: PlanOptions, gpus):
    """Layers on `gpus` as `_place_layers` fills them, the rest in CPU RAM: (shares, layers left over),
    or (None, (kv, staging)) when the first GPU cannot hold what the offloaded layers need there.

    The layers left over run on the first GPU (accelerate's execution device), so it also holds
    their KV cache and stages their largest module; each round reserves that for the layers the
    last round left over, until the layers left over need no more than was reserved.
    """
    kv = staging = 0
    while True:
        placed = _place_layers(sz, opts, gpus, kv, staging)
        if placed is None:
            return None, (kv, staging)
        shares, rest = placed
        need_kv = sum(sz.kv_of(li) for li in rest)
        need_staging = max((sz.stream_of(li) for li in rest), default=0)
        if need_kv <= kv and need_staging <= staging:
            return shares, rest
        kv, staging = max(kv, need_kv), max(staging, need_staging)


def _offload(sz: Sizes, est: Estimate, opts: PlanOptions, hw: Hardware, gpus, why: str) -> Decision:
    """The decision when the GPUs alone cannot hold `sz` and offload is allowed: fits only if the
    first GPU can run the offloaded layers and they fit, as they sit in CPU RAM (unquantized), in
    the RAM usable."""
    shares, rest = _place_offloaded(sz, opts, gpus)
    if shares is None:
        kv, staging = rest
        if not kv and not staging:
            return Decision(sz.precision, est, False, f"{why}; offloading does not help: GPU {gpus[0].index} cannot "
                            "hold even what sits outside the decoder layers")
        return Decision(sz.precision, est, False, f"{why}; offloading does not help: offloaded layers run on GPU "
                        f"{gpus[0].index}, which cannot also hold their KV cache ({fmt_bytes(kv)}) and the largest "
                        f"module copied in ({fmt_bytes(staging)})")
    cpu = sum(sz.float_of(li) for li in rest)
    budget = cpu_budget(hw, opts)
    placement = tuple(s for s in shares if s.layers or s.weights_bytes) + (
        DeviceShare("cpu", cpu, 0, 0, 0, budget, rest),)
    unquantized = " unquantized" if sz.quantized else ""
    what = f"offloading {len(rest)} of {len(sz.layer_weights)} layers to CPU RAM needs {fmt_bytes(cpu)}{unquantized}"
    if cpu > budget:
        return Decision(sz.precision, est, False, f"{why}; {what}, {fmt_bytes(cpu - budget)} more than the "
                        f"{fmt_bytes(budget)} of RAM usable (offload is to CPU RAM only)", placement, cpu)
    ceiling = opts.batch / pcie_seconds(cpu)
    return Decision(sz.precision, est, True, f"{why}; {what}, copied to GPU {shares[0].device} every step: "
                    f"at most {ceiling:.1f} tokens/s over PCIe", placement, cpu, sizes=sz)


def _decide(inv: Inventory, prec: Precision, opts: PlanOptions, work: Workload, hw: Hardware,
            compute: str) -> Decision:
    """Whether `prec` fits in memory on `hw` for `work` (offloading only if `opts.offload`), where, how it
    generates (fitplan.planning.generation: the setup is sized into the estimate), and why."""

    def setup(placement: str):
        gen = G.choose(inv, prec, work, gpus=hw.gpus, placement=placement, fast=opts.fast, compute_dtype=compute)
        return gen, sizes(inv, prec, work, compute, "cuda" if hw.gpus else "cpu", allocator=hw.allocator,
                          generation=gen)

    d = _decide_placed(prec, opts, hw, setup)
    if d.offload_bytes:  # offloaded: transformers compiles no such model
        d = replace(d, generation=setup("offload")[0])
    return d if d.generation is not None else replace(d, generation=setup("split" if d.fits else "no-fit")[0])


def _decide_placed(prec: Precision, opts: PlanOptions, hw: Hardware, setup) -> Decision:
    if not hw.gpus:
        gen, sz = setup("cpu")
        est = sz.estimate()
        budget = cpu_budget(hw, opts)
        fits = est.total_bytes <= budget
        share = DeviceShare("cpu", est.weights_bytes, est.kv_cache_bytes, est.activation_bytes, 0, budget)
        why = (f"fits in CPU RAM ({fmt_bytes(est.total_bytes)} of {fmt_bytes(budget)} usable)" if fits else
               f"needs {fmt_bytes(est.total_bytes)}, {fmt_bytes(est.total_bytes - budget)} more than the "
               f"{fmt_bytes(budget)} of RAM usable")
        return Decision(prec.name, est, fits, why, (share,), generation=gen)
    best = max(hw.gpus, key=lambda g: g.free_bytes)
    gen, sz = setup("one-gpu")
    one = _place_layers(sz, opts, [best])
    if gen.static and not (one and not one[1]):  # without the static setup's workspace it may still fit
        gen, sz = setup("no-room")
        one = _place_layers(sz, opts, [best])
    est = sz.estimate()
    if one and not one[1]:
        s = one[0][0]
        return Decision(prec.name, est, True,
                        f"fits on GPU {best.index} ({fmt_bytes(s.total_bytes)} of {fmt_bytes(s.budget_bytes)} usable)",
                        one[0], sizes=sz, generation=gen)
    # a split or an offload generates plainly; without offload allowed, one GPU that cannot hold it is no fit
    gen, sz = setup("split" if len(hw.gpus) > 1 else "offload" if opts.offload else "no-fit")
    est = sz.estimate()
    budget_one = best.free_bytes - headroom_bytes(best.total_bytes, opts.headroom)
    if len(hw.gpus) > 1:
        split = _place_layers(sz, opts, list(hw.gpus))
        if split and not split[1]:
            used = tuple(s for s in split[0] if s.layers or s.weights_bytes)
            return Decision(prec.name, est, True,
                            f"fits split over {len(used)} GPUs ({', '.join(fmt_bytes(s.total_bytes) for s in used)})",
                            used, sizes=sz, generation=gen)
        rest = set(split[1]) if split else set()
        left = sum(b for li, b in sz.layer_weights if li in rest) if split else est.weights_bytes
        why = (f"needs {fmt_bytes(est.total_bytes)}; over all {len(hw.gpus)} GPUs "
               f"{fmt_bytes(left)} of weights find no room")
        return _offload(sz, est, opts, hw, list(hw.gpus), why) if opts.offload else Decision(prec.name, est, False, why)
    why = (f"needs {fmt_bytes(est.total_bytes)} on GPU {best.index}, {fmt_bytes(max(est.total_bytes - budget_one, 0))} "
           f"more than the {fmt_bytes(budget_one)} usable")
    return _offload(sz, est, opts, hw, [best], why) if opts.offload else Decision(prec.name, est, False, why)


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
