"""Pre-quantized checkpoints, planning's part: what their weights take once transformers has loaded them.

Where the checkpoint's safetensors headers are known, their total is the as-stored size
(`Inventory.stored_bytes`). Where they are not (the catalogue, a folder of `.bin` files, a Hub repo
whose headers cannot be read), the size comes from here, for the weights `fitplan.model.prequant`
marked converted:

- what the loader holds for each converted weight: `LAYOUTS[...].layout`, the packed tensors of the
  kernel module the quantizer puts in its place;
- whether the loader keeps them so on the hardware planned for, or dequantizes them to the load
  dtype (fp8 below compute capability 8.9 or, where transformers runs it through a Hub kernel, without
  `kernels`; mxfp4 without triton and `kernels`; compressed-tensors at
  the first forward): `LAYOUTS[...].kept`.

Read from transformers 5.24 (`quantizers/quantizer_*.py`, `integrations/*.py`), GPTQModel at
f4c327a (`nn_modules/qlinear`: GPTQ and AWQ buffers) and compressed-tensors at ac8e2ba (packing,
the decompress-on-first-forward hook, there since 0.15.0). Pure, except `target_of`, which asks the
model stage whether mxfp4's and fp8's kernel packages are installed, which Hub kernel fp8 runs through, whether
fp8's integration imports triton (5.0) and what mxfp4 needs to stay packed on the CPU.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from math import ceil
from typing import Callable

from ..errors import UnsupportedModelError
from ..model.inventory import Inventory
from ..model.prequant import Group, Scheme, ct_group_of, scheme
from ..vocab import precision as P
from ..vocab.precision import BNB_MIN_CC, DTYPE_BYTES, Precision
from ..vocab.units import align
from .layout import float_dtype_for, tensor_bytes


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
            raise UnsupportedModelError(f"AWQ gemv with group_size {size} has no layout in GPTQModel", model_type=None)
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


# -- on which hardware the loader keeps the stored form ---------------------------------------------------

@dataclass(frozen=True)
class Target:
    """What `kept` and `loads` decide on: GPU 0's compute capability (None: the CPU), for mxfp4 and fp8 whether
    triton and `kernels` are installed in versions transformers accepts (`mxfp4_kernels()`), for fp8 the Hub kernel
    the installed transformers runs fp8 layers through (`hf.fp8_kernel_repo()`: "repo ref", or None for none) and
    the package its fp8 integration imports at its top that the target lacks (`lacks`: "triton" on 5.0 without
    it, `hf.fp8_needs_triton()`), and for mxfp4 on the CPU what the installed transformers needs to keep it packed
    there (`hf.mxfp4_on_cpu()`: None, never)."""

    compute_capability: tuple[int, int] | None
    triton: bool = False
    kernels: bool = False
    fp8_kernel: str | None = None
    transformers: str = "this transformers release"
    lacks: str | None = None
    mxfp4_cpu: tuple[str, bool, bool] | None = None


def _where(t: Target) -> str:
    return "the CPU" if t.compute_capability is None else f"GPU 0 (compute capability {t.compute_capability[0]}." \
                                                          f"{t.compute_capability[1]})"


def _kept_always(s: Scheme, t: Target) -> str | None:
    return None


def _kept_bnb(s: Scheme, t: Target) -> str | None:

    if t.compute_capability is not None and t.compute_capability < BNB_MIN_CC:
        return f"bitsandbytes needs compute capability {P.cc_text(BNB_MIN_CC)} or newer"
    return None


def _loads_fp8(s: Scheme, t: Target) -> str | None:
    if t.lacks is None:
        return None
    return (f"transformers {t.transformers} imports {t.lacks} at the top of its fp8 integration, so it loads no fp8 "
            f"checkpoint without {t.lacks}, dequantized or not; {t.lacks} is missing on the target: install it there "
            f"(pip install {t.lacks}), or use transformers 5.17 or newer, whose fp8 integration does not import it")


def _kept_fp8(s: Scheme, t: Target) -> str | None:
    if s.dequantize:
        return "its quantization_config sets dequantize: transformers dequantizes it at load"
    if t.compute_capability is None or t.compute_capability < (8, 9):
        return (f"transformers runs fp8 only on GPUs of compute capability 8.9 or newer and dequantizes it on "
                f"{_where(t)}")
    if t.fp8_kernel is not None and not t.kernels:
        return (f"transformers runs fp8 layers through the Hub kernel {t.fp8_kernel}, fetched at the first forward "
                "with the kernels package (in the range transformers accepts, USE_HUB_KERNELS not off), missing on "
                "the target: fitplan loads it dequantized instead (FineGrainedFP8Config(dequantize=True))")
    return None


def _kept_fbgemm(s: Scheme, t: Target) -> str | None:
    if t.compute_capability is None or t.compute_capability < (9, 0):
        return f"transformers loads fbgemm fp8 only on GPUs of compute capability 9.0 or newer, not on {_where(t)}"
    return None


def _kept_mxfp4(s: Scheme, t: Target) -> str | None:
    if s.dequantize:
        return "its quantization_config sets dequantize: transformers dequantizes it at load"
    if t.compute_capability is None:
        return _mxfp4_on_the_cpu(t)
    missing = ([f"compute capability 7.5 (GPU 0 has {t.compute_capability[0]}.{t.compute_capability[1]})"]
               if t.compute_capability < (7, 5) else [])
    missing += [] if t.triton else ["triton>=3.4.0"]
    missing += [] if t.kernels else ["a kernels release transformers accepts"]
    if missing:
        return ("transformers keeps mxfp4 only with triton>=3.4.0, the kernels package and a GPU of compute "
                f"capability 7.5 or newer, and dequantizes it otherwise; missing on the target: {', '.join(missing)}")
    return None


def _mxfp4_on_the_cpu(t: Target) -> str:
    if t.mxfp4_cpu is None:
        return (f"transformers {t.transformers} keeps mxfp4 packed only on a GPU (compute capability 7.5 or newer) "
                "and dequantizes it on the CPU")
    triton, kernels, use_kernels = t.mxfp4_cpu
    needs = [f"triton>={triton}"] + (["the kernels package"] if kernels else []) + (
        ["use_kernels=True"] if use_kernels else [])
    return (f"transformers {t.transformers} keeps mxfp4 packed on the CPU only with {_and(needs)}, running the "
            "experts through its Hub kernel, a path whose CPU memory fitplan has not measured: on the CPU fitplan "
            "loads it dequantized (Mxfp4Config(dequantize=True))")


def _and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _kept_ct(s: Scheme, t: Target) -> str | None:
    return ("compressed-tensors decompresses every quantized layer to the load dtype on the model's first forward "
            "(its decompress hook), so generation holds dense weights")


def target_of(inv: Inventory, gpus, software=None) -> Target:
    """The `Target` for `gpus` (the planned hardware's): transformers decides on the current device, GPU 0.
    triton and `kernels` are the target's declared `software` (hardware/software.py) when the plan is for
    another machine, and this environment's (`_mxfp4_kernels()`, `hf.fp8_needs_triton()`) when `software` is None
    (the probe, and `fitplan.load()`, which loads here). For fp8, whether the target lacks the triton its
    integration imports; on compute capability 8.9+, also the Hub kernel the installed transformers runs it
    through (`_fp8_kernel()`). For mxfp4 on the CPU, what the installed transformers needs to keep it packed."""
    cc = min(gpus, key=lambda g: g.index).compute_capability if gpus else None
    method = scheme(inv).method
    if method not in ("mxfp4", "fp8"):
        return Target(cc)
    release = inv.versions.get("transformers") or Target.transformers
    if method == "mxfp4" and cc is None:
        return Target(cc, transformers=release, mxfp4_cpu=_hf().mxfp4_on_cpu())
    lacks = None
    if method == "fp8":
        needs, here = _hf().fp8_needs_triton()
        lacks = "triton" if needs and not (here if software is None else software.triton) else None
    if cc is None:
        return Target(cc, transformers=release, lacks=lacks)
    kernels = _mxfp4_kernels() if software is None else (software.triton, software.kernels)
    if method == "mxfp4" or cc < (8, 9):  # below 8.9 transformers dequantizes fp8 itself, kernel or not
        return Target(cc, *kernels, transformers=release, lacks=lacks)
    repo = _fp8_kernel()
    if software is None:  # this machine: `USE_HUB_KERNELS` off makes lazy_load_kernel fetch nothing either
        kernels = (kernels[0], kernels[1] and not _kernels_off())
    return Target(cc, *kernels, fp8_kernel=None if repo is None else f"{repo[0]} {repo[1]}", transformers=release,
                  lacks=lacks)


def _hf():
    from ..model import hf

    return hf


def _mxfp4_kernels() -> tuple[bool, bool]:
    from ..model import hf

    return hf.mxfp4_kernels()


def _fp8_kernel() -> tuple[str, str] | None:
    from ..model import hf

    return hf.fp8_kernel_repo()


def _kernels_off() -> bool:
    from ..model import hf

    return hf.kernels_disabled_by_env()


# -- the one table ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Layout:
    """How transformers loads one `quant_method`.

    `layout(group, out, in, gate_up)` the allocations a converted weight becomes; `bias` the dtype the
    kernel module keeps a converted layer's bias in (None: the load dtype); `kept(scheme, target)` None when
    the loader keeps the stored form there, else why not; `dequantizes`: when not kept, transformers
    dequantizes to the load dtype (else it refuses to load); `loads(scheme, target)` None when transformers
    on the target loads the checkpoint at all, else why no row of it loads there (`refusal`).
    """

    layout: Callable[..., tuple[Held, ...]] | None
    kept: Callable[[Scheme, Target], str | None]
    bias: str | None = None
    dequantizes: bool = False
    loads: Callable[[Scheme, Target], str | None] = _kept_always


LAYOUTS: dict[str, Layout] = {
    "gptq": Layout(_gptq_layout, _kept_always, bias="float16"),
    "awq": Layout(_awq_layout, _kept_always, bias="float16"),
    "fp8": Layout(_fp8_layout, _kept_fp8, dequantizes=True, loads=_loads_fp8),
    "fbgemm_fp8": Layout(_fbgemm_layout, _kept_fbgemm, bias="float32"),
    "compressed-tensors": Layout(_ct_layout, _kept_ct, dequantizes=True),
    "bitsandbytes": Layout(None, _kept_bnb),
    "mxfp4": Layout(_mxfp4_layout, _kept_mxfp4, bias="float32", dequantizes=True),
}


def as_stored(inv: Inventory) -> Precision:
    """The row of the checkpoint as stored: bitsandbytes' own precision under the `bnb-` name (its layout is
    layout.py's), else a precision with neither bits nor float dtype, whose weights come from this module."""
    s = scheme(inv)
    if s.method == "bitsandbytes":
        return replace(P.get(s.label.removeprefix("bnb-")), name=s.label)
    return Precision(s.label)


def is_as_stored(inv: Inventory, precision: Precision) -> bool:
    return bool(inv.prequantized) and precision.name == scheme(inv).label


def _bias_of(name: str) -> str:
    return name[:-len(".weight")] + ".bias" if name.endswith(".weight") else name + "_bias"


def held_by_tensor(inv: Inventory, load_dtype: str, alignment: int = 1) -> dict[str, int]:
    """Bytes per inventory tensor of the checkpoint as stored, as the loader holds it (non-bitsandbytes methods).

    Converted weights become their method's allocations; a converted layer's bias takes the kernel module's
    dtype; everything else is held as the model loads it (`load_dtype`, fixed-dtype buffers keep theirs).
    """
    s = scheme(inv)
    method = LAYOUTS[s.method]
    converted = {t.name for t in inv.tensors if t.quantizable}
    biases = {_bias_of(n) for n in converted} if method.bias else set()
    out: dict[str, int] = {}
    for t in inv.tensors:
        if t.name in converted:
            experts = t.shape[0] if len(t.shape) == 3 else 1
            rows = t.out_features or t.shape[0]
            cols = t.numel // (experts * rows)
            group = ct_group_of(s, t.name) if s.method == "compressed-tensors" else s.groups[0]
            extra = {"load_dtype": load_dtype} if s.method == "compressed-tensors" else {}
            parts = method.layout(group, rows, cols, t.name.endswith("gate_up_proj"), **extra)
            out[t.name] = sum(align(p.numel * experts * DTYPE_BYTES[p.dtype], alignment) for p in parts)
        elif t.name in biases:
            out[t.name] = align(t.numel * DTYPE_BYTES[method.bias], alignment)
        else:
            out[t.name] = align(t.numel * DTYPE_BYTES[float_dtype_for(t, load_dtype)], alignment)
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
    dense = sum(tensor_bytes(t, precision, load_dtype) for t in inv.tensors)
    packed = sum(held_by_tensor(inv, load_dtype).values())
    return packed / dense if dense else 1.0


def refusal(inv: Inventory, target: Target) -> str | None:
    """Why transformers on `target` loads no row of this pre-quantized checkpoint, dequantized or not (5.0's fp8
    without triton), or None. The one statement both the plan (`rows`: every row ruled out with it) and
    `fitplan.load()` (runtime/kernels.py, before any weight, for this machine) read."""
    s = scheme(inv)
    method = LAYOUTS.get(s.method)
    return None if method is None else method.loads(s, target)


def rows(inv: Inventory, target: Target, dequantized_to: Precision) -> list[tuple[Precision, str | None]]:
    """The rows of a pre-quantized model, best first, each with a reason it is ruled out (or None): the
    checkpoint as stored, and, for methods transformers dequantizes where it cannot keep them, the model in
    `dequantized_to` (the load dtype), ruled out where the stored form is kept. Where transformers on the target
    loads no row of it (`refusal`), every row is ruled out with that reason."""
    s = scheme(inv)
    stored = as_stored(inv)
    method = LAYOUTS.get(s.method)
    if method is None:
        return [(stored, None)]
    never = refusal(inv, target)
    why_not = never or method.kept(s, target)
    out = [(stored, why_not)]
    if method.dequantizes:
        out.append((dequantized_to, never or (None if why_not else f"not used: transformers keeps the {s.label} "
                                                                   f"weights on {_where(target)}")))
    return out
