"""What-if: the GGUF file `llama-quantize` would write from a transformers model, per file type.

Input is fitplan's `Inventory` (transformers' own tensor names and shapes, built on the meta
device). Each weight is renamed the way llama.cpp's converter does it, with the `gguf` package's
own `TensorNameMap` (the table `convert_hf_to_gguf.py` uses), its shape reversed into ggml order,
and given the type `mixes.tensor_type` says. The result is a `GGUFModel` with `origin="estimate"`,
planned exactly like a real file's header.

The header (metadata + tensor infos) is estimated too: tensor infos exactly from the names, the
metadata from the vocabulary size (`HEADER_*` below); it is a few MB against GBs of weights.
"""
from __future__ import annotations

from dataclasses import dataclass

import gguf
from gguf import GGMLQuantizationType as T

from ..errors import UnsupportedModelError
from ..model.inventory import Inventory
from .mixes import ModelTraits, tensor_type
from .model import DEFAULT_ALIGNMENT, GGUFModel, GGUFTensor
from .ggml_types import FileType, file_type

#: transformers `model_type` -> the gguf architecture `convert_hf_to_gguf.py` writes for it.
ARCHITECTURES: dict[str, gguf.MODEL_ARCH] = {
    "llama": gguf.MODEL_ARCH.LLAMA, "mistral": gguf.MODEL_ARCH.LLAMA, "mixtral": gguf.MODEL_ARCH.LLAMA,
    "qwen2": gguf.MODEL_ARCH.QWEN2, "qwen3": gguf.MODEL_ARCH.QWEN3, "qwen2_moe": gguf.MODEL_ARCH.QWEN2MOE,
    "qwen3_moe": gguf.MODEL_ARCH.QWEN3MOE, "gemma": gguf.MODEL_ARCH.GEMMA, "gemma2": gguf.MODEL_ARCH.GEMMA2,
    "gemma3_text": gguf.MODEL_ARCH.GEMMA3, "phi3": gguf.MODEL_ARCH.PHI3, "olmoe": gguf.MODEL_ARCH.OLMOE,
    "falcon": gguf.MODEL_ARCH.FALCON, "gpt2": gguf.MODEL_ARCH.GPT2, "starcoder2": gguf.MODEL_ARCH.STARCODER2,
    "stablelm": gguf.MODEL_ARCH.STABLELM, "granite": gguf.MODEL_ARCH.GRANITE, "olmo2": gguf.MODEL_ARCH.OLMO2,
}
#: Architectures whose tokenizer llama.cpp stores as BPE (token strings + merges); the others here
#: are SentencePiece (token strings + scores). Llama 3's 128k vocabulary is BPE, Llama 2's 32k SPM.
_BPE_ARCHS = {"qwen2", "qwen3", "qwen2_moe", "qwen3_moe", "gpt2", "starcoder2", "olmoe", "olmo2", "falcon",
              "stablelm", "granite"}
_BPE_VOCAB = 100_000
#: Metadata bytes per vocabulary entry, measured as (published file size - tensor data - tensor
#: infos - 24) / n_vocab on published files whose tensor data fitplan computes exactly (docs/gguf.md,
#: "Header estimate"): BPE 61.0 (Meta-Llama-3.1-8B-Instruct-Q4_K_M.gguf: 128256 tokens, 280147
#: merges) and 39.0 (qwen1_5-7b-chat-q5_k_m.gguf: 151936 tokens, 151387 merges), their mean taken;
#: SPM 22.4 (mistral-7b-instruct-v0.1.Q6_K.gguf, 32000 tokens) to 24.7 (gemma-2b-it-q8_0.gguf).
HEADER_BYTES_PER_TOKEN = {"bpe": 50.0, "spm": 23.5}
#: Metadata besides the tokenizer (architecture keys, chat template): a few KB.
HEADER_FIXED_BYTES = 8_192
#: `general.alignment` the converter and the quantizer write.
ALIGNMENT = DEFAULT_ALIGNMENT

_FUSED_EXPERTS = (".experts.gate_up_proj", ".experts.down_proj")


@dataclass(frozen=True)
class _Named:
    name: str
    shape: tuple[int, ...]  # ggml order
    stored: T


def gguf_architecture(inv: Inventory) -> str:
    arch = ARCHITECTURES.get(inv.model_type)
    if arch is None:
        raise UnsupportedModelError(f"fitplan does not know how llama.cpp converts model_type "
                                    f"'{inv.model_type}' to GGUF: plan a published .gguf file instead",
                                    model_type=inv.model_type)
    return gguf.MODEL_ARCH_NAMES[arch]


def gguf_tensors(inv: Inventory) -> tuple[tuple[_Named, ...], tuple[str, ...]]:
    """The tensors the converter writes, before quantization (ggml shapes, F32 for 1-D tensors and
    MoE routers, F16 otherwise), and notes on weights it could not name."""
    arch = ARCHITECTURES[inv.model_type]
    names = gguf.get_tensor_name_map(arch, inv.num_layers)
    out: list[_Named] = []
    unmapped = []
    for t in inv.tensors:
        if t.buffer:
            continue
        shape = tuple(reversed(t.shape))
        if t.name.endswith(_FUSED_EXPERTS):  # transformers 5 fuses experts into one 3-D parameter
            out.extend(_experts(t.name, t.shape))
            continue
        new = names.get_name(t.name, try_suffixes=(".weight", ".bias"))
        if new is None:
            unmapped.append(t.name)
            new = t.name
        elif not new.endswith((".weight", ".bias")):
            new += ".weight"
        one_d = len(shape) <= 1 or new.endswith(("_norm.weight", "ffn_gate_inp.weight"))
        out.append(_Named(new, shape, T.F32 if one_d else T.F16))
    notes = (f"{len(unmapped)} weight(s) have no llama.cpp name (e.g. {unmapped[0]}); counted at F16",) if unmapped else ()
    return tuple(out), notes


def _experts(name: str, shape: tuple[int, ...]) -> list[_Named]:
    """`experts.gate_up_proj` (E, 2*ff, d) -> ffn_gate_exps and ffn_up_exps (d, ff, E);
    `experts.down_proj` (E, d, ff) -> ffn_down_exps (ff, d, E)."""
    layer = name.split(".layers.")[1].split(".")[0]
    n_exp, rows, cols = shape
    if name.endswith("gate_up_proj"):
        return [_Named(f"blk.{layer}.ffn_{w}_exps.weight", (cols, rows // 2, n_exp), T.F16) for w in ("gate", "up")]
    return [_Named(f"blk.{layer}.ffn_down_exps.weight", (cols, rows, n_exp), T.F16)]


def estimate_gguf(inv: Inventory, ftype: str | FileType, *, imatrix: bool = False) -> GGUFModel:
    """The GGUF file of `inv` quantized as `ftype` (e.g. "Q4_K_M"), as a `GGUFModel` (origin "estimate").

    `imatrix`: quantized with an importance matrix (`llama-quantize --imatrix`); current llama.cpp
    then keeps the first eighth of `ffn_down` at the base type in IQ4_XS and Q4_0 mixes. The default
    is `llama-quantize`'s own (no imatrix), which is also what the published IQ4_XS file in the
    tests measures (docs/gguf.md)."""
    ft = ftype if isinstance(ftype, FileType) else file_type(ftype)
    arch = gguf_architecture(inv)
    named, notes = gguf_tensors(inv)
    kv = inv.kv_layers
    head_dim = _head_dim(inv)
    n_head_kv = tuple(max(1, k.elements_per_token // (2 * head_dim)) if k.elements_per_token else 0 for k in kv) or (
        inv.num_attention_heads,) * inv.num_layers
    traits = ModelTraits(
        arch=arch, n_layer=inv.num_layers, n_gqa=inv.num_attention_heads // max(1, n_head_kv[0]),
        n_expert=_n_experts(named), n_attn_v=sum(1 for t in named if "attn_v.weight" in t.name
                                                 or "attn_qkv.weight" in t.name),
        tied=not any(t.name == "output.weight" for t in named),
        is_70b=arch in ("llama", "qwen2") and inv.num_layers == 80)
    tensors, i_wv = [], 0
    for t in named:
        layer = int(t.name.split(".")[1]) if t.name.startswith("blk.") else None
        typ = tensor_type(ft, t.name, t.shape, layer, traits, stored=t.stored, attn_v_index=i_wv, imatrix=imatrix)
        if "attn_v.weight" in t.name or "attn_qkv.weight" in t.name:
            i_wv += 1
        tensors.append(GGUFTensor(t.name, t.shape, int(typ)))
    header = header_estimate(inv, tuple(tensors))
    a = ALIGNMENT
    data = sum(-(-x.nbytes // a) * a for x in tensors)
    window = next((k.window for k in kv if k.window), None)
    swa = tuple(bool(k.window) for k in kv) if window and arch not in ("llama",) else (False,) * inv.num_layers
    return GGUFModel(
        name=f"{inv.model_id.rsplit('/', 1)[-1]}-{ft.name}.gguf", origin="estimate", architecture=arch,
        file_type=ft.name, tensors=tuple(tensors), n_layer=inv.num_layers, n_embd=inv.hidden_size,
        n_head=inv.num_attention_heads, n_head_kv=n_head_kv, head_dim_k=head_dim, head_dim_v=head_dim,
        n_vocab=inv.vocab_size, context_length=inv.max_positions, header_bytes=header, file_bytes=header + data,
        alignment=a, n_ff=inv.intermediate_size, sliding_window=window if any(swa) else None, swa_layers=swa,
        n_expert=traits.n_expert, n_expert_used=inv.experts_per_token, repo_id=inv.model_id,
        notes=notes)


def _head_dim(inv: Inventory) -> int:
    """q_proj is (n_head * head_dim, hidden) (Gemma's head_dim is not hidden / n_head); else hidden / n_head."""
    q = next((t for t in inv.tensors if t.name.endswith("q_proj.weight")), None)
    return q.shape[0] // inv.num_attention_heads if q is not None else inv.hidden_size // inv.num_attention_heads


def _n_experts(named: tuple[_Named, ...]) -> int:
    exps = next((t for t in named if t.name.endswith("_exps.weight")), None)
    return exps.shape[2] if exps is not None else 0


def header_estimate(inv: Inventory, tensors: tuple[GGUFTensor, ...]) -> int:
    """Bytes before the tensor data: magic, version and counts (24), the metadata (estimated, see
    `HEADER_BYTES_PER_TOKEN`), one info per tensor (name, dims, type, offset: exact), padding."""
    infos = sum(8 + len(t.name.encode()) + 4 + 8 * len(t.shape) + 4 + 8 for t in tensors)
    kind = "bpe" if inv.model_type in _BPE_ARCHS or (
        inv.vocab_size >= _BPE_VOCAB and not inv.model_type.startswith("gemma")) else "spm"
    meta = HEADER_FIXED_BYTES + int(HEADER_BYTES_PER_TOKEN[kind] * inv.vocab_size)
    raw = 24 + meta + infos
    return -(-raw // ALIGNMENT) * ALIGNMENT
