"""What the GPU holds at each precision: weights, KV cache, activations and overheads.

Pure functions of an `Inventory` and a `Workload`; no torch. Each term is separately named so
the policy can reason per device and the JSON can show where memory goes.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass

from . import calibration as C
from ..model.inventory import Inventory
from .layout import tensor_bytes
from .precision import DTYPE_BYTES, Precision


@dataclass(frozen=True)
class Workload:
    """One generation: `context` is the longest sequence (prompt + new tokens), `batch` sequences at once."""

    context: int = 4096
    batch: int = 1


@dataclass(frozen=True)
class Estimate:
    """Bytes at one precision for the whole model on one device kind (`device` "cuda" or "cpu")."""

    precision: str
    compute_dtype: str
    weights_bytes: int
    kv_cache_bytes: int
    activation_bytes: int
    overhead_bytes: int
    device: str = "cuda"

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.kv_cache_bytes + self.activation_bytes + self.overhead_bytes

    def to_dict(self) -> dict:
        d = asdict(self)
        d["total_bytes"] = self.total_bytes
        return d


_LAYER_INDEX = re.compile(r"\.(\d+)\.")


def layer_of(name: str) -> int | None:
    """Decoder layer index of a tensor name (`model.layers.12.mlp...` -> 12), None outside layers."""
    m = _LAYER_INDEX.search(name)
    return int(m.group(1)) if m else None


def load_dtype(precision: Precision, compute_dtype: str) -> str:
    """The `dtype=` passed to from_pretrained: the float precision itself, else the compute dtype."""
    return precision.float_dtype or compute_dtype


def weights_by_layer(inv: Inventory, precision: Precision, compute_dtype: str,
                     alignment: int = 1) -> tuple[int, dict[int, int]]:
    """(bytes outside decoder layers, {layer index: bytes}) — the unit the split moves between GPUs."""
    dt = load_dtype(precision, compute_dtype)
    outside, layers = 0, {}
    for t in inv.tensors:
        b = tensor_bytes(t, precision, dt, alignment)
        idx = layer_of(t.name)
        if idx is None:
            outside += b
        else:
            layers[idx] = layers.get(idx, 0) + b
    return outside, layers


def weights_bytes(inv: Inventory, precision: Precision, compute_dtype: str, alignment: int = 1) -> int:
    if inv.prequantized and inv.stored_bytes is not None:
        return inv.stored_bytes
    outside, layers = weights_by_layer(inv, precision, compute_dtype, alignment)
    return outside + sum(layers.values())


def kv_bytes_per_layer(inv: Inventory, work: Workload, kv_dtype: str) -> list[int]:
    """Peak KV cache per layer, as `DynamicCache` holds it right after a prefill of `context` tokens.

    Sliding-window layers keep only `window - 1` tokens between decode steps, but after prefill
    their cache is a slice (a view) of the whole prompt's K/V, so at the peak they hold it all.
    A prompt filling the context is the worst case the plan must survive. Recurrent layers (Mamba,
    linear attention, short convolutions) add their per-sequence state, which grows with the
    batch, not the context.
    """
    eb = DTYPE_BYTES[kv_dtype]
    return [(layer.elements_per_token * eb + layer.fixed_bytes_per_token) * work.context * work.batch
            + layer.state_bytes(eb) * work.batch for layer in inv.kv_layers]


def workspace_bytes(inv: Inventory, precision: Precision, work: Workload, compute_dtype: str) -> int:
    """Transient buffers bitsandbytes adds during a prefill matmul, for the largest packed layer.

    4-bit: with more than one token, the weight is dequantized to the compute dtype before the
    matmul (out x in elements). LLM.int8(): the input is quantized to int8 and the product comes
    back as int32 before rescaling (tokens x in + 4 x tokens x out bytes), or, when larger, the
    fp16 copies of outlier weight columns (calibration.INT8_OUTLIER_WEIGHT_COPIES).
    """
    packed = [t for t in inv.tensors if t.quantizable]
    if not precision.quantized or not packed:
        return 0
    tokens = work.context * work.batch
    largest = max(t.numel for t in packed)
    if precision.bits == 4:
        return largest * DTYPE_BYTES[compute_dtype]
    per_tokens = max(tokens * (t.numel // (t.out_features or t.shape[0])) + 4 * tokens * (t.out_features or t.shape[0])
                     for t in packed)
    return max(int(C.INT8_OUTLIER_WEIGHT_COPIES * largest * 2), per_tokens)


def activation_bytes(inv: Inventory, work: Workload, compute_dtype: str, precision: Precision | None = None) -> int:
    """Peak transient memory of one prefill forward at `context` tokens, with last-position logits.

    The residual stream is live throughout; attention and the MLP peak at different moments, so
    the larger of the two phases counts, not their sum: attention holds q and the layer's new k/v
    (and, under eager attention, the scores), the MLP its intermediates, MoE dispatch buffers
    and bitsandbytes' matmul workspace.
    """
    eb = DTYPE_BYTES[compute_dtype]
    tokens = work.context * work.batch
    kv_per_token = max((layer.elements_per_token for layer in inv.kv_layers), default=0)
    resident = tokens * C.ACT_HIDDEN_COPIES * inv.hidden_size * eb
    attn = tokens * (inv.hidden_size + kv_per_token) * eb
    score_bytes = {"eager": C.EAGER_SCORE_BYTES, "sdpa-math": C.MATH_SDPA_SCORE_BYTES}.get(inv.attn_implementation)
    if score_bytes:  # scores materialised (see inspect._watch_sdpa)
        attn += work.batch * inv.num_attention_heads * work.context**2 * score_bytes
    mlp = tokens * C.ACT_MLP_COPIES * inv.intermediate_size * eb
    if inv.experts_per_token:
        mlp += tokens * inv.experts_per_token * eb * (
            C.ACT_MOE_HIDDEN_COPIES * inv.hidden_size + C.ACT_MOE_MLP_COPIES * inv.expert_intermediate_size)
    if precision is not None:
        mlp += workspace_bytes(inv, precision, work, compute_dtype)
    return resident + max(attn, mlp) + C.LOGITS_COPIES * work.batch * inv.vocab_size * 4


def load_fragmentation_bytes(inv: Inventory, precision: Precision, compute_dtype: str) -> int:
    """Reserved-but-free memory the load leaves behind (see calibration.LOAD_FRAGMENTATION)."""
    dt = load_dtype(precision, compute_dtype)
    kind = "float" if not precision.quantized else ("int8" if precision.bits == 8 else "4bit")
    frag = 0.0
    for t in inv.tensors:
        b = tensor_bytes(t, precision, dt)
        fused = len(t.shape) == 3 and not t.buffer
        rate = C.LOAD_FRAGMENTATION["fused_experts"] if fused else (
            C.LOAD_FRAGMENTATION[kind] if (t.quantizable or kind == "float") else C.LOAD_FRAGMENTATION["float"])
        frag += b * rate
    return int(frag)


def overhead_bytes(dynamic_bytes: int, device: str, n_devices: int = 1, fragmentation: int = 0) -> int:
    """CUDA context per device plus the caching allocator's reserve: the larger of the share of
    the dynamic allocations and the load's fragmentation (generation reuses those holes)."""
    if device != "cuda":
        return 0
    reserve = max(int(C.ALLOCATOR_RESERVE_FRACTION * dynamic_bytes), fragmentation)
    return n_devices * C.CUDA_CONTEXT_BYTES + reserve + n_devices * C.ALLOCATOR_RESERVE_FIXED_BYTES


def estimate(inv: Inventory, precision: Precision, work: Workload, compute_dtype: str,
             device: str = "cuda") -> Estimate:
    """Everything one device would hold to run `work` with the whole model on it."""
    alignment = C.CUDA_ALLOCATION_ALIGNMENT if device == "cuda" else 1
    dt = load_dtype(precision, compute_dtype)
    w = weights_bytes(inv, precision, compute_dtype, alignment)
    kv = sum(kv_bytes_per_layer(inv, work, dt))
    act = activation_bytes(inv, work, dt, precision)
    frag = load_fragmentation_bytes(inv, precision, compute_dtype)
    return Estimate(precision.name, dt, w, kv, act, overhead_bytes(kv + act, device, fragmentation=frag), device)
