"""SGLang's memory accounting, mirrored from its source at `fitplan.versions.ENGINE_VERSIONS["sglang"]`.

- budget (python/sglang/srt/model_executor/model_runner.py `profile_max_num_token`): with `total` the free memory
  after torch.distributed is initialised (before the weights: torch's total less the CUDA context and
  torch.distributed's buffers, `preload_bytes`) and `available` the free memory after the weights load, both in GiB
  and the smallest over TP ranks, `rest = available - total * (1 - mem_fraction_static)` and
  `max_total_num_tokens = rest * 2**30 // cell_size`. Activations and CUDA graphs live in the
  `total * (1 - mem_fraction_static)` left over; they are not subtracted.
- cell size: `get_num_kv_heads(tp) * head_dim * num_hidden_layers * 2 * element_size(kv_cache_dtype)`; for MLA
  `(kv_lora_rank + qk_rope_head_dim) * num_hidden_layers * element_size` on every rank.
- defaults (python/sglang/srt/server_args.py `__post_init__`): `mem_fraction_static` 0.88 at TP 1, 0.87 at TP 2-3,
  0.85 at 4-7, 0.81 at 8-15, 0.79 at 16 and more; `chunked_prefill_size` 2048 below 25,000 MB, else 8192.
- the log: "KV Cache is allocated. #tokens: N, K size: X GB, V size: X GB" with X = N * cell / 2 / 2**30.
"""
from __future__ import annotations

from .. import calibration as C
from ..hardware.machine import GPU
from ..model.inventory import Inventory
from ..versions import ENGINE_VERSIONS
from .common import kv_element_bytes, load_dtype, nvlink_board, sizer
from .model import AttentionGeometry
from .plan import EnginePlan, Knobs, RankPlan
from .shard import pp_layers, rank_weights
from .vllm import dtype_label, torch_total

NAME = "sglang"
VERSION = ENGINE_VERSIONS[NAME]
def preload_bytes(gpu: GPU, tp: int, pp: int) -> int:
    """What one rank holds before its weights load: the CUDA context, and torch.distributed's buffers when there is
    more than one rank (NVLink boards under TP hold far more of them than PCIe cards or pipeline-only ranks)."""
    if tp * pp == 1:
        return C.CUDA_CONTEXT_MEASURED_BYTES
    return C.CUDA_CONTEXT_MEASURED_BYTES + (C.SGLANG_DIST_INIT_NVLINK_BYTES if tp > 1 and nvlink_board(gpu)
                                            else C.SGLANG_DIST_INIT_OTHER_BYTES)


def default_fraction(tp: int) -> float:
    return 0.79 if tp >= 16 else 0.81 if tp >= 8 else 0.85 if tp >= 4 else 0.87 if tp >= 2 else 0.88


def plan_sglang(inv: Inventory, geo: AttentionGeometry, gpu: GPU, knobs: Knobs, *, tp: int, pp: int,
                max_model_len: int, concurrency: int = 1, gpus_per_node: int | None = None) -> EnginePlan:
    dtype = load_dtype(inv, gpu.compute_capability)
    kv_dtype = knobs.kv_cache_dtype or "auto"
    kv_e = kv_element_bytes(kv_dtype, dtype)
    frac = knobs.gpu_memory_utilization or default_fraction(tp * pp)
    stages = rank_weights(inv, geo, sizer(inv, dtype, knobs.quantization), tp, pp)
    layers = pp_layers(inv.num_layers, pp)
    per_layer = (geo.mla_cache_elements if geo.mla else 2 * geo.kv_heads_per_rank(tp) * geo.head_dim) * kv_e
    preload = preload_bytes(gpu, tp, pp)
    total = torch_total(gpu) - preload
    ranks, cells = [], []
    for s, w in enumerate(stages):
        rest = (total - w.total) - int(total * (1 - frac))
        cell = per_layer * len(layers[s])
        cells.append((rest, cell))
        for r in range(tp):
            ranks.append(RankPlan(s * tp + r, s, w.layers, w.total, 0, preload, 0, rest))
    tokens = min(max(rest, 0) // cell for rest, cell in cells)
    chunk = knobs.max_num_batched_tokens or (2048 if gpu.total_bytes < 25_000 * 10**6 else 8192)
    seqs = knobs.max_num_seqs or 0  # 0: SGLang derives max_running_requests from the pool
    notes = [f"mirrors SGLang {VERSION}: activations and CUDA graphs use the 1 - mem_fraction_static margin, "
             "which SGLang does not check at startup"]
    if geo.sliding_layers:
        notes.append(f"{geo.sliding_layers} sliding-window layers are sized as full attention: SGLang's separate SWA "
                     "pool (--swa-full-tokens-ratio) is not mirrored, so the token count is a lower bound")
    return EnginePlan(
        NAME, VERSION, tp, pp, 1, gpus_per_node or tp * pp, gpu.name, dtype_label(inv, dtype, knobs), kv_dtype, 1,
        frac, seqs, chunk, knobs.enforce_eager, tuple(ranks), per_layer * inv.num_layers // pp,
        min(r.available_kv_cache_bytes for r in ranks), tokens, tokens / max_model_len if max_model_len else 0.0,
        max_model_len, concurrency, min(tokens, inv.max_positions or tokens), knobs.quantization, (), tuple(notes))
