"""What an engine needs to know about a model beyond fitplan's `Inventory`: the attention geometry the engine
shards (KV heads, head size, MLA latents, sliding windows, linear-attention state), read once from the checkpoint's
config.

Pure data from a config dict; no torch, no engine.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import OptionError, UnsupportedModelError, ref
from ..model.inventory import Inventory

#: model_types whose linear-attention layers are Gated DeltaNet as vLLM's Qwen3-Next model file builds them
#: (vllm/model_executor/models/qwen3_next.py `Qwen3NextGatedDeltaNet`); other recurrent kinds are not mirrored.
GATED_DELTA_NET_MODELS = ("qwen3_next",)
#: vLLM 0.11's Qwen3NextConfig (vllm/transformers_utils/configs/qwen3_next.py) makes every 4th layer full attention
#: when config.json lists no `layer_types` (it does not read `full_attention_interval`).
QWEN3_NEXT_FULL_EVERY = 4


def _divide(n: int, tp: int, what: str) -> int:
    """vllm.distributed.divide: `n` split over `tp` ranks, which must divide it."""
    if n % tp:
        raise OptionError(f"tensor_parallel_size {tp} does not divide the {n} {what}; use a divisor of them",
                          option="tensor_parallel_size")
    return n // tp


@dataclass(frozen=True)
class GatedDeltaNet:
    """Gated DeltaNet linear attention (Qwen3-Next) as vLLM reads it from config.json (`linear_num_key_heads`,
    `linear_num_value_heads`, `linear_key_head_dim`, `linear_value_head_dim`, `linear_conv_kernel_dim`)."""

    num_k_heads: int
    num_v_heads: int
    head_k_dim: int
    head_v_dim: int
    conv_kernel: int

    def state_shapes(self, tp: int, num_spec: int = 0) -> tuple[tuple[int, int], tuple[int, int, int]]:
        """Per sequence on one of `tp` ranks, vLLM's `MambaStateShapeCalculator.gated_delta_net_state_shape`
        (vllm/model_executor/layers/mamba/mamba_utils.py): the convolution state `(kernel - 1 + num_spec,
        conv_dim / tp)` over q, k and v (`conv_dim = 2 k_heads k_dim + v_heads v_dim`) and the recurrent state
        `(v_heads / tp, k_dim, v_dim)`: the heads split over the ranks as the model file splits them."""
        conv_dim = self.head_k_dim * self.num_k_heads * 2 + self.head_v_dim * self.num_v_heads
        return ((self.conv_kernel - 1 + num_spec, _divide(conv_dim, tp, "linear-attention convolution channels")),
                (_divide(self.num_v_heads, tp, "linear-attention value heads"), self.head_k_dim, self.head_v_dim))

    def state_elements(self, tp: int) -> int:
        """Elements of state one sequence keeps in one layer on one rank (both states, one dtype in vLLM 0.11)."""
        (a, b), (h, k, v) = self.state_shapes(tp)
        return a * b + h * k * v


@dataclass(frozen=True)
class AttentionGeometry:
    """The attention shape of one model as vLLM and SGLang read it from config.json.

    `kv_heads`: key/value heads (`num_key_value_heads`, else `num_attention_heads`); `head_dim` the K/V head size;
    `mla`: DeepSeek-style multi-head latent attention, whose cache holds `kv_lora_rank + qk_rope_head_dim` per
    token on every rank; `layer_windows`: per decoder layer, the sliding window (None: full attention);
    `linear_attention` (Gated DeltaNet) with `recurrent_layers`, per decoder layer whether it is a linear-attention
    layer that keeps a fixed state per sequence instead of a KV cache.
    """

    num_layers: int
    num_heads: int
    kv_heads: int
    head_dim: int
    mla: bool = False
    mla_cache_elements: int = 0
    layer_windows: tuple[int | None, ...] = ()
    experts: int = 0
    vocab_size: int = 0
    linear_attention: GatedDeltaNet | None = None
    recurrent_layers: tuple[bool, ...] = ()

    @property
    def attention_layers(self) -> tuple[int, ...]:
        """Indices of the layers with a KV cache (every layer but the recurrent ones)."""
        return tuple(i for i in range(self.num_layers)
                     if not (i < len(self.recurrent_layers) and self.recurrent_layers[i]))

    @property
    def state_layers(self) -> tuple[int, ...]:
        """Indices of the linear-attention layers (a fixed state per sequence)."""
        return tuple(i for i, r in enumerate(self.recurrent_layers) if r)

    @property
    def sliding_layers(self) -> int:
        return sum(1 for w in self.layer_windows if w)

    def kv_heads_per_rank(self, tp: int) -> int:
        """vLLM's and SGLang's `get_num_kv_heads(tp)`: max(1, kv_heads // tp) — replicated once tp exceeds them."""
        return max(1, self.kv_heads // tp)


def _text(config: dict) -> dict:
    return config.get("text_config") or config.get("llm_config") or config


def geometry(config: dict) -> AttentionGeometry:
    """The `AttentionGeometry` of a config.json (a vision-language config: its text model)."""
    c = _text(config)
    try:
        layers = int(c["num_hidden_layers"])
        heads = int(c["num_attention_heads"])
    except (KeyError, TypeError, ValueError):
        raise UnsupportedModelError(
            f"config.json of model_type {c.get('model_type')!r:.40} has no num_hidden_layers/num_attention_heads; "
            "the engine plans need them", model_type=c.get("model_type")) from None
    kv = int(c.get("num_key_value_heads") or heads)
    head_dim = int(c.get("head_dim") or int(c["hidden_size"]) // heads)
    mla = bool(c.get("kv_lora_rank"))
    mla_elems = int(c.get("kv_lora_rank") or 0) + int(c.get("qk_rope_head_dim") or 0) if mla else 0
    windows = _windows(c, layers)
    experts = int(c.get("n_routed_experts") or c.get("num_experts") or c.get("num_local_experts") or 0)
    linear, recurrent = _linear_attention(c, layers)
    return AttentionGeometry(layers, heads, kv, head_dim, mla, mla_elems, windows, experts,
                             int(c.get("vocab_size") or 0), linear, recurrent)


def _linear_attention(c: dict, layers: int) -> tuple[GatedDeltaNet | None, tuple[bool, ...]]:
    """Qwen3-Next's Gated DeltaNet and which layers use it (`layer_types`, else every layer but each 4th); (None,
    ()) for any other model_type."""
    if c.get("model_type") not in GATED_DELTA_NET_MODELS:
        return None, ()
    try:
        gdn = GatedDeltaNet(int(c["linear_num_key_heads"]), int(c["linear_num_value_heads"]),
                            int(c["linear_key_head_dim"]), int(c["linear_value_head_dim"]),
                            int(c["linear_conv_kernel_dim"]))
    except (KeyError, TypeError, ValueError):
        raise UnsupportedModelError(
            f"config.json of model_type {c.get('model_type')!r:.40} lacks the linear_* keys of its Gated DeltaNet "
            "layers; the engine plans need them", model_type=c.get("model_type")) from None
    types = c.get("layer_types")
    if not (isinstance(types, list) and len(types) == layers):
        types = ["linear_attention" if (i + 1) % QWEN3_NEXT_FULL_EVERY else "full_attention" for i in range(layers)]
    return gdn, tuple(t == "linear_attention" for t in types)


def _windows(c: dict, layers: int) -> tuple[int | None, ...]:
    """Per layer the sliding window as vLLM applies it: `layer_types` when the config lists them, else Gemma 2/3's
    interleave (`sliding_window_pattern`), else a window on every layer only when `use_sliding_window` is not False
    (Qwen2 configs carry a window they do not use)."""
    w = c.get("sliding_window")
    types = c.get("layer_types")
    if isinstance(types, list) and len(types) == layers:
        return tuple(int(w) if (t == "sliding_attention" and w) else None for t in types)
    if not w or c.get("use_sliding_window") is False:
        return (None,) * layers
    pattern = c.get("sliding_window_pattern")
    if isinstance(pattern, int) and pattern > 1:
        return tuple(None if (i + 1) % pattern == 0 else int(w) for i in range(layers))
    if c.get("model_type") == "gemma2":
        return tuple(int(w) if i % 2 == 0 else None for i in range(layers))
    if c.get("model_type") in ("qwen2", "qwen2_moe", "qwen3", "qwen3_moe"):
        return (None,) * layers  # use_sliding_window defaults to False there
    return (int(w),) * layers


def check_state(inv: Inventory, geo: AttentionGeometry, engine: str, model_id: str, version: str, *,
                state_pools: tuple[str, ...]) -> None:
    """Recurrent state is planned where fitplan mirrors the engine's state pool: at the mirrored releases in
    `state_pools` (vLLM 0.11's, for Gated DeltaNet: Qwen3-Next); any other engine, release or state kind is refused in
    one line."""
    if not any(k.state_elements or k.state_fixed_bytes for k in inv.kv_layers):
        return
    if geo.linear_attention is None:
        raise UnsupportedModelError(f"{model_id} keeps recurrent (Mamba / linear-attention) state of a kind fitplan "
                                    f"does not mirror on {engine} (vLLM's Gated DeltaNet pool only, Qwen3-Next): plan "
                                    "it with engine transformers", model_type=inv.model_type)
    if engine != "vllm":  # SGLang 0.4.9 (July 2025) predates Qwen3-Next; sgl-project/sglang#10233 added it, MambaPool
        raise UnsupportedModelError(f"{model_id} keeps linear-attention state: {engine} {version}, the "
                                    "version fitplan mirrors, has no model for it, and fitplan does not mirror the "
                                    f"later {engine} state pool: plan it with engine vllm or transformers",
                                    model_type=inv.model_type)
    if version not in state_pools:  # 0.19 reworked the pool (mamba_block_size, prefix caching of state)
        raise UnsupportedModelError(f"{model_id} keeps linear-attention state: fitplan mirrors vLLM's state pool as "
                                    f"{', '.join(state_pools)} builds it, not as {version} does: plan it with "
                                    f"{ref('engine_version', state_pools[-1])} (a later release may differ), or with "
                                    f"{ref('engine', 'transformers')}", model_type=inv.model_type)


def check_parallel(geo: AttentionGeometry, tp: int, pp: int) -> None:
    """vLLM's own checks: attention heads divide by TP; layers at least PP."""
    if tp < 1 or pp < 1:
        raise OptionError("tensor_parallel_size and pipeline_parallel_size must be 1 or more", option="tensor_parallel_size")
    if geo.num_heads % tp:
        raise OptionError(f"tensor_parallel_size {tp} does not divide the {geo.num_heads} attention heads; use a "
                         "divisor of them (or pipeline parallelism)", option="tensor_parallel_size")
    if geo.kv_heads > tp and geo.kv_heads % tp:
        raise OptionError(f"tensor_parallel_size {tp} does not divide the {geo.kv_heads} KV heads",
                         option="tensor_parallel_size")
    if pp > geo.num_layers:
        raise OptionError(f"pipeline_parallel_size {pp} exceeds the {geo.num_layers} layers",
                         option="pipeline_parallel_size")


def layouts(geo: AttentionGeometry, n_gpus: int, per_node: int, knobs) -> list[tuple[int, int]]:
    """(tp, pp) pairs to try, fewest GPUs first; a forced size is the only one tried. Within a node only tensor
    parallelism (a power of two that divides the attention heads, and the KV heads it does not exceed); pipeline
    stages across nodes, or within a node only where no TP above 1 divides the heads (as vLLM's and SGLang's
    docs advise)."""
    if knobs.tensor_parallel_size or knobs.pipeline_parallel_size:
        return [(knobs.tensor_parallel_size or 1, knobs.pipeline_parallel_size or 1)]

    def divides(tp: int) -> bool:
        return geo.num_heads % tp == 0 and (geo.kv_heads <= tp or geo.kv_heads % tp == 0)

    tps = [t for t in (1, 2, 4, 8, 16, 32, 64) if t <= per_node and divides(t)]
    out = {(t, 1) for t in tps}
    nodes = n_gpus // per_node
    out |= {(tps[-1], k) for k in range(2, nodes + 1) if k <= geo.num_layers}  # whole nodes, one stage each
    if tps == [1]:  # no TP divides the heads: pipeline stages within the node too
        out |= {(1, k) for k in range(2, min(n_gpus, geo.num_layers) + 1)}
    return sorted(out, key=lambda tp_pp: (tp_pp[0] * tp_pp[1], tp_pp[1]))


def largest_tp(geo: AttentionGeometry, n_gpus: int) -> int | None:
    """The largest power-of-two tensor parallel size up to `n_gpus` that divides the attention heads (and the KV
    heads it does not exceed); None when none above 1 does."""
    return max((t for t in (2, 4, 8, 16, 32, 64) if t <= n_gpus and geo.num_heads % t == 0
                and (geo.kv_heads <= t or geo.kv_heads % t == 0)), default=None)
