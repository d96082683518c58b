"""The precisions fitplan plans for: names, bytes, quality order, orders per preference, and the
hardware each one needs. Every stage reads them from here; none writes them again."""
from __future__ import annotations

import re
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

#: Orders per preference (`prefer`), on a GPU; fp32 is tried first in each and ruled out unless asked.
#: `speed` ranks by the decode estimate (fitplan.planning.speed); this order, from measured decode
#: throughput (docs/accuracy.md), breaks ties and serves where no estimate exists: 16-bit first,
#: then 4-bit, LLM.int8() last.
ORDERS: dict[str, tuple[str, ...]] = {
    "quality": ("bf16", "fp16", "int8", "nf4", "nf4-dq", "fp4", "fp4-dq"),
    "memory": ("nf4-dq", "fp4-dq", "nf4", "fp4", "int8", "bf16", "fp16"),
    "speed": ("bf16", "fp16", "nf4", "fp4", "nf4-dq", "fp4-dq", "int8"),
}
#: What `prefer` may say.
PREFERENCES: tuple[str, ...] = tuple(ORDERS)
#: The order without a GPU: quality order (bitsandbytes only when asked for).
CPU_ORDER: tuple[str, ...] = NAMES

#: bitsandbytes' CUDA kernels need Maxwell (compute capability 5.0) or newer.
BNB_MIN_CC = (5, 0)
#: bf16 tensor-core math exists from Ampere (compute capability 8.0) on.
BF16_MIN_CC = (8, 0)


def cc_text(cc: tuple[int, int]) -> str:
    """`(8, 0)` -> `8.0`, as compute capabilities are written."""
    return f"{cc[0]}.{cc[1]}"

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


#: The names of a pre-quantized checkpoint's as-stored rows (what `precision` may also say for one;
#: fitplan.model.prequant parses the schemes behind them).
LABEL_PATTERN = r"gptq-int[2348]|awq-int4|fp8|fbgemm-fp8|ct-[a-z0-9]+|bnb-(nf4|fp4)(-dq)?|bnb-int8|mxfp4"


def is_label(name: object) -> bool:
    """Whether `name` can be an as-stored row (so `--precision`/a lock may name it)."""
    return isinstance(name, str) and bool(re.fullmatch(LABEL_PATTERN, name))
