"""Pre-quantized checkpoints: what their weights take once transformers has loaded them.

A config.json with a `quantization_config` (GPTQ, AWQ, fp8, fbgemm fp8, compressed-tensors,
bitsandbytes-serialized, mxfp4) is loaded as it was quantized, by transformers' quantizer for that
method; fitplan never re-quantizes it. Where the checkpoint's safetensors headers are known, their
total is the as-stored size (`Inventory.stored_bytes`). Where they are not (the catalogue, a folder
of `.bin` files, a Hub repo whose headers cannot be read), the size comes from here:

- which modules the method converts: `mark_converted()`, on the meta model, with the functions
  transformers' quantizers call themselves (`get_modules_to_not_convert`, `should_convert_module`)
  and each method's module rule (`METHODS[...].select`);
- what the loader holds for each converted weight: `METHODS[...].layout`, the packed tensors of
  the kernel module the quantizer puts in its place (one table, below);
- whether the loader keeps them so on the hardware planned for, or dequantizes them to the load
  dtype (fp8 below compute capability 8.9, mxfp4 without triton and `kernels`, compressed-tensors
  at the first forward): `Method.kept`.

Read from transformers 5.24 (`quantizers/quantizer_*.py`, `integrations/*.py`), optimum at
83c88b8 (`optimum/gptq`: which layers GPTQ converts), GPTQModel at f4c327a
(`nn_modules/qlinear`: GPTQ and AWQ buffers) and compressed-tensors at ac8e2ba (matching,
packing, the decompress-on-first-forward hook, there since 0.15.0).

Pure functions of a `Scheme` (parsed from `quantization_config`) and an `Inventory`, except
`mark_converted` (needs the meta model) and `mxfp4_kernels` (reads installed package versions).

Why one module (~680 lines): it is one table, `METHODS`, a row per quantization method with its
module rule, byte layout and keep-or-dequantize rule side by side, so that a method's facts are
read (and checked against transformers' source) in one place; most of the length is that table's
seven rows and their layout functions.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from functools import lru_cache
from math import ceil
from typing import Callable

from ..errors import InputError, UnsupportedModelError
from ..planning import precision as P
from ..planning.precision import BNB_MIN_CC, DTYPE_BYTES, Precision
from .inventory import Inventory, TensorInfo


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
        raise InputError(f"config.json: quantization_config.{what} must be a whole number{choice}, got {value!r:.40}")
    return value


def _names(qc: dict, key: str) -> tuple[str, ...] | None:
    value = qc.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InputError(f"config.json: quantization_config.{key} must be a list of module names, got {value!r:.60}")
    return tuple(value)


def _group_size(qc: dict, value) -> int | None:
    g = _int(qc, "group_size", value)
    if g == -1:
        return None
    if g <= 0:
        raise InputError(f"config.json: quantization_config.group_size must be positive or -1, got {g}")
    return g


def _gptq(qc: dict) -> Scheme:
    bits = _int(qc, "bits", qc.get("bits", 4), (2, 3, 4, 8))
    fmt = str(_get(qc, "checkpoint_format", "format", default="gptq")).lower()
    if fmt not in ("gptq", "gptq_v2"):
        raise UnsupportedModelError(f"GPTQ checkpoint_format {fmt!r:.30} has a packing fitplan does not know; "
                                    "it plans 'gptq' and 'gptq_v2'")
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
                                    "'gemm' and 'gemv'")
    group = Group(bits, group_size=_group_size(qc, _get(qc, "group_size", "q_group_size", default=128)),
                  zero_points=bool(qc.get("zero_point", True)), fmt=fmt)
    return Scheme("awq", f"awq-int{bits}", (group,), skip=_names(qc, "modules_to_not_convert"))


def _fp8(qc: dict) -> Scheme:
    block = qc.get("weight_block_size")
    if block is not None:
        if not (isinstance(block, list) and len(block) == 2):
            raise InputError(f"config.json: quantization_config.weight_block_size must be [rows, columns], got "
                             f"{block!r:.40}")
        block = (_int(qc, "weight_block_size", block[0]), _int(qc, "weight_block_size", block[1]))
    if qc.get("expert_dtype", "fp8") != "fp8":
        raise UnsupportedModelError(f"fp8 checkpoints with expert_dtype {qc.get('expert_dtype')!r:.20} have a layout "
                                    "fitplan does not know")
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
            raise InputError(f"config.json: quantization_config.bnb_4bit_quant_type must be nf4 or fp4, got {kind!r:.20}")
        name = kind + ("-dq" if qc.get("bnb_4bit_use_double_quant") else "")
    elif qc.get("load_in_8bit"):
        name = "int8"
    else:
        raise InputError("config.json: a bitsandbytes quantization_config needs load_in_4bit or load_in_8bit")
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
                                    "not know")
    block = tuple(w["block_structure"]) if strategy == "block" and w.get("block_structure") else None
    fmt = str(g.get("format") or default_fmt)
    if fmt not in CT_FORMATS:
        raise UnsupportedModelError(f"compressed-tensors format {fmt!r:.30} has a layout fitplan does not know; it "
                                    f"plans {', '.join(CT_FORMATS)}")
    acts = g.get("input_activations")
    targets = g.get("targets") or []
    return Group(bits, str(w.get("type") or "int"), size, block, zero_points=not w.get("symmetric", True),
                 static_input=isinstance(acts, dict) and not acts.get("dynamic", False),
                 fmt=fmt, targets=tuple(str(t) for t in targets))


def _compressed_tensors(qc: dict) -> Scheme:
    groups = qc.get("config_groups") or {}
    if not isinstance(groups, dict):
        raise InputError("config.json: quantization_config.config_groups must be an object")
    fmt = str(qc.get("format") or "dense")
    parsed = tuple(x for x in (_ct_group(k, v, fmt) for k, v in groups.items()) if x is not None)
    first = parsed[0] if parsed else Group(16)
    kind = {("int", 4): "int4", ("int", 8): "int8", ("float", 8): "fp8", ("float", 4): "fp4"}.get(
        (first.kind, first.bits), f"{first.kind}{first.bits}")
    return Scheme("compressed-tensors", f"ct-{kind}", parsed, skip=_names(qc, "ignore"),
                  dequantize=bool(qc.get("dequantize") or qc.get("run_compressed") is False))


# -- what the loader holds per converted weight ----------------------------------------------------------

@dataclass(frozen=True)
class Held:
    """One allocation the loader keeps for a converted weight."""

    dtype: str
    numel: int


def _packed(n: int, bits: int) -> int:
    """int32 words holding `n` codes of `bits` bits, as GPTQModel and compressed-tensors pack them."""
    return ceil(n * bits / 32)


def _gptq_layout(g: Group, out: int, inp: int, gate_up: bool) -> tuple[Held, ...]:
    # GPTQQuantLinear._register_gptq_buffers: qweight [in*bits/32, out], qzeros [groups, out*bits/32] int32,
    # scales [groups, out] fp16, g_idx [in] int32 (group_size -1 means one group of in_features).
    groups = ceil(inp / (g.group_size or inp))
    return (Held("int32", _packed(inp, g.bits) * out), Held("int32", groups * _packed(out, g.bits)),
            Held("float16", groups * out), Held("int32", inp))


def _awq_layout(g: Group, out: int, inp: int, gate_up: bool) -> tuple[Held, ...]:
    pack = 32 // g.bits
    size = g.group_size or inp
    if g.fmt == "gemv":
        # AwqGEMVQuantLinear: qweight [out, in/pack]; qzeros [out, w] int32 and scales [out, w*pack] fp16, w from
        # calculate_zeros_width (groups rounded up to whole int32 words of 8, times 1/2/4 for group 128/64/32).
        mult = {128: 1, 64: 2, 32: 4}.get(size, 1 if size > 128 else None)
        if mult is None:
            raise UnsupportedModelError(f"AWQ gemv with group_size {size} has no layout in GPTQModel")
        width = ceil(ceil(ceil(inp / size) / 8) / mult) * mult
        return (Held("int32", out * (inp // pack)), Held("int32", out * width), Held("float16", out * width * 8))
    # AWQuantLinear (gemm): qweight [in, out/pack], qzeros [in/group, out/pack] int32, scales [in/group, out] fp16.
    return (Held("int32", inp * (out // pack)), Held("int32", (inp // size) * (out // pack)),
            Held("float16", (inp // size) * out))


def _fp8_layout(g: Group, out: int, inp: int, gate_up: bool) -> tuple[Held, ...]:
    # FP8Linear / FP8Experts (integrations/finegrained_fp8.py): fp8 weight; weight_scale_inv fp32 (one byte for
    # ue8m0) per [rows, columns] block, or one per tensor; a fused gate_up keeps at least 2 scale rows.
    scale_dtype = "uint8" if g.fmt == "ue8m0" else "float32"
    if g.block:
        rows, cols = ceil(out / g.block[0]), ceil(inp / g.block[1])
    else:
        rows, cols = 1, 1
    rows = max(rows, 2) if gate_up else rows
    parts = [Held("float8_e4m3fn", out * inp), Held(scale_dtype, rows * cols)]
    if g.static_input:
        parts.append(Held("float32", 1))
    return tuple(parts)


def _fbgemm_layout(g: Group, out: int, inp: int, gate_up: bool) -> tuple[Held, ...]:
    # FbgemmFp8Linear: fp8 weight, weight_scale [out, 1] fp32, input_scale_ub [1] fp32.
    return Held("float8_e4m3fn", out * inp), Held("float32", out), Held("float32", 1)


def _mxfp4_layout(g: Group, out: int, inp: int, gate_up: bool) -> tuple[Held, ...]:
    # Mxfp4GptOssExperts: two fp4 codes a byte, and one uint8 (E8M0) scale per 32 weights along the input
    # (the checkpoint's *_blocks [.., in/32, 16] and *_scales [.., in/32]).
    return Held("uint8", out * inp // 2), Held("uint8", out * ceil(inp / 32))


def _ct_layout(g: Group, out: int, inp: int, gate_up: bool, load_dtype: str = "bfloat16") -> tuple[Held, ...]:
    # compressed-tensors compressors: pack-quantized (weight_packed int32 [out, in*bits/32], weight_shape int64 [2],
    # weight_zero_point packed along the output when asymmetric), float-/naive-quantized (fp8 or int8 weight),
    # nvfp4-pack-quantized (uint8 two a byte, fp8 scale per 16, fp32 global scale), dense (the weight unpacked);
    # scales in the model dtype.
    if g.group_size == 0:
        scales = 1
    elif g.block:
        scales = ceil(out / g.block[0]) * ceil(inp / g.block[1])
    else:
        scales = out * ceil(inp / (g.group_size or inp))
    if g.fmt == "nvfp4-pack-quantized":
        parts = [Held("uint8", out * inp // 2), Held("float8_e4m3fn", out * ceil(inp / 16)), Held("float32", 1)]
        return tuple(parts + ([Held("float32", 1)] if g.static_input else []))
    if g.fmt == "pack-quantized":
        parts = [Held("int32", out * _packed(inp, g.bits)), Held(load_dtype, scales), Held("int64", 2)]
        if g.zero_points:
            parts.append(Held("int32", _packed(out, g.bits) * (scales // out or 1)))
    elif g.fmt == "dense":  # quantization parameters beside an unpacked weight
        parts = [Held(load_dtype, out * inp), Held(load_dtype, scales)]
    else:  # float-, naive- and int-quantized
        parts = [Held("float8_e4m3fn" if g.kind == "float" else "int8", out * inp), Held(load_dtype, scales)]
        if g.zero_points:
            parts.append(Held("int8", scales))
    if g.static_input:
        parts.append(Held(load_dtype, 1))
    return tuple(parts)


# -- which modules a method converts (on the meta model) ------------------------------------------------

#: optimum's BLOCK_PATTERNS (optimum/gptq/constants.py): GPTQ converts layers under the first that exists.
GPTQ_BLOCK_PATTERNS = ("transformer.h", "model.decoder.layers", "gpt_neox.layers", "model.layers",
                       "model.language_model.layers", "h", "decoder.layers", "layers")


def _skip(model, scheme: Scheme, default_skips: bool) -> list[str]:
    from transformers.quantizers.base import HfQuantizer

    skip = HfQuantizer.get_modules_to_not_convert(model, list(scheme.skip) if scheme.skip is not None else None,
                                                  model._keep_in_fp32_modules, add_default_skips=default_skips)
    return list(skip)


def _select_linear(model, scheme: Scheme, *, exact: bool, experts: bool, default_skips: bool) -> dict[str, int]:
    """Linear layers transformers replaces (`exact`: only `type(m) is nn.Linear`), and with `experts` the fused
    `*.experts` modules (fp8's FP8Experts), minus the skip list as the quantizer computes it."""
    from torch import nn
    from transformers.quantizers.quantizers_utils import should_convert_module

    skip = _skip(model, scheme, default_skips)
    hidden = model.config.get_text_config(decoder=True).hidden_size
    out: dict[str, int] = {}
    for name, m in model.named_modules():
        if not should_convert_module(name, skip):
            continue
        if experts and name.endswith(".experts"):
            out.update(_expert_weights(name, m, hidden))
        elif (type(m) is nn.Linear) if exact else isinstance(m, nn.Linear):
            out[f"{name}.weight"] = int(m.out_features)
    return out


def _expert_weights(name: str, module, hidden: int) -> dict[str, int]:
    """{parameter name: output rows per expert} of a fused experts module. Most store [E, out, in]; gpt-oss
    stores [E, in, out]: the projection into the experts reads `hidden` inputs, `down_proj` writes `hidden`."""
    out = {}
    for pname, p in module.named_parameters(recurse=False):
        if p.dim() != 3 or not pname.endswith("proj"):
            continue
        a, b = int(p.shape[1]), int(p.shape[2])
        if pname == "down_proj":
            out[f"{name}.{pname}"] = hidden
        else:
            out[f"{name}.{pname}"] = a if b == hidden else b
    return out


def _select_gptq(model, scheme: Scheme) -> dict[str, int]:
    """optimum's GPTQQuantizer.convert_model: exact nn.Linear, Conv1D, Conv2d under the block prefix
    (`block_name_to_quantize`, else the first of BLOCK_PATTERNS present), only `modules_in_block_to_quantize`
    when given. The skip list does not apply: GPTQ never converts what lies outside the blocks."""
    from torch import nn
    from transformers.pytorch_utils import Conv1D

    names = [n for n, _ in model.named_modules()]
    prefixes = scheme.blocks or next(((p,) for p in GPTQ_BLOCK_PATTERNS if any(n.startswith(p) for n in names)), ())
    out: dict[str, int] = {}
    for name, m in model.named_modules():
        if not any(name.startswith(p) for p in prefixes):
            continue
        if scheme.in_blocks and not any(name.endswith(k) for k in scheme.in_blocks):
            continue
        if type(m) is nn.Linear:
            out[f"{name}.weight"] = int(m.out_features)
        elif isinstance(m, Conv1D):
            out[f"{name}.weight"] = int(m.weight.shape[1])
        elif isinstance(m, nn.Conv2d):
            out[f"{name}.weight"] = int(m.out_channels)
    return out


def _select_bnb(model, scheme: Scheme) -> dict[str, int]:
    from . import hf

    return hf.bnb_replaced_modules(model, scheme.skip)[0]


def _select_mxfp4(model, scheme: Scheme) -> dict[str, int]:
    """replace_with_mxfp4_linear: the experts of every GptOssMLP whose `<name>.experts` is not skipped."""
    from transformers.quantizers.quantizers_utils import should_convert_module

    skip = _skip(model, scheme, default_skips=False)
    hidden = model.config.get_text_config(decoder=True).hidden_size
    out: dict[str, int] = {}
    for name, m in model.named_modules():
        if type(m).__name__ == "GptOssMLP" and should_convert_module(f"{name}.experts", skip):
            out.update(_expert_weights(f"{name}.experts", m.experts, hidden))
    return out


def _select_ct(model, scheme: Scheme) -> dict[str, int]:
    """compressed-tensors' is_match: a target or ignore entry matches a module by exact name, by `re:` regex on
    the name, or by the name of a class in the module's MRO. Linear modules only (what gets a packed weight)."""
    from torch import nn

    def hit(name: str, m, entries) -> bool:
        return any((e.startswith("re:") and re.match(e[3:], name)) or e == name
                   or any(c.__name__ == e for c in type(m).__mro__) for e in entries)

    targets = [t for g in scheme.groups for t in g.targets]
    ignore = list(scheme.skip or ())
    return {f"{name}.weight": int(m.out_features) for name, m in model.named_modules()
            if isinstance(m, nn.Linear) and hit(name, m, targets) and not hit(name, m, ignore)}


def _ct_group_of(scheme: Scheme, name: str) -> Group:
    module = name.rsplit(".", 1)[0]
    for g in scheme.groups:
        if any((t.startswith("re:") and re.match(t[3:], module)) or t == module for t in g.targets):
            return g
    return scheme.groups[0]


# -- on which hardware the loader keeps the stored form ---------------------------------------------------

@dataclass(frozen=True)
class Target:
    """What `kept` decides on: GPU 0's compute capability (None: the CPU), and for mxfp4 whether triton and
    `kernels` are installed in versions transformers accepts (`mxfp4_kernels()`)."""

    compute_capability: tuple[int, int] | None
    triton: bool = False
    kernels: bool = False


def _where(t: Target) -> str:
    return "the CPU" if t.compute_capability is None else f"GPU 0 (compute capability {t.compute_capability[0]}." \
                                                          f"{t.compute_capability[1]})"


def _kept_always(s: Scheme, t: Target) -> str | None:
    return None


def _kept_bnb(s: Scheme, t: Target) -> str | None:

    if t.compute_capability is not None and t.compute_capability < BNB_MIN_CC:
        return "bitsandbytes needs compute capability 5.0 or newer"
    return None


def _kept_fp8(s: Scheme, t: Target) -> str | None:
    if s.dequantize:
        return "its quantization_config sets dequantize: transformers dequantizes it at load"
    if t.compute_capability is None or t.compute_capability < (8, 9):
        return (f"transformers runs fp8 only on GPUs of compute capability 8.9 or newer and dequantizes it on "
                f"{_where(t)}")
    return None


def _kept_fbgemm(s: Scheme, t: Target) -> str | None:
    if t.compute_capability is None or t.compute_capability < (9, 0):
        return f"transformers loads fbgemm fp8 only on GPUs of compute capability 9.0 or newer, not on {_where(t)}"
    return None


def _kept_mxfp4(s: Scheme, t: Target) -> str | None:
    if s.dequantize:
        return "its quantization_config sets dequantize: transformers dequantizes it at load"
    if t.compute_capability is None:
        return "transformers dequantizes mxfp4 on the CPU unless use_kernels=True"
    missing = ([f"compute capability 7.5 (GPU 0 has {t.compute_capability[0]}.{t.compute_capability[1]})"]
               if t.compute_capability < (7, 5) else [])
    missing += [] if t.triton else ["triton>=3.4.0"]
    missing += [] if t.kernels else ["a kernels release transformers accepts"]
    if missing:
        return ("transformers keeps mxfp4 only with triton>=3.4.0, the kernels package and a GPU of compute "
                f"capability 7.5 or newer, and dequantizes it otherwise; missing on the target: {', '.join(missing)}")
    return None


def _kept_ct(s: Scheme, t: Target) -> str | None:
    return ("compressed-tensors decompresses every quantized layer to the load dtype on the model's first forward "
            "(its decompress hook), so generation holds dense weights")


def target_of(inv: Inventory, gpus, software=None) -> Target:
    """The `Target` for `gpus` (the planned hardware's): transformers decides on the current device, GPU 0.
    triton and `kernels` are the target's declared `software` (hardware/software.py) when the plan is for
    another machine, and this environment's (`mxfp4_kernels()`) when `software` is None (the probe)."""
    cc = min(gpus, key=lambda g: g.index).compute_capability if gpus else None
    if cc is None or scheme(inv).method != "mxfp4":
        return Target(cc)
    kernels = mxfp4_kernels() if software is None else (software.triton, software.kernels)
    return Target(cc, *kernels)


def mxfp4_kernels() -> tuple[bool, bool]:
    """(triton >= 3.4.0, kernels in transformers' accepted range) in this environment: transformers' own checks."""
    from transformers.utils.import_utils import is_kernels_available, is_triton_available

    return bool(is_triton_available("3.4.0")), bool(is_kernels_available())


# -- the one table ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Method:
    """How transformers loads one `quant_method`.

    `parse` reads its quantization_config; `select(model, scheme)` names the converted weights (output rows
    each); `layout(group, out, in, gate_up)` the allocations a converted weight becomes; `bias` the dtype the
    kernel module keeps a converted layer's bias in (None: the load dtype); `kept(scheme, target)` None when
    the loader keeps the stored form there, else why not; `dequantizes`: when not kept, transformers
    dequantizes to the load dtype (else it refuses to load).
    """

    parse: Callable[[dict], Scheme]
    select: Callable
    layout: Callable[..., tuple[Held, ...]] | None
    kept: Callable[[Scheme, Target], str | None]
    bias: str | None = None
    dequantizes: bool = False


METHODS: dict[str, Method] = {
    "gptq": Method(_gptq, _select_gptq, _gptq_layout, _kept_always, bias="float16"),
    "awq": Method(_awq, lambda m, s: _select_linear(m, s, exact=False, experts=False, default_skips=True),
                  _awq_layout, _kept_always, bias="float16"),
    "fp8": Method(_fp8, lambda m, s: _select_linear(m, s, exact=True, experts=True, default_skips=False),
                  _fp8_layout, _kept_fp8, dequantizes=True),
    "fbgemm_fp8": Method(_fbgemm_fp8, lambda m, s: _select_linear(m, s, exact=False, experts=False,
                                                                   default_skips=False),
                         _fbgemm_layout, _kept_fbgemm, bias="float32"),
    "compressed-tensors": Method(_compressed_tensors, _select_ct, _ct_layout, _kept_ct, dequantizes=True),
    "bitsandbytes": Method(_bitsandbytes, _select_bnb, None, _kept_bnb),
    "mxfp4": Method(_mxfp4, _select_mxfp4, _mxfp4_layout, _kept_mxfp4, bias="float32", dequantizes=True),
}


def _method_name(qc: dict) -> str:
    m = qc.get("quant_method")
    if not isinstance(m, str) or not m:
        raise InputError("config.json: quantization_config has no 'quant_method'")
    return m.lower()


@lru_cache(maxsize=64)
def _parse(blob: str) -> Scheme:
    qc = json.loads(blob)
    name = _method_name(qc)
    method = METHODS.get(name)
    if method is None:
        return Scheme(name, name[:12], known=False)
    return method.parse(qc)


def scheme_of(quantization_config) -> Scheme:
    """The `Scheme` of a config's `quantization_config` (InputError for a malformed one)."""
    if not isinstance(quantization_config, dict):
        raise InputError("config.json: quantization_config must be an object")
    return _parse(json.dumps(quantization_config, sort_keys=True, default=str))


#: The names of as-stored rows (what `precision` may also say, for a pre-quantized checkpoint).
LABEL_PATTERN = r"gptq-int[2348]|awq-int4|fp8|fbgemm-fp8|ct-[a-z0-9]+|bnb-(nf4|fp4)(-dq)?|bnb-int8|mxfp4"


def is_label(name: str) -> bool:
    """Whether `name` can be an as-stored row (so `--precision`/a lock may name it)."""
    return isinstance(name, str) and bool(re.fullmatch(LABEL_PATTERN, name))


# -- the build-time hook and the estimate ------------------------------------------------------------------

def mark_converted(model, quantization_config: dict, tensors: tuple[TensorInfo, ...],
                   stored_bytes: int | None) -> tuple[TensorInfo, ...]:
    """`tensors` with the weights the method converts marked `quantizable` (and their output rows). A method
    fitplan does not know can only be sized from stored headers: without them it is refused."""
    scheme = scheme_of(quantization_config)
    method = METHODS.get(scheme.method)
    if method is None:
        if stored_bytes is None:
            raise UnsupportedModelError(
                f"pre-quantized with {scheme.method!r:.30}, whose layout fitplan does not know, and its safetensors "
                f"headers are not available; plan it from a local folder or a Hub repo with safetensors files")
        return tensors
    converted = method.select(model, scheme)
    return tuple(replace(t, quantizable=True, out_features=converted[t.name]) if t.name in converted else t
                 for t in tensors)


def scheme(inv: Inventory) -> Scheme:
    return scheme_of(inv.quantization)


def as_stored(inv: Inventory) -> Precision:
    """The row of the checkpoint as stored: bitsandbytes' own precision under the `bnb-` name (its layout is
    layout.py's), else a precision with neither bits nor float dtype, whose weights come from this module."""
    s = scheme(inv)
    if s.method == "bitsandbytes":
        return replace(P.get(s.label.removeprefix("bnb-")), name=s.label)
    return Precision(s.label)


def is_as_stored(inv: Inventory, precision: Precision) -> bool:
    return bool(inv.prequantized) and precision.name == scheme(inv).label


def _alloc(n: int, alignment: int) -> int:
    return -(-n // alignment) * alignment if alignment > 1 else n


def _bias_of(name: str) -> str:
    return name[:-len(".weight")] + ".bias" if name.endswith(".weight") else name + "_bias"


def held_by_tensor(inv: Inventory, load_dtype: str, alignment: int = 1) -> dict[str, int]:
    """Bytes per inventory tensor of the checkpoint as stored, as the loader holds it (non-bitsandbytes methods).

    Converted weights become their method's allocations; a converted layer's bias takes the kernel module's
    dtype; everything else is held as the model loads it (`load_dtype`, fixed-dtype buffers keep theirs).
    """
    from ..planning.layout import float_dtype_for

    s = scheme(inv)
    method = METHODS[s.method]
    converted = {t.name for t in inv.tensors if t.quantizable}
    biases = {_bias_of(n) for n in converted} if method.bias else set()
    out: dict[str, int] = {}
    for t in inv.tensors:
        if t.name in converted:
            experts = t.shape[0] if len(t.shape) == 3 else 1
            rows = t.out_features or t.shape[0]
            cols = t.numel // (experts * rows)
            group = _ct_group_of(s, t.name) if s.method == "compressed-tensors" else s.groups[0]
            extra = {"load_dtype": load_dtype} if s.method == "compressed-tensors" else {}
            parts = method.layout(group, rows, cols, t.name.endswith("gate_up_proj"), **extra)
            out[t.name] = sum(_alloc(p.numel * experts * DTYPE_BYTES[p.dtype], alignment) for p in parts)
        elif t.name in biases:
            out[t.name] = _alloc(t.numel * DTYPE_BYTES[method.bias], alignment)
        else:
            out[t.name] = _alloc(t.numel * DTYPE_BYTES[float_dtype_for(t, load_dtype)], alignment)
    return out


def accelerate_fraction(inv: Inventory, precision: Precision, load_dtype: str) -> float:
    """accelerate's size of the weights over their true size for a row of a pre-quantized model.

    accelerate sizes the meta model after the quantizer converted it: the stored form, which is also what the
    as-stored row holds (1.0). compressed-tensors is placed compressed but decompressed at the first forward,
    so its dense row is placed at the compressed size. fp8 and mxfp4 rows dequantized at load build no kernel
    modules: the meta model is the dense one (1.0).
    """
    s = scheme(inv)
    if s.method != "compressed-tensors" or is_as_stored(inv, precision):
        return 1.0
    from ..planning.layout import tensor_bytes

    dense = sum(tensor_bytes(t, precision, load_dtype) for t in inv.tensors)
    packed = sum(held_by_tensor(inv, load_dtype).values())
    return packed / dense if dense else 1.0


def rows(inv: Inventory, target: Target, dequantized_to: Precision) -> list[tuple[Precision, str | None]]:
    """The rows of a pre-quantized model, best first, each with a reason it is ruled out (or None): the
    checkpoint as stored, and, for methods transformers dequantizes where it cannot keep them, the model in
    `dequantized_to` (the load dtype), ruled out where the stored form is kept."""
    s = scheme(inv)
    stored = as_stored(inv)
    method = METHODS.get(s.method)
    if method is None:
        return [(stored, None)]
    why_not = method.kept(s, target)
    out = [(stored, why_not)]
    if method.dequantizes:
        out.append((dequantized_to, None if why_not else f"not used: transformers keeps the {s.label} weights on "
                                                         f"{_where(target)}"))
    return out
