"""The precisions fitplan plans for, best quality first, and what each one means to bitsandbytes."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Precision:
    """A way to hold the weights. `bits` is None for plain float dtypes."""

    name: str
    bits: int | None = None
    quant_type: str | None = None  # "nf4" | "fp4" for 4-bit
    double_quant: bool = False
    float_dtype: str | None = None  # for unquantized precisions

    @property
    def quantized(self) -> bool:
        return self.bits is not None


FP32 = Precision("fp32", float_dtype="float32")
BF16 = Precision("bf16", float_dtype="bfloat16")
FP16 = Precision("fp16", float_dtype="float16")
INT8 = Precision("int8", bits=8)
NF4 = Precision("nf4", bits=4, quant_type="nf4")
NF4_DQ = Precision("nf4-dq", bits=4, quant_type="nf4", double_quant=True)
FP4 = Precision("fp4", bits=4, quant_type="fp4")
FP4_DQ = Precision("fp4-dq", bits=4, quant_type="fp4", double_quant=True)

#: Quality order used by the policy: the first that fits wins. nf4 is the better 4-bit code for
#: normally distributed weights (QLoRA paper), so it ranks above fp4; double quant trades a little
#: speed for ~0.37 bits/weight and ranks below its single-quant twin.
ALL: tuple[Precision, ...] = (FP32, BF16, FP16, INT8, NF4, NF4_DQ, FP4, FP4_DQ)
BY_NAME = {p.name: p for p in ALL}
#: The names, in quality order: what `precision` and `min_precision` accept.
NAMES: tuple[str, ...] = tuple(BY_NAME)

#: bitsandbytes' CUDA kernels need Maxwell (compute capability 5.0) or newer.
BNB_MIN_CC = (5, 0)

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "float64": 8, "int64": 8, "int32": 4,
               "int16": 2, "int8": 1, "uint8": 1, "bool": 1, "float8_e4m3fn": 1, "float8_e5m2": 1}


def get(name: str) -> Precision:
    from ..errors import OptionError

    if not isinstance(name, str):
        raise OptionError(f"precision must be a name such as 'bf16', got {name!r}; choose one of {', '.join(BY_NAME)}",
                          option="precision")
    try:
        return BY_NAME[name.lower()]
    except KeyError:
        raise OptionError(f"unknown precision {name!r}; choose one of {', '.join(BY_NAME)}",
                          option="precision") from None
