"""Bytes of one tensor as the loaded model holds it, per precision: bitsandbytes' real layout.

Measured on bitsandbytes 0.50 (see docs/estimate.md and tests/test_weights_real.py):
- 4-bit (nf4 and fp4 alike): the weight packed two to a byte in uint8, one fp32 absmax per
  64-weight block, and the 16-entry fp32 code table of the quant state.
- 4-bit with double quant: the absmax become uint8 codes, plus a nested state per 256 blocks
  (fp32 absmax), a 256-entry fp32 code table and an fp32 offset.
- 8-bit (LLM.int8()): int8 weight plus one fp32 scale (SCB) per output row.
- Everything bitsandbytes does not replace keeps its float dtype.
"""
from __future__ import annotations

from math import ceil

from ..model.inventory import Inventory, TensorInfo
from ..vocab.precision import DTYPE_BYTES, Precision
from ..vocab.units import align

BLOCKSIZE_4BIT = 64
NESTED_BLOCKSIZE = 256
CODE_4BIT_ENTRIES = 16
CODE_NESTED_ENTRIES = 256


def quant4_parts(numel: int, double_quant: bool) -> list[int]:
    """Byte sizes of each allocation a 4-bit weight of `numel` elements makes."""
    blocks = ceil(numel / BLOCKSIZE_4BIT)
    parts = [ceil(numel / 2), CODE_4BIT_ENTRIES * 4]
    if double_quant:
        parts += [blocks, ceil(blocks / NESTED_BLOCKSIZE) * 4, CODE_NESTED_ENTRIES * 4, 4]
    else:
        parts.append(blocks * 4)
    return parts


def float_dtype_for(t: TensorInfo, load_dtype: str) -> str:
    """The dtype an unquantized tensor ends up in when the model is loaded with `dtype=load_dtype`."""
    if t.dtype is not None:
        return t.dtype
    if t.keep_fp32 == "always" and load_dtype in ("float16", "bfloat16"):
        return "float32"
    if t.keep_fp32 == "fp16" and load_dtype == "float16":
        return "float32"
    return load_dtype


def tensor_bytes(t: TensorInfo, precision: Precision, load_dtype: str, alignment: int = 1) -> int:
    """Bytes `t` occupies. `alignment` rounds each allocation as the CUDA caching allocator does (512)."""
    if precision.quantized and t.quantizable:
        if precision.bits == 4:
            return sum(align(p, alignment) for p in quant4_parts(t.numel, precision.double_quant))
        rows = t.out_features or t.shape[0]
        return align(t.numel, alignment) + align(rows * 4, alignment)
    return align(t.numel * DTYPE_BYTES[float_dtype_for(t, load_dtype)], alignment)


def per_tensor(inv: Inventory, precision: Precision, load_dtype: str, alignment: int = 1,
               held: dict[str, int] | None = None) -> tuple[tuple[int, int], ...]:
    """For each tensor of `inv`, in order: (bytes at `precision`, bytes unquantized at `load_dtype`, unaligned:
    what it holds in CPU RAM when offloaded). The first comes from `held` where given (a pre-quantized
    checkpoint as stored, fitplan.planning.prequant), else from `tensor_bytes`."""
    return tuple((held[t.name] if held is not None else tensor_bytes(t, precision, load_dtype, alignment),
                  t.numel * DTYPE_BYTES[float_dtype_for(t, load_dtype)]) for t in inv.tensors)
