"""Placement: which device holds which decoder layers of one precision, as accelerate places them, and whether
that fits in memory with headroom. Pure: `Sizes` in (fitplan.planning.estimate), a `Decision` out; the policy
(`policy.py`) asks it once per precision and ranks what comes back."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..hardware.machine import Hardware
from ..options import PlanOptions
from ..vocab.precision import Precision
from ..vocab.units import fmt_bytes
from .estimate import Estimate, Sizes
from .headroom import headroom_bytes
from .speed import Speed, pcie_seconds


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


def cpu_budget(hw: Hardware, opts: PlanOptions) -> int:
    """CPU RAM a plan may use: the machine's RAM less the headroom."""
    return max(hw.cpu_ram_bytes - headroom_bytes(hw.cpu_ram_bytes, opts.headroom), 0)


def place_layers(sz: Sizes, opts: PlanOptions, gpus, first_kv: int = 0,
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
    """Layers on `gpus` as `place_layers` fills them, the rest in CPU RAM: (shares, layers left over),
    or (None, (kv, staging)) when the first GPU cannot hold what the offloaded layers need there.

    The layers left over run on the first GPU (accelerate's execution device), so it also holds
    their KV cache and stages their largest module; each round reserves that for the layers the
    last round left over, until the layers left over need no more than was reserved.
    """
    kv = staging = 0
    while True:
        placed = place_layers(sz, opts, gpus, kv, staging)
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


def place(prec: Precision, opts: PlanOptions, hw: Hardware, setup) -> Decision:
    """Whether `prec` fits in memory on `hw` and where: on the one GPU with the most free memory, split over all
    GPUs (whole decoder layers per GPU, as accelerate places them), then, only if `opts.offload`, with layers in
    CPU RAM. `setup(placement)` gives the generation setup for that placement ("cpu", "one-gpu", "no-room",
    "split", "offload", "no-fit"; fitplan.planning.generation) and the `Sizes` made with it: the placement reads
    sizes, it computes none."""
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
    one = place_layers(sz, opts, [best])
    if gen.static and not (one and not one[1]):  # without the static setup's workspace it may still fit
        gen, sz = setup("no-room")
        one = place_layers(sz, opts, [best])
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
        split = place_layers(sz, opts, list(hw.gpus))
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
