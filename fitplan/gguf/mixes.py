"""Which ggml type `llama-quantize` gives each tensor for a file type: the `_M`/`_S` mixes.

A transcription of llama.cpp's src/llama-quant.cpp at commit 007dbbf3fd17eefe9b47fee45f48f7ba5e62b714
(github.com/ggml-org/llama.cpp), restricted to the file types in `types.FILE_TYPES`:

* `tensor_allows_quantization`: only tensors of 2 or 3 dims whose name ends in `weight`, except
  `*_norm.weight`, `ffn_gate_inp.weight` (MoE router) and a few architecture-specific ones, are
  quantized; everything else keeps the type the converter wrote (F32 for 1-D tensors and routers).
* `llama_tensor_get_type_impl`: `output.weight` (and `token_embd.weight` when the embeddings are
  tied, i.e. there is no `output.weight`) become Q6_K unless the file type is Q8_0 (Falcon, or a row
  length not a multiple of the block size: Q8_0); `attn_v` / `attn_qkv` and `ffn_down` of some
  layers go higher in the _M mixes (`use_more_bits`: the first and last eighth of the layers and
  every third one between); Q2_K/Q3_K mixes raise `attn_output`; 8-expert models (Mixtral) keep
  attn_k/attn_v at Q8_0; llama.cpp's "70B" model type (80 layers, llama or qwen2) raises attn_v.
* `tensor_type_fallback`: a row length that is not a multiple of 256 cannot hold a k-quant: Q4_K
  falls back to Q5_0, Q5_K to Q5_1, Q6_K to Q8_0, Q2_K/Q3_K to Q4_0, IQ4_XS to IQ4_NL; if even that
  does not divide, F16.

The rules are applied per tensor from its llama.cpp name, shape and layer; the counters llama.cpp
keeps (`i_attention_wv`, `i_ffn_down`) walk the layers in order, which is the layer index here.
"""
from __future__ import annotations

import re

from dataclasses import dataclass

from gguf import GGMLQuantizationType as T

from .ggml_types import FileType, block_size

#: Quantizer exclusions by name fragment (`tensor_allows_quantization`), for the architectures
#: fitplan maps; tensors matching any stay at their converted type.
_NEVER_QUANTIZED = ("_norm.weight", "ffn_gate_inp.weight", "altup", "laurel", "per_layer_model_proj",
                    "position_embd", "token_types", "ssm_conv1d", "attn_rel_b.weight")

_NEVER = re.compile("|".join(map(re.escape, _NEVER_QUANTIZED)))

#: `tensor_type_fallback`: the type used when a row length is not a multiple of the target's block.
_FALLBACK = {T.IQ4_XS: T.IQ4_NL, T.Q2_K: T.Q4_0, T.Q3_K: T.Q4_0, T.Q4_K: T.Q5_0, T.Q5_K: T.Q5_1,
             T.Q6_K: T.Q8_0}


@dataclass(frozen=True)
class ModelTraits:
    """The model facts the quantizer's rules read: `arch` (llama.cpp's name), `n_layer`, `n_gqa`
    (heads per KV head), `n_expert`, `n_attn_v` (how many attn_v/attn_qkv tensors), and whether
    llama.cpp calls it a 70B (`LLM_TYPE_70B`)."""

    arch: str
    n_layer: int
    n_gqa: int
    n_expert: int
    n_attn_v: int
    tied: bool
    is_70b: bool = False


def use_more_bits(i: int, n: int) -> bool:
    """llama-quant.cpp's `use_more_bits` (C++ integer division)."""
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def _category(name: str) -> str:
    """`tensor_get_category`, by the same name tests and in the same order."""
    if name == "output.weight":
        return "output"
    if name in ("token_embd.weight", "per_layer_token_embd.weight"):
        return "token_embd"
    for frag, cat in (("attn_qkv.weight", "attn_v"), ("attn_kv_b.weight", "attn_v"), ("attn_v.weight", "attn_v"),
                      ("attn_k.weight", "attn_k"), ("attn_q.weight", "attn_q"),
                      ("attn_output.weight", "attn_output"), ("ffn_up", "ffn_up"), ("ffn_gate", "ffn_gate"),
                      ("ffn_down", "ffn_down")):
        if frag in name:
            return cat
    return "other"


def quantizable(name: str, n_dims: int) -> bool:
    """`tensor_allows_quantization` for the names fitplan produces."""
    return n_dims >= 2 and name.endswith("weight") and not _NEVER.search(name)


def tensor_type(ft: FileType, name: str, shape: tuple[int, ...], layer: int | None, m: ModelTraits, *,
                stored: T, attn_v_index: int, imatrix: bool = False) -> T:
    """The ggml type `llama-quantize` writes for tensor `name` of a model with
    traits `m`, converted at `stored` type. `shape` is in ggml order; `attn_v_index` is the tensor's
    position among the attn_v tensors (llama.cpp's `i_attention_wv`); `imatrix`: whether an
    importance matrix is given (`llama-quantize --imatrix`), which keeps fewer tensors higher."""
    if not quantizable(name, len(shape)):
        return stored
    ne0 = shape[0]
    default = ft.default
    if default in (T.F16, T.BF16, T.F32):  # not a quantized type: every quantizable tensor converts to it
        return default
    new = _mix(ft.name, default, _category(name), ne0, layer, m, attn_v_index, imatrix)
    return _fallback(new, ne0)


def _fallback(t: T, ne0: int) -> T:
    if ne0 % block_size(t) == 0:
        return t
    alt = _FALLBACK.get(t, T.F16)
    return alt if ne0 % block_size(alt) == 0 else T.F16


def _mix(ftype: str, new: T, cat: str, ne0: int, layer: int | None, m: ModelTraits, i_wv: int, imatrix: bool) -> T:
    n_layer, gqa, n_expert = m.n_layer, m.n_gqa, m.n_expert
    if cat == "output" or (m.tied and cat == "token_embd"):
        if m.arch == "falcon" or ne0 % block_size(new):
            return T.Q8_0
        return new if new == T.Q8_0 else T.Q6_K
    if cat == "token_embd":
        return new
    i = layer if layer is not None else 0
    if cat == "attn_v":
        if ftype == "Q2_K":
            new = T.Q4_K if gqa >= 4 else T.Q3_K
        elif ftype == "Q3_K_M":
            new = T.Q5_K if i_wv < 2 else T.Q4_K
        elif ftype == "Q3_K_L":
            new = T.Q5_K
        elif ftype == "IQ4_XS" and gqa >= 4:
            new = T.Q5_K
        elif ftype in ("Q4_K_M", "Q5_K_M") and use_more_bits(i_wv, m.n_attn_v):
            new = T.Q6_K
        elif ftype == "Q4_K_S" and i_wv < 4:
            new = T.Q5_K
        if m.is_70b and new in (T.Q3_K, T.Q4_K):
            new = T.Q5_K
        if n_expert == 8:
            new = T.Q8_0
        return new
    if cat == "attn_k":
        return T.Q8_0 if n_expert == 8 else new
    if cat == "ffn_down":
        if ftype == "Q2_K":
            return T.Q3_K
        if ftype == "Q3_K_M":
            if i < n_layer // 16:
                return T.Q5_K
            return T.Q4_K if m.arch != "falcon" or use_more_bits(i, n_layer) else T.Q3_K
        if ftype == "Q3_K_L":
            return T.Q4_K if m.arch == "falcon" else T.Q5_K
        if ftype == "Q4_K_M":
            if m.arch == "falcon":
                return T.Q6_K if i < n_layer // 16 else (T.Q5_K if use_more_bits(i, n_layer) else T.Q4_K)
            return T.Q6_K if use_more_bits(i, n_layer) else new
        if ftype == "IQ4_XS" and i < n_layer // 8 and not imatrix:
            return T.Q5_K
        if ftype == "Q5_K_M" and use_more_bits(i, n_layer):
            return T.Q6_K
        if ftype == "Q4_K_S" and m.arch != "falcon" and i < n_layer // 8:
            return T.Q5_K
        if ftype in ("Q4_0", "Q5_0") and imatrix and i < n_layer // 8:
            return T.Q4_1 if ftype == "Q4_0" else T.Q5_1
        return new
    if cat == "attn_output" and m.arch != "falcon":
        if n_expert == 8:
            return T.Q5_K if ftype in ("Q2_K", "Q3_K_S", "Q3_K_M", "Q4_K_S", "Q4_K_M", "IQ4_XS") else new
        return {"Q2_K": T.Q3_K, "Q3_K_M": T.Q4_K, "Q3_K_L": T.Q5_K}.get(ftype, new)
    if cat == "attn_output" and ftype == "Q3_K_L":
        return T.Q4_K
    return new
