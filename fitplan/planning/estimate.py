"""What the GPU holds at each precision: weights, KV cache, activations and overheads.

Pure functions of an `Inventory` and a `Workload`; no torch. Each term is separately named so
the policy can reason per device and the JSON can show where memory goes.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import cached_property
from typing import Any

from .. import calibration as C
from ..hardware.machine import ALLOCATORS
from ..model.inventory import Inventory
from ..model.prequant import scheme
from .prequant import held_by_tensor, is_as_stored
from .layout import float_dtype_for, per_tensor
from .workload import Workload
from ..vocab.precision import DTYPE_BYTES, Precision


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



def load_dtype(precision: Precision, compute_dtype: str) -> str:
    """The `dtype=` passed to from_pretrained: the float precision itself, else the compute dtype."""
    return precision.float_dtype or compute_dtype


def _per_tensor(inv: Inventory, precision: Precision, dt: str, alignment: int) -> tuple[tuple[int, int], ...]:
    """Each tensor's (bytes at `precision`, bytes unquantized at `dt`): layout.py's, or for a pre-quantized
    checkpoint as stored (other than bitsandbytes, whose layout is layout.py's) what its method's loader
    holds (fitplan.planning.prequant)."""
    stored = is_as_stored(inv, precision) and not precision.quantized and scheme(inv).known
    return per_tensor(inv, precision, dt, alignment, held_by_tensor(inv, dt, alignment) if stored else None)


def _by_layer(inv: Inventory, precision: Precision, per: tuple[tuple[int, int], ...]):
    """(bytes outside decoder layers, {layer: bytes}, {layer: bytes unquantized}, {layer: bytes of its largest
    module unquantized}) from `_per_tensor`'s sizes. A pre-quantized checkpoint as stored whose safetensors
    headers are known holds their total (`stored_bytes`): the per-tensor sizes then only say how it spreads
    over the layers."""
    outside, layers, floats, modules = 0, {}, {}, {}
    for t, (b, f) in zip(inv.tensors, per):
        idx = t.layer
        if idx is None:
            outside += b
            continue
        layers[idx] = layers.get(idx, 0) + b
        floats[idx] = floats.get(idx, 0) + f
        key = (idx, t.name.rsplit(".", 1)[0])
        modules[key] = modules.get(key, 0) + f
    total = outside + sum(layers.values())
    if inv.stored_bytes is not None and is_as_stored(inv, precision) and total:
        layers = {i: b * inv.stored_bytes // total for i, b in layers.items()}
        outside = inv.stored_bytes - sum(layers.values())
    largest: dict[int, int] = {}
    for (idx, _), f in modules.items():
        largest[idx] = max(largest.get(idx, 0), f)
    return outside, layers, floats, largest


def weights_by_layer(inv: Inventory, precision: Precision, compute_dtype: str,
                     alignment: int = 1) -> tuple[int, dict[int, int]]:
    """(bytes outside decoder layers, {layer index: bytes}) — the unit the split moves between GPUs."""
    dt = load_dtype(precision, compute_dtype)
    outside, layers, _, _ = _by_layer(inv, precision, _per_tensor(inv, precision, dt, alignment))
    return outside, layers


def weights_bytes(inv: Inventory, precision: Precision, compute_dtype: str, alignment: int = 1) -> int:
    outside, layers = weights_by_layer(inv, precision, compute_dtype, alignment)
    return outside + sum(layers.values())


def unquantized_bytes(inv: Inventory, load_dtype: str = "bfloat16") -> dict[str, int]:
    """Bytes at `load_dtype` of what bitsandbytes leaves as it is, by kind: fused 3-D expert
    parameters, linear weights inside the layers it skips (subclasses of nn.Linear), embeddings and
    lm_head (2-D, outside the layers), and norms, biases and buffers."""
    out = {"fused experts": 0, "skipped linear layers": 0, "embeddings": 0, "norms and buffers": 0}
    for t in inv.tensors:
        if t.quantizable:
            continue
        b = t.numel * DTYPE_BYTES[float_dtype_for(t, load_dtype)]
        if t.buffer or len(t.shape) < 2:
            out["norms and buffers"] += b
        elif len(t.shape) == 3:
            out["fused experts"] += b
        elif t.layer is None:
            out["embeddings"] += b
        else:
            out["skipped linear layers"] += b
    return out


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



def static_kv_bytes_per_layer(inv: Inventory, work: Workload, kv_dtype: str) -> list[int]:
    """KV cache per layer as `StaticCache` allocates it: `max_cache_len` (the context) positions for a
    full-attention layer, `min(context, window)` for a sliding-window one, for every sequence."""
    eb = DTYPE_BYTES[kv_dtype]
    out = []
    for layer in inv.kv_layers:
        positions = min(work.context, layer.window) if layer.window else work.context
        out.append((layer.elements_per_token * eb + layer.fixed_bytes_per_token) * positions * work.batch)
    return out


def compile_workspace_bytes(inv: Inventory, work: Workload, kv_dtype: str, gen) -> int:
    """What a compiled static-cache decode holds besides the cache, in CUDA graphs' private pool: the
    measured fixed part (calibration.COMPILE_WORKSPACE_BYTES) and the largest layer's K and V repeated
    to the query heads. SDPA gets a mask at a compiled static-cache decode step (the mask is not skipped
    while tracing), so transformers' `use_gqa_in_sdpa` says no on CUDA and `repeat_kv` copies them, on
    every release: on an H200 (torch 2.11), transformers 5.25 held the same allocated peak as 5.17 to the
    byte at Llama-3.1-8B 16384 x 2 (docs/accuracy.md; a CPU run without compile had suggested 5.24 did
    not copy them, and a 5.25 plan that left them out ran out of memory)."""
    if not (gen.static and gen.compile):
        return 0
    extra = 0
    if inv.num_key_value_heads and inv.num_attention_heads:
        groups = inv.num_attention_heads // inv.num_key_value_heads
        if groups > 1:  # repeat_kv returns K and V as they are for one group
            extra = groups * max(static_kv_bytes_per_layer(inv, work, kv_dtype), default=0)
    return C.COMPILE_WORKSPACE_BYTES + extra


def workspace_bytes(inv: Inventory, precision: Precision, work: Workload, compute_dtype: str) -> int:
    """Transient buffers bitsandbytes adds during a prefill matmul, for the largest packed layer.

    4-bit: with more than one token, the weight is dequantized to the compute dtype before the
    matmul (out x in elements). LLM.int8(): the input is quantized to int8 and the product comes
    back as int32 and is dequantized into fp16 (tokens x in + INT8_MATMUL_OUT_BYTES x tokens x out
    bytes), or, when larger, the
    fp16 copies of outlier weight columns (calibration.INT8_OUTLIER_WEIGHT_COPIES).
    """
    packed = [t for t in inv.tensors if t.quantizable]
    if not precision.quantized or not packed:
        return 0
    tokens = work.context * work.batch
    largest = max(t.numel for t in packed)
    if precision.bits == 4:
        return largest * DTYPE_BYTES[compute_dtype]
    per_tokens = max(tokens * (t.numel // (t.out_features or t.shape[0]))
                     + C.INT8_MATMUL_OUT_BYTES * tokens * (t.out_features or t.shape[0]) for t in packed)
    return max(int(C.INT8_OUTLIER_WEIGHT_COPIES * largest * 2), per_tokens)


def attention_score_bytes(inv: Inventory, work: Workload) -> int:
    """One layer's attention scores at the prefill peak when transformers materialises them (eager
    attention, or SDPA's math fallback; see fitplan.model.hf.watch_sdpa): batch x heads x context², several
    copies (calibration.EAGER_SCORE_BYTES). Zero for attention kernels that never hold them."""
    score_bytes = {"eager": C.EAGER_SCORE_BYTES, "sdpa-math": C.MATH_SDPA_SCORE_BYTES}.get(inv.attn_implementation)
    return work.batch * inv.num_attention_heads * work.context**2 * score_bytes if score_bytes else 0


def activation_bytes(inv: Inventory, work: Workload, compute_dtype: str, precision: Precision | None = None) -> int:
    """Peak transient memory of one prefill forward at `context` tokens, with last-position logits.

    The residual stream is live throughout; attention and the MLP peak at different moments, so
    the larger of the phases counts, not their sum: attention holds q and the layer's new k/v
    (and, under eager attention, the scores), the MLP its intermediates, MoE dispatch buffers
    and bitsandbytes' matmul workspace, and a state-space or linear-attention layer without its
    kernel package its torch path's fp32 scratch (`Inventory.prefill_scratch_per_token`).
    """
    eb = DTYPE_BYTES[compute_dtype]
    tokens = work.context * work.batch
    kv_per_token = max((layer.elements_per_token for layer in inv.kv_layers), default=0)
    resident = tokens * C.ACT_HIDDEN_COPIES * inv.hidden_size * eb
    attn = tokens * (inv.hidden_size + kv_per_token) * eb + attention_score_bytes(inv, work)
    mlp = tokens * C.ACT_MLP_COPIES * inv.intermediate_size * eb
    if inv.experts_per_token:
        mlp += tokens * inv.experts_per_token * eb * (
            C.ACT_MOE_HIDDEN_COPIES * inv.hidden_size + C.ACT_MOE_MLP_COPIES * inv.expert_intermediate_size)
        mlp += tokens * eb * C.ACT_MOE_TOKEN_HIDDEN_COPIES * inv.hidden_size
    if precision is not None:
        mlp += workspace_bytes(inv, precision, work, compute_dtype)
    scan = tokens * inv.prefill_scratch_per_token  # a state-space layer's torch path, in place of attention
    return resident + max(attn, mlp, scan) + C.LOGITS_COPIES * work.batch * inv.vocab_size * 4


def _fragmentation(inv: Inventory, precision: Precision, per: tuple[tuple[int, int], ...]) -> int:
    """Reserved-but-free memory the load leaves behind (see calibration.LOAD_FRAGMENTATION), from `_per_tensor`'s
    unaligned sizes."""
    stored = is_as_stored(inv, precision)  # loaded packed, not quantized on the GPU
    kind = "float" if stored or not precision.quantized else ("int8" if precision.bits == 8 else "4bit")
    frag = 0.0
    for t, (b, _) in zip(inv.tensors, per):
        fused = len(t.shape) == 3 and not t.buffer
        rate = C.LOAD_FRAGMENTATION["fused_experts"] if fused else (
            C.LOAD_FRAGMENTATION[kind] if (t.quantizable or kind == "float") else C.LOAD_FRAGMENTATION["float"])
        frag += b * rate
    return int(frag)


def overhead_bytes(dynamic_bytes: int, device: str, n_devices: int = 1, fragmentation: int = 0,
                   allocator: str = "expandable") -> int:
    """CUDA context per device plus the allocator's reserve. With expandable segments (what
    `fitplan.load()` sets up) a small share of the dynamic allocations: free pages are unmapped under
    pressure, so the load's holes do not stay reserved. With torch's default caching allocator the
    larger of a share of the dynamic allocations and the load's fragmentation (generation reuses
    those holes)."""
    if device != "cuda":
        return 0
    if allocator == "expandable":
        return n_devices * (C.CUDA_CONTEXT_BYTES + C.EXPANDABLE_RESERVE_FIXED_BYTES) + int(
            C.EXPANDABLE_RESERVE_FRACTION * dynamic_bytes)
    if allocator != "caching":
        raise ValueError(f"allocator must be one of {ALLOCATORS}, not {allocator!r}")
    reserve = max(int(C.ALLOCATOR_RESERVE_FRACTION * dynamic_bytes), fragmentation)
    return n_devices * C.CUDA_CONTEXT_BYTES + reserve + n_devices * C.ALLOCATOR_RESERVE_FIXED_BYTES


@dataclass(frozen=True)
class Sizes:
    """One precision's sizes, computed once, per decoder layer: what the estimate table sums and what
    the placement packs onto GPUs layer by layer (as accelerate hands `compute_module_sizes` to
    `infer_auto_device_map`). Weights are rounded as `device`'s allocator rounds them."""

    precision: str
    load_dtype: str
    device: str
    outside_weights: int  # embeddings, final norm, lm_head: everything outside the decoder layers
    layer_weights: tuple[tuple[int, int], ...]  # (layer index, bytes), in layer order
    layer_kv: tuple[int, ...]  # KV cache per layer at the workload
    activation: int  # the transient peak, paid on every device the hidden states pass through
    weights_total: int  # what the weights hold (a pre-quantized checkpoint: what it stores)
    fragmentation: int  # reserved-but-free memory the load leaves (calibration.LOAD_FRAGMENTATION)
    # Per layer, unquantized at the load dtype (`_by_layer`): what an offloaded layer holds
    # in CPU RAM and copies to the GPU each step, and the largest module of it the GPU stages at once.
    layer_float: tuple[tuple[int, int], ...] = ()
    layer_stream: tuple[tuple[int, int], ...] = ()

    quantized: bool = False  # the precision packs weights (bitsandbytes, or a pre-quantized format)
    bits: int | None = None  # its bits per packed weight, where it has one
    allocator: str = "expandable"  # the CUDA allocator setting the reserve is planned for (machine.ALLOCATORS)
    generation: Any = None  # the generation setup sized here (fitplan.planning.generation.Generation); None: plain
    moe: bool = False  # routed experts (`Inventory.experts_per_token`): a decode setup of its own (planning/speed.py)

    def kv_of(self, layer: int) -> int:
        return self.layer_kv[layer] if layer < len(self.layer_kv) else 0

    def float_of(self, layer: int) -> int:
        return self._float_map.get(layer, 0)

    def stream_of(self, layer: int) -> int:
        return self._stream_map.get(layer, 0)

    @cached_property
    def _float_map(self) -> dict[int, int]:
        return dict(self.layer_float)

    @cached_property
    def _stream_map(self) -> dict[int, int]:
        return dict(self.layer_stream)

    def overhead(self, weights: int, kv: int) -> int:
        """Context and allocator reserve of one device holding `weights` and `kv` of these sizes: its
        share of the load's fragmentation, in proportion to the weights it holds."""
        return overhead_bytes(kv + self.activation, self.device, fragmentation=int(weights * self._fragmentation_rate),
                              allocator=self.allocator)

    @cached_property
    def _fragmentation_rate(self) -> float:
        """The load's fragmentation per byte of weights held (computed once: the placement asks per layer)."""
        held = self.outside_weights + sum(b for _, b in self.layer_weights)
        return self.fragmentation / held if held else 0.0

    def estimate(self) -> Estimate:
        """The whole model on one device."""
        kv = sum(self.layer_kv)
        return Estimate(self.precision, self.load_dtype, self.weights_total, kv, self.activation,
                        overhead_bytes(kv + self.activation, self.device, fragmentation=self.fragmentation,
                                       allocator=self.allocator),
                        self.device)


_LAYERS_SEEN: dict = {}


def _layers_once(inv: Inventory, precision: Precision, dt: str, alignment: int):
    """`_by_layer` of one inventory and precision, and its load fragmentation, walked once: a plan that does not fit re-runs the
    policy at other contexts, batches and GPUs for its suggestions, and a 235B MoE has 18,000 tensors
    (benchmarks/nofit_speed.py). Keyed by the inventory object itself (held, so its id is not reused)."""
    key = (id(inv), precision.name, dt, alignment)
    hit = _LAYERS_SEEN.get(key)
    if hit is not None and hit[0] is inv:
        return hit[1]
    if len(_LAYERS_SEEN) >= 64:
        _LAYERS_SEEN.clear()
    per = _per_tensor(inv, precision, dt, alignment)
    unaligned = per if alignment == 1 else _per_tensor(inv, precision, dt, 1)  # what the fragmentation rates apply to
    value = (*_by_layer(inv, precision, per), _fragmentation(inv, precision, unaligned))
    _LAYERS_SEEN[key] = (inv, value)
    return value


def sizes(inv: Inventory, precision: Precision, work: Workload, compute_dtype: str, device: str = "cuda", *,
          allocator: str = "expandable", generation=None) -> Sizes:
    """Every size of `precision` at `work`, per layer, with the reserve of `allocator`; see `Sizes`. With a
    static-cache `generation` (fitplan.planning.generation), the KV cache is what its `StaticCache`
    allocates up front and the activation peak adds the compiled decode's workspace."""
    alignment = C.CUDA_ALLOCATION_ALIGNMENT if device == "cuda" else 1
    dt = load_dtype(precision, compute_dtype)
    static = generation is not None and generation.static
    kv = static_kv_bytes_per_layer(inv, work, dt) if static else kv_bytes_per_layer(inv, work, dt)
    act = activation_bytes(inv, work, dt, precision)
    if generation is not None:
        act += compile_workspace_bytes(inv, work, dt, generation)
    outside, per_layer, floats, stream, fragmentation = _layers_once(inv, precision, dt, alignment)
    # the stored total is what the checkpoint as stored holds; a row transformers dequantizes (fp8, mxfp4 where their
    # kernels cannot run) holds the dense weights its layers sum to, not the file's bytes
    stored = inv.prequantized and inv.stored_bytes is not None and is_as_stored(inv, precision)
    total = inv.stored_bytes if stored else outside + sum(per_layer.values())
    return Sizes(precision.name, dt, device, outside, tuple(sorted(per_layer.items())),
                 tuple(kv), act, total, fragmentation, tuple(sorted(floats.items())),
                 tuple(sorted(stream.items())), precision.quantized, precision.bits, allocator, generation,
                 inv.experts_per_token > 0)


def estimate(inv: Inventory, precision: Precision, work: Workload, compute_dtype: str,
             device: str = "cuda", *, allocator: str = "expandable") -> Estimate:
    """Everything one device would hold to run `work` with the whole model on it."""
    return sizes(inv, precision, work, compute_dtype, device, allocator=allocator).estimate()
