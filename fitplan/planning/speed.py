"""Decode speed of plain `generate()` for a placement: tokens/s for the planned batch.

Pure: `Sizes`, a placement and the GPUs in; a `Speed` out. One token step of every sequence costs

    step = layers x overhead(precision)                  the generation loop and its kernels
         + sum over GPUs of bytes read there / its bandwidth   weights and KV cache, once a step
         + bytes copied from CPU RAM / PCIe rate          offloaded layers, copied every step

and yields `batch` tokens, for the generation setup the plan loads with (`Sizes.generation`): a
compiled static-cache decode has its own measured overhead (calibration.COMPILED_DECODE_OVERHEAD_S_PER_LAYER)
and reads its whole static cache every step. The overhead per layer was measured on an H100
(calibration.DECODE_OVERHEAD_S_PER_LAYER); at batch 1 it, not bandwidth, sets the speed of a 7B
model there (docs/accuracy.md, "Speed"). Bytes read: every weight on the GPU (the embedding table
too, a small over-count), the KV cache of its layers at the full context (the last, slowest step),
and under 4-bit with more than one row the dequantized copy written and read
(calibration.DEQUANT_COPIES). Stages run one after another: a split over GPUs adds, never overlaps.

A setup that was never measured gets no tokens/s rather than a guess (`unmeasured`): layers offloaded to
the CPU (the PCIe ceiling stays: it is a bound, not an estimate), a split over GPUs, an attention kernel other
than SDPA (flash-attention 2, eager), routed experts (MoE), a GPU without a bandwidth; `Speed.no_estimate`
says which.
"""
from __future__ import annotations

from dataclasses import dataclass

from .. import calibration as C
from .estimate import Sizes


@dataclass(frozen=True)
class Speed:
    """Decode estimate for one placement. `tokens_per_s` counts every sequence of the batch;
    None where a GPU's memory bandwidth is unknown (then only the PCIe ceiling is known)."""

    batch: int
    tokens_per_s: float | None
    overhead_s: float  # per step
    read_bytes: int  # read from GPU memory per step, all GPUs
    memory_s: float | None  # per step, those bytes over each GPU's bandwidth
    pcie_bytes: int  # copied from CPU RAM to the GPU per step (offloaded layers), 0 without offload
    pcie_s: float  # per step
    no_estimate: str | None = None  # why tokens_per_s is None: the setup was never measured (`unmeasured`)

    @property
    def pcie_ceiling(self) -> float | None:
        """Tokens/s the PCIe copies alone allow (offloaded plans); None without offload."""
        return self.batch / self.pcie_s if self.pcie_bytes else None

    @property
    def bound(self) -> str:
        """What sets the speed: the largest term of a step."""
        terms = {"generation loop overhead": self.overhead_s, "GPU memory bandwidth": self.memory_s or 0.0,
                 "PCIe copies of offloaded layers": self.pcie_s}
        return max(terms, key=terms.get)

    def to_dict(self) -> dict:
        return {"decode_tokens_per_s": None if self.tokens_per_s is None else round(self.tokens_per_s, 2),
                "batch": self.batch, "overhead_s": round(self.overhead_s, 6), "read_bytes": self.read_bytes,
                "memory_s": None if self.memory_s is None else round(self.memory_s, 6),
                "pcie_bytes": self.pcie_bytes, "pcie_s": round(self.pcie_s, 6),
                "pcie_ceiling_tokens_per_s": None if self.pcie_ceiling is None else round(self.pcie_ceiling, 2),
                "bound": self.bound, "no_estimate": self.no_estimate}


def overhead_kind(sz: Sizes) -> str:
    """The key of calibration.DECODE_OVERHEAD_S_PER_LAYER: float dtypes share one; a kernel never
    measured (a pre-quantized checkpoint's GPTQ, AWQ, fp8, ...) has none."""
    return "float" if not sz.quantized else sz.precision


def unmeasured(sz: Sizes, placement) -> str | None:
    """Why decoding `sz` placed as `placement` is a setup never measured (docs/accuracy.md, "Speed"), or None:
    the overheads were measured on dense models on one GPU, every layer on it, with SDPA attention."""
    if any(s.device == "cpu" for s in placement):
        return ("offloaded layers: a decode with layers on the CPU was never measured (the PCIe ceiling is a bound, "
                "not an estimate)")
    if len({s.device for s in placement}) > 1:
        return "split over GPUs: a decode split over GPUs was never measured"
    attn = sz.generation.attn_implementation if sz.generation is not None else "sdpa"
    if attn != "sdpa":
        return f"{attn} attention: a decode with it was never measured (the overheads are SDPA's)"
    if sz.moe:
        return ("routed experts: a decode of a mixture-of-experts model was never measured (the overheads are dense "
                "models')")
    return None


def pcie_seconds(nbytes: int) -> float:
    return nbytes / C.PCIE_BYTES_PER_S


def decode_speed(sz: Sizes, placement, gpus, batch: int) -> Speed | None:
    """The decode estimate of `sz` placed as `placement` (DeviceShares) on `gpus` (GPU objects);
    None for a placement without a GPU (no CPU speed model)."""
    by_index = {g.index: g for g in gpus}
    on_gpus = [s for s in placement if s.device != "cpu"]
    if not on_gpus:
        return None
    offloaded = [li for s in placement if s.device == "cpu" for li in s.layers]
    pcie = sum(sz.float_of(li) for li in offloaded)
    kind = overhead_kind(sz)
    compiled = sz.generation is not None and sz.generation.key == "compiled"
    table = C.COMPILED_DECODE_OVERHEAD_S_PER_LAYER if compiled else C.DECODE_OVERHEAD_S_PER_LAYER
    if kind not in table:
        return None  # no measured per-token overhead for this kernel and setup: no estimate rather than a guess
    dequant = sz.bits == 4 and batch > 1
    read, memory_s = 0, 0.0
    for n, s in enumerate(on_gpus):
        nbytes = s.weights_bytes + s.kv_cache_bytes
        if dequant:
            nbytes += C.DEQUANT_COPIES * sum(sz.float_of(li) for li in s.layers)
        if n == 0:
            nbytes += pcie  # offloaded layers run on the first GPU, from the copy
        read += nbytes
        bw = by_index[s.device].bandwidth_gbs if s.device in by_index else None
        memory_s = None if memory_s is None or not bw else memory_s + nbytes / (bw * 1e9)
    overhead = len(sz.layer_weights) * table[kind]
    why = unmeasured(sz, placement)
    if why is None and memory_s is None:
        no_bw = next(s.device for s in on_gpus if not (s.device in by_index and by_index[s.device].bandwidth_gbs))
        why = f"GPU {no_bw} has no memory bandwidth (catalogue `bandwidth_gbs`, or a hardware file's)"
    step = None if why else overhead + memory_s + pcie_seconds(pcie)
    return Speed(batch, None if step is None else batch / step, overhead, read, memory_s, pcie, pcie_seconds(pcie),
                 why)
