"""vLLM's memory accounting, mirrored from its source at `fitplan.versions.ENGINE_VERSIONS["vllm"]` (V1 engine).

- budget (vllm/v1/worker/gpu_worker.py `determine_available_memory`): `requested = gpu_memory_utilization x
  total` (torch's total, after the driver's reserve), `available KV = requested - (weights + torch peak increase of
  the profile run + non-torch increase)`. The snapshot is taken after the CUDA context exists, so the context is
  not counted; CUDA graphs are captured after the KV cache is allocated and live in the `1 - utilization` margin
  (not in the budget at this version).
- profile run (vllm/v1/worker/gpu_model_runner.py `profile_run`): one forward over `max_num_batched_tokens`
  tokens split over `min(max_num_seqs, tokens)` requests, then the logits of the last token of each and
  `_dummy_sampler_run` over them (fp32 logits, temperature, softmax probabilities, the exponential draw).
- KV pool (vllm/v1/core/kv_cache_utils.py): pages of `block_size` tokens per layer; layers of one kind share a
  group, hybrid models (sliding + full) get groups of `min(layers per kind)` layers, each group's page tensors
  shared; `num_blocks = available // page_bytes // layers_per_group`, the smallest over ranks;
  "GPU KV cache size" = `num_blocks // groups * block_size`; "Maximum concurrency" = `num_blocks` over the
  blocks one request of `max_model_len` needs (a sliding layer needs `window - 1 + max_num_batched_tokens`).
- defaults (vllm/engine/arg_utils.py `_set_default_args_v1`): on a GPU of >= 70 GiB other than an A100,
  `vllm serve` takes `max_num_batched_tokens` 8192 and `max_num_seqs` 1024, elsewhere 2048 and 256;
  `max_num_seqs` is at most `max_num_batched_tokens`; `gpu_memory_utilization` 0.9; block size 16.
"""
from __future__ import annotations

from .. import calibration as C
from ..hardware.machine import GPU
from ..model.inventory import Inventory
from ..vocab.precision import DTYPE_BYTES
from ..versions import ENGINE_VERSIONS
from .common import forward_peak, kv_element_bytes, load_dtype, sizer
from .model import AttentionGeometry
from .plan import GiB, EnginePlan, Knobs, RankPlan
from .shard import pp_layers, rank_weights

NAME = "vllm"
VERSION = ENGINE_VERSIONS[NAME]
BLOCK_SIZE = 16
UTILIZATION = 0.9
#: `_dummy_sampler_run` holds the fp32 logits, the softmax probabilities and the exponential draw at once.
SAMPLER_FP32_COPIES = 3
#: What the public startup logs say of the profile-run and non-torch terms (docs/engines.md, "Checked against public
#: startup logs"), as every vLLM plan says it.
PROFILE_TERMS_CHECKED = (
    "vLLM's profile-run peak and non-torch terms are mirrored from its source and checked against public startup "
    "logs (docs/engines.md): on an H100 they come 0.1-0.7 GiB under vLLM 0.19's own; under tensor parallelism on "
    "Hopper, vLLM 0.19 also takes about 2 GiB per rank for an all-reduce workspace this plan does not count")
#: How the mirrored version accounts CUDA graphs, and the versions that account them otherwise: vLLM up to 0.13
#: captures them after sizing the KV cache, outside the budget; 0.14 (vllm-project/vllm#30515) estimates them during
#: profiling but subtracts the estimate only with VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS=1; from 0.21 that is the
#: default ("CUDA graph memory profiling is enabled (default since v0.21.0)", as 0.27.1 logs it), which leaves that much
#: less KV memory than these figures (docs/engines.md).
CUDA_GRAPH_ACCOUNTING = (
    f"mirrors vLLM {VERSION} (V1 engine): CUDA graphs are captured after the KV cache is sized and are not in the "
    "budget; they use the 1 - gpu_memory_utilization margin. So do vLLM 0.14-0.20 by default; vLLM 0.21 and later "
    "subtract a CUDA-graph estimate from the budget (VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS=1, their default): "
    "there, expect less KV memory than this plan, or set VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS=0")


def batch_defaults(gpu: GPU) -> tuple[int, int]:
    """(max_num_batched_tokens, max_num_seqs) `vllm serve` takes on `gpu` when not given."""
    big = gpu.total_bytes >= 70 * GiB and "a100" not in gpu.name.lower()
    return (8192, 1024) if big else (2048, 256)


def torch_total(gpu: GPU) -> int:
    """What torch.cuda.mem_get_info reports as total: NVML's total less the driver's reserve (a catalogue card's
    free memory is exactly that; a probed card's reserve is taken as the catalogue's 480 MiB)."""
    return gpu.free_bytes if gpu.free_bytes < gpu.total_bytes and gpu.total_bytes - gpu.free_bytes <= 1 << 30 \
        else gpu.total_bytes - (480 << 20)


def _groups(geo: AttentionGeometry, layers: range) -> tuple[int, list[int | None]]:
    """(layers per group, window of each group) for the layers of one stage, as kv_cache_utils groups them."""
    kinds: dict[int | None, int] = {}
    for i in layers:
        w = geo.layer_windows[i] if i < len(geo.layer_windows) else None
        kinds[w] = kinds.get(w, 0) + 1
    if len(kinds) == 1:
        (w, n), = kinds.items()
        return n, [w]
    size = min(kinds.values())
    windows: list[int | None] = []
    for w, n in kinds.items():
        windows += [w] * (-(-n // size))
    return size, windows


def _blocks_per_request(windows: list[int | None], max_model_len: int, batched: int, block: int) -> int:
    n = 0
    for w in windows:
        if w:
            n += -(-min(w - 1 + batched, max_model_len) // block) + 1
        else:
            n += -(-max_model_len // block)
    return n


def plan_vllm(inv: Inventory, geo: AttentionGeometry, gpu: GPU, knobs: Knobs, *, tp: int, pp: int,
              max_model_len: int, concurrency: int = 1, gpus_per_node: int | None = None) -> EnginePlan:
    """The vLLM deployment of `inv` with `tp` x `pp` ranks of `gpu` at `max_model_len`: per rank and the figures
    its startup log prints."""
    dtype = load_dtype(inv, gpu.compute_capability)
    e = DTYPE_BYTES[dtype]
    kv_dtype = knobs.kv_cache_dtype or "auto"
    kv_e = kv_element_bytes(kv_dtype, dtype)
    util = knobs.gpu_memory_utilization or UTILIZATION
    d_tokens, d_seqs = batch_defaults(gpu)
    batched = knobs.max_num_batched_tokens or d_tokens
    seqs = min(knobs.max_num_seqs or d_seqs, batched)
    size = sizer(inv, dtype, knobs.quantization)
    stages = rank_weights(inv, geo, size, tp, pp)
    requested = int(torch_total(gpu) * util)
    stage_layers = pp_layers(inv.num_layers, pp)
    per_token_layer = (geo.mla_cache_elements if geo.mla else 2 * geo.kv_heads_per_rank(tp) * geo.head_dim) * kv_e
    page = BLOCK_SIZE * per_token_layer
    vocab = geo.vocab_size or inv.vocab_size
    ranks, blocks, group_windows = [], [], None
    for s, w in enumerate(stages):
        fwd = forward_peak(inv, geo, tp, batched, e)
        if s == pp - 1:
            sampler = seqs * vocab * (e + 4 * SAMPLER_FP32_COPIES) + batched * inv.hidden_size * e
            act = max(fwd, sampler)
        else:
            act = fwd
        graphs = 0  # captured after the KV cache is sized: outside the budget at this version
        avail = requested - w.total - act - C.VLLM_NON_TORCH_BYTES
        gsize, windows = _groups(geo, stage_layers[s])
        group_windows = group_windows or windows
        nb = max(avail, 0) // page // gsize
        blocks.append((nb, len(windows)))
        for r in range(tp):
            ranks.append(RankPlan(s * tp + r, s, w.layers, w.total, act, C.VLLM_NON_TORCH_BYTES, graphs, avail))
    num_blocks = min(nb for nb, _ in blocks)
    n_groups = max(g for _, g in blocks)
    tokens = num_blocks // n_groups * BLOCK_SIZE
    per_req = _blocks_per_request(group_windows, max_model_len, batched, BLOCK_SIZE)
    max_conc = num_blocks / per_req if per_req else 0.0
    fit = _largest_len(group_windows, num_blocks, batched, inv.max_positions or max_model_len)
    avail_min = min(r.available_kv_cache_bytes for r in ranks)
    notes = [CUDA_GRAPH_ACCOUNTING,
             PROFILE_TERMS_CHECKED]
    if gpu.free_bytes < requested:
        notes.append(f"{gpu.name} has {gpu.free_bytes / GiB:.2f} GiB free, less than gpu_memory_utilization {util:g} "
                     f"asks ({requested / GiB:.2f} GiB): vLLM refuses to start; lower it or free the GPU")
    if geo.kv_heads < tp:
        notes.append(f"{geo.kv_heads} KV heads under tensor parallel size {tp}: each rank keeps a replicated copy "
                     f"of {geo.kv_heads_per_rank(tp)} head")
    return EnginePlan(
        NAME, VERSION, tp, pp, 1, gpus_per_node or tp * pp, gpu.name, dtype_label(inv, dtype, knobs),
        kv_dtype, BLOCK_SIZE, util, seqs, batched, knobs.enforce_eager, tuple(ranks),
        per_token_layer * inv.num_layers // pp, avail_min, tokens, max_conc, max_model_len, concurrency, fit,
        knobs.quantization, (), tuple(notes))


def dtype_label(inv: Inventory, dtype: str, knobs: Knobs) -> str:
    if inv.prequantized:
        from ..model import prequant

        return prequant.scheme(inv).label
    if knobs.quantization:
        return knobs.quantization
    return {"bfloat16": "bf16", "float16": "fp16"}[dtype]


def _largest_len(windows, num_blocks: int, batched: int, limit: int) -> int:
    """The largest max_model_len whose one request fits `num_blocks` (vLLM's estimate_max_model_len searches the
    same way), capped at the model's own maximum."""
    if num_blocks <= 0:
        return 0
    lo, hi = 0, max(limit, 1)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if _blocks_per_request(windows, mid, batched, BLOCK_SIZE) <= num_blocks:
            lo = mid
        else:
            hi = mid - 1
    return lo


