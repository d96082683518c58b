"""Pre-quantized checkpoints, the model stage's part: which scheme a `quantization_config` describes.

A config.json with a `quantization_config` (GPTQ, AWQ, fp8, fbgemm fp8, compressed-tensors,
bitsandbytes-serialized, mxfp4) is loaded as it was quantized, by transformers' quantizer for that
method; fitplan never re-quantizes it. Here:

- `scheme_of()`: the `Scheme` (method, the as-stored row's label, groups of modules quantized alike),
  pure, one parser per method (`PARSERS`).

Which weights the method converts is read off the meta model in `fitplan.model.hf` (`mark_converted`,
`CONVERTS`: the functions transformers' quantizers call themselves, `get_modules_to_not_convert` and
`should_convert_module`, and each method's module rule). What the loader then holds for each converted
weight, and on which hardware it keeps the stored form, is planning's (`fitplan.planning.prequant`,
`LAYOUTS`). The three tables have the same keys (a test holds them together).

Read from transformers 5.24 (`quantizers/quantizer_*.py`, `integrations/*.py`), optimum at
83c88b8 (`optimum/gptq`: which layers GPTQ converts) and compressed-tensors at ac8e2ba (matching).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable

from ..errors import ConfigError, UnsupportedModelError
from ..vocab import precision as P
from .inventory import Inventory


# -- the scheme a quantization_config describes --------------------------------------------------------

@dataclass(frozen=True)
class Group:
    """One set of modules quantized the same way (compressed-tensors has several; other methods one).

    `bits` per weight; `kind` "int" or "float"; `group_size` weights per scale along the input
    (None: one scale per output row, 0: one per tensor); `block` (rows, columns) per scale for
    block-wise fp8; `zero_points`: asymmetric, zero points stored; `static_input`: a stored
    activation scale; `fmt` the packing (GPTQ "gptq", AWQ "gemm"/"gemv", compressed-tensors'
    format, fp8 scale format); `targets` compressed-tensors' module targets (class names, or
    `re:` regexes on module names).
    """

    bits: int
    kind: str = "int"
    group_size: int | None = None
    block: tuple[int, int] | None = None
    zero_points: bool = False
    static_input: bool = False
    fmt: str = ""
    targets: tuple[str, ...] = ()


@dataclass(frozen=True)
class Scheme:
    """A checkpoint's `quantization_config`, as transformers' quantizer for `method` reads it.

    `label` names the as-stored row (`gptq-int4`, `fp8`, `mxfp4`, ...). `skip` is the config's own
    list of modules left alone (`modules_to_not_convert`, `ignore`, `llm_int8_skip_modules`), None
    when it gives none. `blocks` and `in_blocks` are GPTQ's `block_name_to_quantize` and
    `modules_in_block_to_quantize`. `dequantize`: the config asks transformers to dequantize at
    load. `known`: fitplan knows this method's layout; an unknown method is sized only from
    stored headers.
    """

    method: str
    label: str
    groups: tuple[Group, ...] = ()
    skip: tuple[str, ...] | None = None
    blocks: tuple[str, ...] = ()
    in_blocks: tuple[str, ...] = ()
    dequantize: bool = False
    known: bool = True


def _get(qc: dict, *keys, default=None):
    for k in keys:
        if qc.get(k) is not None:
            return qc[k]
    return default


def _int(qc: dict, what: str, value, allowed: tuple[int, ...] | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or (allowed and value not in allowed):
        choice = f" (one of {', '.join(map(str, allowed))})" if allowed else ""
        raise ConfigError(f"config.json: quantization_config.{what} must be a whole number{choice}, got {value!r:.40}",
                          key=f"quantization_config.{what}")
    return value


def _names(qc: dict, key: str) -> tuple[str, ...] | None:
    value = qc.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"config.json: quantization_config.{key} must be a list of module names, got {value!r:.60}",
                          key=f"quantization_config.{key}")
    return tuple(value)


def _group_size(qc: dict, value) -> int | None:
    g = _int(qc, "group_size", value)
    if g == -1:
        return None
    if g <= 0:
        raise ConfigError(f"config.json: quantization_config.group_size must be positive or -1, got {g}",
                          key="quantization_config.group_size")
    return g


def _gptq(qc: dict) -> Scheme:
    bits = _int(qc, "bits", qc.get("bits", 4), (2, 3, 4, 8))
    fmt = str(_get(qc, "checkpoint_format", "format", default="gptq")).lower()
    if fmt not in ("gptq", "gptq_v2"):
        raise UnsupportedModelError(f"GPTQ checkpoint_format {fmt!r:.30} has a packing fitplan does not know; "
                                    "it plans 'gptq' and 'gptq_v2'", model_type=None)
    blocks = qc.get("block_name_to_quantize")
    blocks = (blocks,) if isinstance(blocks, str) else tuple(blocks or ())
    in_blocks = qc.get("modules_in_block_to_quantize") or ()
    flat = tuple(n for part in in_blocks for n in (part if isinstance(part, list) else [part]))
    group = Group(bits, group_size=_group_size(qc, qc.get("group_size", 128)), zero_points=True, fmt=fmt)
    return Scheme("gptq", f"gptq-int{bits}", (group,), blocks=blocks, in_blocks=flat)


def _awq(qc: dict) -> Scheme:
    bits = _int(qc, "bits", _get(qc, "bits", "w_bit", default=4), (4,))
    fmt = str(_get(qc, "version", "format", default="gemm")).lower()
    if fmt not in ("gemm", "gemv"):
        raise UnsupportedModelError(f"AWQ format {fmt!r:.30} has a packing fitplan does not know; it plans "
                                    "'gemm' and 'gemv'", model_type=None)
    group = Group(bits, group_size=_group_size(qc, _get(qc, "group_size", "q_group_size", default=128)),
                  zero_points=bool(qc.get("zero_point", True)), fmt=fmt)
    return Scheme("awq", f"awq-int{bits}", (group,), skip=_names(qc, "modules_to_not_convert"))


def _fp8(qc: dict) -> Scheme:
    block = qc.get("weight_block_size")
    if block is not None:
        if not (isinstance(block, list) and len(block) == 2):
            raise ConfigError(f"config.json: quantization_config.weight_block_size must be [rows, columns], got "
                             f"{block!r:.40}", key="quantization_config.weight_block_size")
        block = (_int(qc, "weight_block_size", block[0]), _int(qc, "weight_block_size", block[1]))
    if qc.get("expert_dtype", "fp8") != "fp8":
        raise UnsupportedModelError(f"fp8 checkpoints with expert_dtype {qc.get('expert_dtype')!r:.20} have a layout "
                                    "fitplan does not know", model_type=None)
    group = Group(8, "float", block=block, static_input=qc.get("activation_scheme") == "static",
                  fmt=str(qc.get("scale_fmt") or "float"))
    return Scheme("fp8", "fp8", (group,), skip=_names(qc, "modules_to_not_convert"),
                  dequantize=bool(qc.get("dequantize")))


def _fbgemm_fp8(qc: dict) -> Scheme:
    return Scheme("fbgemm_fp8", "fbgemm-fp8", (Group(8, "float"),), skip=_names(qc, "modules_to_not_convert"))


def _bitsandbytes(qc: dict) -> Scheme:
    if qc.get("load_in_4bit"):
        kind = str(qc.get("bnb_4bit_quant_type") or "fp4")
        if kind not in ("nf4", "fp4"):
            raise ConfigError(f"config.json: quantization_config.bnb_4bit_quant_type must be nf4 or fp4, got {kind!r:.20}",
                              key="quantization_config.bnb_4bit_quant_type")
        name = kind + ("-dq" if qc.get("bnb_4bit_use_double_quant") else "")
    elif qc.get("load_in_8bit"):
        name = "int8"
    else:
        raise ConfigError("config.json: a bitsandbytes quantization_config needs load_in_4bit or load_in_8bit",
                          key="quantization_config.load_in_4bit")
    return Scheme("bitsandbytes", f"bnb-{name}", (Group(P.get(name).bits),),
                  skip=_names(qc, "llm_int8_skip_modules"))


def _mxfp4(qc: dict) -> Scheme:
    return Scheme("mxfp4", "mxfp4", (Group(4, "float", group_size=32),), skip=_names(qc, "modules_to_not_convert"),
                  dequantize=bool(qc.get("dequantize")))


#: compressed-tensors formats whose packed layout `_ct_layout` knows.
CT_FORMATS = ("pack-quantized", "float-quantized", "naive-quantized", "int-quantized", "nvfp4-pack-quantized",
              "dense")


def _ct_group(name: str, g: dict, default_fmt: str) -> Group | None:
    w = g.get("weights") if isinstance(g, dict) else None
    if not isinstance(w, dict):
        return None  # activation-only group: the weights stay dense
    bits = _int(w, f"config_groups.{name}.weights.num_bits", w.get("num_bits"))
    strategy = w.get("strategy") or "tensor"
    size = {"group": w.get("group_size"), "tensor_group": w.get("group_size"), "channel": None, "tensor": 0,
            "block": None}.get(strategy, -1)
    if size == -1:
        raise UnsupportedModelError(f"compressed-tensors weight strategy {strategy!r:.20} has a layout fitplan does "
                                    "not know", model_type=None)
    block = tuple(w["block_structure"]) if strategy == "block" and w.get("block_structure") else None
    fmt = str(g.get("format") or default_fmt)
    if fmt not in CT_FORMATS:
        raise UnsupportedModelError(f"compressed-tensors format {fmt!r:.30} has a layout fitplan does not know; it "
                                    f"plans {', '.join(CT_FORMATS)}", model_type=None)
    acts = g.get("input_activations")
    targets = g.get("targets") or []
    return Group(bits, str(w.get("type") or "int"), size, block, zero_points=not w.get("symmetric", True),
                 static_input=isinstance(acts, dict) and not acts.get("dynamic", False),
                 fmt=fmt, targets=tuple(str(t) for t in targets))


def _compressed_tensors(qc: dict) -> Scheme:
    groups = qc.get("config_groups") or {}
    if not isinstance(groups, dict):
        raise ConfigError("config.json: quantization_config.config_groups must be an object",
                          key="quantization_config.config_groups")
    fmt = str(qc.get("format") or "dense")
    parsed = tuple(x for x in (_ct_group(k, v, fmt) for k, v in groups.items()) if x is not None)
    first = parsed[0] if parsed else Group(16)
    kind = {("int", 4): "int4", ("int", 8): "int8", ("float", 8): "fp8", ("float", 4): "fp4"}.get(
        (first.kind, first.bits), f"{first.kind}{first.bits}")
    return Scheme("compressed-tensors", f"ct-{kind}", parsed, skip=_names(qc, "ignore"),
                  dequantize=bool(qc.get("dequantize") or qc.get("run_compressed") is False))


#: compressed-tensors formats that store each weight as one element: fp8 or int8 (`float-`, `int-quantized`, and
#: `naive-quantized`, one int8 a weight whatever its bits), or the weight unpacked (`dense`).
CT_UNPACKED = ("float-quantized", "naive-quantized", "int-quantized", "dense")


def stores_each_weight(s: Scheme) -> bool:
    """Whether the checkpoint stores every weight the method converts as one element, with at most one scale per
    output row, per block or per tensor: fp8 and fbgemm fp8, bitsandbytes int8 (`SCB`, one a row), and
    compressed-tensors in an unpacked format with channel, block or tensor scales. Its stored element count is
    then the float model's plus those scales (1/hidden of the converted weights or less; fp8's 128x128 blocks
    1/16384), so it tells whether the checkpoint stores tied weights apart as a float checkpoint's does
    (`fitplan.model.hf.tied_apart`; the meta build is the float model, its weights unconverted).

    Not for the packed methods, whose count is a fraction of the float model's and so closer to it without the
    tied weights even where the checkpoint stores them: GPTQ and AWQ (int32 words of 32/bits codes), mxfp4 and
    bitsandbytes 4-bit (two codes a byte), compressed-tensors' pack-quantized and nvfp4; nor for group-wise
    scales (one per 32 .. 128 weights, zero points as many again), which can outnumber half a tied embedding
    matrix (24B parameters at one scale per 32 weights: 0.7 billion, against half of a 131,072 x 5,120 lm_head:
    0.34 billion). A method fitplan does not know is not counted either."""
    if s.method in ("fp8", "fbgemm_fp8"):
        return True
    if s.method == "bitsandbytes":
        return s.label == "bnb-int8"
    if s.method == "compressed-tensors":
        return all(g.fmt in CT_UNPACKED and not g.group_size for g in s.groups)  # 0: per tensor, None: per row/block
    return False


# -- which modules a method converts (on the meta model) ------------------------------------------------

def ct_group_of(scheme: Scheme, name: str) -> Group:
    module = name.rsplit(".", 1)[0]
    for g in scheme.groups:
        if any((t.startswith("re:") and re.match(t[3:], module)) or t == module for t in g.targets):
            return g
    return scheme.groups[0]


# -- the table: a row per method --------------------------------------------------------------------------

#: How transformers reads each `quant_method`'s quantization_config. Which weights the method converts on a
#: built model is `fitplan.model.hf.CONVERTS[name]`; its layout `fitplan.planning.prequant.LAYOUTS[name]`.
PARSERS: dict[str, Callable[[dict], Scheme]] = {
    "gptq": _gptq,
    "awq": _awq,
    "fp8": _fp8,
    "fbgemm_fp8": _fbgemm_fp8,
    "compressed-tensors": _compressed_tensors,
    "bitsandbytes": _bitsandbytes,
    "mxfp4": _mxfp4,
}


#: The transformers config class that loads a method's checkpoint dequantized (`dequantize=True`), for the methods
#: a plan may load that way (mxfp4 and fp8 without the kernels that keep them packed; fitplan.model.kernels).
DEQUANTIZED_CONFIGS = {"mxfp4": "Mxfp4Config", "fp8": "FineGrainedFP8Config"}


def _method_name(qc: dict) -> str:
    m = qc.get("quant_method")
    if not isinstance(m, str) or not m:
        raise ConfigError("config.json: quantization_config has no 'quant_method'",
                          key="quantization_config.quant_method")
    return m.lower()


@lru_cache(maxsize=64)
def _parse(blob: str) -> Scheme:
    qc = json.loads(blob)
    name = _method_name(qc)
    parse = PARSERS.get(name)
    if parse is None:
        return Scheme(name, name[:12], known=False)
    return parse(qc)


def scheme_of(quantization_config) -> Scheme:
    """The `Scheme` of a config's `quantization_config` (InputError for a malformed one)."""
    if not isinstance(quantization_config, dict):
        raise ConfigError("config.json: quantization_config must be an object", key="quantization_config")
    return _parse(json.dumps(quantization_config, sort_keys=True, default=str))


def scheme(inv: Inventory) -> Scheme:
    return scheme_of(inv.quantization)
