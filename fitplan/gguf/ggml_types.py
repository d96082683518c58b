"""GGUF file types and ggml tensor types: names, byte sizes and quality order, stated once.

A *ggml type* (`Q4_K`, `Q6_K`, `F16`, ...) is how one tensor is stored; its bytes come from
`gguf.GGML_QUANT_SIZES` (block size in elements, bytes per block), the table llama.cpp's own
gguf-py package ships. A *file type* (`Q4_K_M`, `Q8_0`, ...) is a recipe of llama.cpp's quantizer
(`llama-quantize`): a default ggml type plus the rules in `mixes.py` that keep some tensors higher.

Pure data and arithmetic; no file or network access.
"""
from __future__ import annotations

from dataclasses import dataclass
from math import prod

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, LlamaFileType

from ..errors import FileError, OptionError

T = GGMLQuantizationType


@dataclass(frozen=True)
class FileType:
    """One `llama-quantize` recipe. `default` is `llama_ftype_get_default_type` of llama.cpp's
    src/llama-quant.cpp."""

    name: str
    default: GGMLQuantizationType
    ftype: LlamaFileType
    what: str = ""


#: Every recipe fitplan can size, best quality first. `COMMON` (below) picks the rows a plan shows.
#: The order is llama.cpp's own ranking by perplexity (tools/quantize/README.md tables: Q8_0 <
#: Q6_K < Q5_K_M < Q5_K_S < Q4_K_M < Q4_K_S < IQ4_XS < Q4_0 < Q3_K_L < Q3_K_M < Q3_K_S < Q2_K).
FILE_TYPES: tuple[FileType, ...] = (
    FileType("F16", T.F16, LlamaFileType.MOSTLY_F16, what="16-bit, unquantized"),
    FileType("BF16", T.BF16, LlamaFileType.MOSTLY_BF16, what="bfloat16, unquantized"),
    FileType("Q8_0", T.Q8_0, LlamaFileType.MOSTLY_Q8_0, what="8-bit, near lossless"),
    FileType("Q6_K", T.Q6_K, LlamaFileType.MOSTLY_Q6_K, what="6-bit k-quant"),
    FileType("Q5_K_M", T.Q5_K, LlamaFileType.MOSTLY_Q5_K_M, what="5-bit k-quant mix"),
    FileType("Q5_K_S", T.Q5_K, LlamaFileType.MOSTLY_Q5_K_S, what="5-bit k-quant"),
    FileType("Q5_0", T.Q5_0, LlamaFileType.MOSTLY_Q5_0, what="5-bit legacy"),
    FileType("Q4_K_M", T.Q4_K, LlamaFileType.MOSTLY_Q4_K_M, what="4-bit k-quant mix, the usual default"),
    FileType("Q4_K_S", T.Q4_K, LlamaFileType.MOSTLY_Q4_K_S, what="4-bit k-quant"),
    FileType("IQ4_XS", T.IQ4_XS, LlamaFileType.MOSTLY_IQ4_XS, what="4-bit i-quant"),
    FileType("Q4_0", T.Q4_0, LlamaFileType.MOSTLY_Q4_0, what="4-bit legacy"),
    FileType("Q3_K_L", T.Q3_K, LlamaFileType.MOSTLY_Q3_K_L, what="3-bit k-quant mix, large"),
    FileType("Q3_K_M", T.Q3_K, LlamaFileType.MOSTLY_Q3_K_M, what="3-bit k-quant mix"),
    FileType("Q3_K_S", T.Q3_K, LlamaFileType.MOSTLY_Q3_K_S, what="3-bit k-quant"),
    FileType("Q2_K", T.Q2_K, LlamaFileType.MOSTLY_Q2_K, what="2-bit k-quant mix, last resort"),
)

#: The rows a what-if plan shows, best quality first (the order `FILE_TYPES` gives them).
COMMON: tuple[str, ...] = tuple(f.name for f in FILE_TYPES
                                if f.name in {"Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "IQ4_XS", "Q4_0", "Q3_K_M", "Q2_K"})

_BY_NAME = {f.name: f for f in FILE_TYPES}
_BY_FTYPE = {int(f.ftype): f for f in FILE_TYPES}

#: KV cache types llama.cpp accepts for `--cache-type-k/-v` that fitplan plans (`f16` is the default).
KV_TYPES: dict[str, GGMLQuantizationType] = {"f16": T.F16, "bf16": T.BF16, "f32": T.F32, "q8_0": T.Q8_0,
                                             "q4_0": T.Q4_0}


def file_type(name: str) -> FileType:
    """The recipe called `name` (case-insensitive), or an InputError listing the known ones."""
    hit = _BY_NAME.get(str(name).upper())
    if hit is None:
        raise OptionError(f"unknown GGUF type {name!r}: use one of {', '.join(_BY_NAME)}", option="file_type")
    return hit


def quality_rank(name: str) -> int:
    """0 for the best recipe, larger for worse; unknown names (a file's own mix) rank last."""
    order = [f.name for f in FILE_TYPES]
    return order.index(name) if name in order else len(order)


def file_type_name(general_file_type: int | None) -> str | None:
    """The recipe name for a header's `general.file_type`, e.g. 15 -> "Q4_K_M"; None when not set."""
    if general_file_type is None:
        return None
    hit = _BY_FTYPE.get(int(general_file_type))
    if hit is not None:
        return hit.name
    try:
        return LlamaFileType(int(general_file_type)).name.removeprefix("MOSTLY_")
    except ValueError:
        return f"ftype {general_file_type}"


def kv_type(name: str) -> GGMLQuantizationType:
    hit = KV_TYPES.get(str(name).lower())
    if hit is None:
        raise OptionError(f"unknown KV cache type {name!r}: use one of {', '.join(KV_TYPES)}", option="kv_type")
    return hit


def ggml_type(value: int, *, path: str) -> GGMLQuantizationType:
    """The ggml type with this id, or a `FileError` naming `path` (a header naming a type this gguf package
    does not know)."""
    try:
        t = GGMLQuantizationType(int(value))
    except ValueError:
        raise FileError(f"unknown ggml tensor type id {value}: upgrade the gguf package "
                         "(pip install -U gguf)", path=path) from None
    if t not in GGML_QUANT_SIZES:
        raise FileError(f"ggml type {t.name} has no block size in this gguf package: pip install -U gguf", path=path)
    return t


def block_size(t: GGMLQuantizationType) -> int:
    return GGML_QUANT_SIZES[t][0]


def row_bytes(t: GGMLQuantizationType, n: int) -> int:
    """`ggml_row_size`: bytes of `n` consecutive elements of type `t` (n a multiple of the block size,
    else a ValueError: the caller says whose fault it is, a file's or an option's)."""
    block, size = GGML_QUANT_SIZES[t]
    if n % block:
        raise ValueError(f"a row of {n} elements cannot be stored as {t.name} (blocks of {block})")
    return n // block * size


def tensor_bytes(t: GGMLQuantizationType, shape: tuple[int, ...]) -> int:
    """`ggml_nbytes` of a contiguous tensor. `shape` is in ggml order: `shape[0]` (ne0) is the row length."""
    if not shape:
        return row_bytes(t, 1)
    return row_bytes(t, shape[0]) * prod(shape[1:])


def bits_per_weight(t: GGMLQuantizationType) -> float:
    block, size = GGML_QUANT_SIZES[t]
    return 8 * size / block
