"""What vLLM and SGLang share: the weights one rank loads, the profile-run activation peak, and the KV geometry.

Every constant here is the engine's own (a default, a padding) or a count of buffers read off its source at the
version in `fitplan.versions.ENGINE_VERSIONS`; docs/engines.md gives each with the file it follows.
"""
from __future__ import annotations

import re

from ..errors import OptionError
from ..hardware.machine import GPU
from ..model import prequant as model_prequant
from ..model.inventory import Inventory
from ..planning import prequant
from ..planning.layout import float_dtype_for
from ..vocab.precision import DTYPE_BYTES
from .model import AttentionGeometry

#: `--kv-cache-dtype` values and the bytes per element they store (vllm/utils STR_DTYPE_TO_TORCH_DTYPE).
KV_DTYPE_BYTES = {"auto": None, "bfloat16": 2, "float16": 2, "fp8": 1, "fp8_e4m3": 1, "fp8_e5m2": 1}
#: `--quantization` methods fitplan sizes for an unquantized checkpoint (online quantization): bytes per weight.
ONLINE_QUANT_BYTES = {"fp8": 1}
#: fp8 W8A8 (online fp8, fp8 KV cache) needs Ada/Hopper (compute capability 8.9) for its kernels.
FP8_MIN_CC = (8, 9)

#: NVML names of cards on NVLink/NVSwitch boards (SXM modules); their NVL and PCIe variants are not. NVML names the
#: H800 SXM module plain "NVIDIA H800" (its PCIe card "NVIDIA H800 PCIe"); a DeepSeek-R1 log on two H800 nodes
#: (tests/data/engine_logs.yaml) matches on SGLang with the NVLink figure and not with the PCIe one.
_NVLINK_BOARD = ("SXM", "H100 80GB HBM3", "H800", "H200", "B200", "B300", "GB200")


def nvlink_board(gpu: GPU) -> bool:
    """Whether `gpu` sits on an NVLink/NVSwitch board, told from its NVML name (both engines hold far more for their
    communicators there under tensor parallelism)."""
    name = gpu.name
    return any(k in name for k in _NVLINK_BOARD) and "NVL" not in name and "PCIe" not in name


def load_dtype(inv: Inventory, gpu_cc: tuple[int, int]) -> str:
    """`--dtype auto`: the checkpoint's float dtype; an fp32 checkpoint runs in bf16 (fp16 below Ampere)."""
    dt = inv.checkpoint_dtype
    if dt in ("bfloat16", "float16") and not (dt == "bfloat16" and gpu_cc < (8, 0)):
        return dt
    return "bfloat16" if gpu_cc >= (8, 0) else "float16"


def kv_element_bytes(kv_cache_dtype: str, dtype: str) -> int:
    if kv_cache_dtype not in KV_DTYPE_BYTES:
        raise OptionError(f"kv_cache_dtype must be one of {', '.join(KV_DTYPE_BYTES)}, got {kv_cache_dtype!r:.30}",
                         option="kv_cache_dtype")
    return KV_DTYPE_BYTES[kv_cache_dtype] or DTYPE_BYTES[dtype]


def _is_linear_weight(t) -> bool:
    name = t.name
    return (len(t.shape) >= 2 and not t.buffer and name.endswith(("weight", "proj")) or len(t.shape) == 3) and \
        "norm" not in name and "embed" not in name and "lm_head" not in name and not name.endswith("gate.weight")


#: MoE router weights. The engines build them in the model's dtype whatever transformers does: vLLM's
#: `ReplicatedLinear(hidden, experts, quant_config=None)` takes the default (model) dtype, SGLang's DeepSeek
#: `MoEGate` is `nn.Parameter(torch.empty(experts, hidden))` in the same (vllm/model_executor/models/deepseek_v2.py,
#: qwen3_moe.py, mixtral.py at vLLM 0.11.0; python/sglang/srt/models/deepseek_v2.py at SGLang 0.4.9), while newer
#: transformers declare DeepSeek-V3's router in float32 (5.24 does, 5.0 and 5.17 do not). DeepSeek's
#: `e_score_correction_bias` is the other way round: float32 in both engines (`nn.Parameter(torch.empty(experts,
#: dtype=torch.float32))`, same files), whatever transformers gives it.
_ROUTER_WEIGHT = re.compile(r"(\.gate|router)\.weight$")
_FP32_IN_ENGINES = re.compile(r"\.e_score_correction_bias$")


def _engine_dtype(t, dtype: str) -> str | None:
    """The dtype the engines build an unquantized tensor in where it is theirs, not transformers': None otherwise."""
    if t.buffer or t.quantizable:
        return None
    if _ROUTER_WEIGHT.search(t.name):
        return dtype
    return "float32" if _FP32_IN_ENGINES.search(t.name) else None


def _held_dtype(t, dtype: str) -> str:
    """The float dtype the engine holds an unquantized tensor in: the engine's own where it fixes one, else the
    inventory's."""
    return _engine_dtype(t, dtype) or float_dtype_for(t, dtype)


def sizer(inv: Inventory, dtype: str, quantization: str | None):
    """Bytes of one whole tensor as the engine loads it: a pre-quantized checkpoint as its method stores it
    (fitplan.model.prequant), `--quantization fp8` on a float checkpoint one byte per linear weight, else the
    float dtype (routers in the model's dtype and DeepSeek's score bias in float32, as the engines build them)."""
    if inv.prequantized:
        if quantization:
            raise OptionError(f"quantization: {inv.model_id} is pre-quantized ({inv.prequantized}); the engine reads "
                             "its method from the checkpoint: drop --quantization", option="quantization")
        if model_prequant.scheme(inv).method == "bitsandbytes":  # bitsandbytes' own layout (planning/layout.py)
            from ..planning.layout import tensor_bytes

            stored = prequant.as_stored(inv)
            return lambda t: tensor_bytes(t, stored, dtype)
        held = prequant.held_by_tensor(inv, dtype)
        return lambda t: t.numel * DTYPE_BYTES[_engine_dtype(t, dtype)] if _engine_dtype(t, dtype) else held[t.name]
    if quantization:
        per = ONLINE_QUANT_BYTES.get(quantization)
        if per is None:
            raise OptionError(f"quantization {quantization!r:.30}: fitplan sizes online "
                             f"{', '.join(ONLINE_QUANT_BYTES)} for float checkpoints", option="quantization")
        return lambda t: (t.numel * per if t.quantizable or (_is_linear_weight(t) and len(t.shape) == 3)
                          else t.numel * DTYPE_BYTES[_held_dtype(t, dtype)])
    return lambda t: t.numel * DTYPE_BYTES[_held_dtype(t, dtype)]


#: Live hidden-size buffers through a decoder layer at the profile run: the residual and the hidden states
#: (vLLM's fused add-RMSNorm writes in place; SGLang's layers do the same).
HIDDEN_COPIES = 2


def forward_peak(inv: Inventory, geo: AttentionGeometry, tp: int, tokens: int, e: int) -> int:
    """The largest transient of one forward over `tokens` tokens on one rank: the residual stream plus the larger
    of attention (q, k, v and the attention output, per rank) and the MLP (the gate/up output and the activated
    half, per rank) or, for MoE, fused_moe's three intermediate caches over top-k copies of every token and the
    fp32 router logits (vllm/model_executor/layers/fused_moe/fused_moe.py)."""
    h = inv.hidden_size
    q = geo.num_heads // tp * geo.head_dim if not geo.mla else geo.num_heads // tp * (geo.head_dim + 64)
    kv = 2 * geo.kv_heads_per_rank(tp) * geo.head_dim if not geo.mla else geo.mla_cache_elements
    attn = tokens * (2 * q + kv) * e
    mlp = tokens * 3 * (inv.intermediate_size // tp) * e
    moe = 0
    if inv.experts_per_token:
        ie = inv.expert_intermediate_size // tp
        moe = tokens * inv.experts_per_token * (3 * ie + h) * e + tokens * max(geo.experts, 1) * 4
    return HIDDEN_COPIES * tokens * h * e + max(attn, mlp, moe)
