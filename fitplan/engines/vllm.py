"""vLLM's memory accounting, mirrored from its source at the releases in `fitplan.versions.ENGINE_MIRRORS["vllm"]` (V1
engine): the formulas below hold at each; what differs between them is `Accounting`'s.

- budget (vllm/v1/worker/gpu_worker.py `determine_available_memory`): `requested = gpu_memory_utilization x
  total` (torch's total, after the driver's reserve), `available KV = requested - (weights + torch peak increase of
  the profile run + non-torch increase)`. The snapshot is taken after the CUDA context exists, so the context is
  not counted; CUDA graphs live in the `1 - utilization` margin at both releases (`Accounting.graphs`). The
  non-torch increase is 0.11's cuBLAS and attention workspaces (150 MiB); at 0.19, what its logs print per layout
  (calibration.py `VLLM_019_*`).
- profile run (vllm/v1/worker/gpu_model_runner.py `profile_run`): one forward over `max_num_batched_tokens`
  tokens split over `min(max_num_seqs, tokens)` requests, then the logits of the last token of each and
  `_dummy_sampler_run` over them (fp32 logits, temperature, softmax probabilities, the exponential draw).
- KV pool (vllm/v1/core/kv_cache_utils.py): pages of `block_size` tokens per layer; layers of one kind share a
  group, hybrid models (sliding + full) get groups of `min(layers per kind)` layers, each group's page tensors
  shared; `num_blocks = available // page_bytes // layers_per_group`, the smallest over ranks;
  "GPU KV cache size" = `num_blocks // groups * block_size`; "Maximum concurrency" = `num_blocks` over the
  blocks one request of `max_model_len` needs (a sliding layer needs `window - 1 + max_num_batched_tokens`).
- recurrent state (hybrid models; Gated DeltaNet, Qwen3-Next): each linear-attention layer keeps one state page per
  sequence (vllm/v1/kv_cache_interface.py `MambaSpec`; shapes per rank from mamba_utils.py
  `gated_delta_net_state_shape`, in the model dtype); vllm/model_executor/models/config.py
  `HybridAttentionMambaModelConfig` raises the attention block size to `16 x cdiv(state page, 16 x attention bytes
  per token)` and pads the state page to that attention page; kv_cache_utils.py
  `_get_kv_cache_groups_uniform_page_size` groups each kind into groups of `min(layers per kind)` layers, and a
  request takes one page per state group.
- defaults (vllm/engine/arg_utils.py `_set_default_args_v1`): on a GPU of >= 70 GiB other than an A100,
  `vllm serve` takes `max_num_batched_tokens` 8192 and `max_num_seqs` 1024, elsewhere 2048 and 256;
  `max_num_seqs` is at most `max_num_batched_tokens`; `gpu_memory_utilization` 0.9; block size 16.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .. import calibration as C
from ..hardware.machine import GPU
from ..model import prequant
from ..model.inventory import Inventory
from ..vocab.precision import DTYPE_BYTES
from ..versions import ENGINE_VERSIONS, parse
from .common import forward_peak, kv_element_bytes, load_dtype, nvlink_board, sizer
from .model import AttentionGeometry, GatedDeltaNet
from .plan import GiB, EnginePlan, Knobs, RankPlan
from .shard import pp_layers, rank_weights

NAME = "vllm"
BLOCK_SIZE = 16
UTILIZATION = 0.9
#: `_dummy_sampler_run` holds the fp32 logits, the softmax probabilities and the exponential draw at once.
SAMPLER_FP32_COPIES = 3


def _sampler_logits(seqs: int, vocab: int, e: int) -> int:
    """`_dummy_sampler_run`'s logits over `seqs` rows: the model dtype's and `SAMPLER_FP32_COPIES` fp32 copies (the
    logits, the probabilities, the exponential draw), at both mirrored releases."""
    return seqs * vocab * (e + 4 * SAMPLER_FP32_COPIES)


def profile_peak_011(inv: Inventory, geo: AttentionGeometry, tp: int, last: bool, first: bool, batched: int,
                     seqs: int, vocab: int, e: int) -> int:
    """The torch peak increase of 0.11's profile run on one rank: the forward's largest transient (`forward_peak`)
    or, on the last stage, `_dummy_sampler_run`'s model-dtype logits and three fp32 copies (the logits, the
    probabilities, the exponential draw) with the forward's hidden states still live."""
    fwd = forward_peak(inv, geo, tp, batched, e)
    return max(fwd, _sampler_logits(seqs, vocab, e) + batched * inv.hidden_size * e) if last else fwd


#: cuBLAS's workspace on Hopper (32 MiB), first allocated by a product inside the profile run.
CUBLAS_WORKSPACE_BYTES = 32 << 20
#: Inductor's first-call benchmarker allocates an L2-sized flush buffer inside the profile run (about 50 MiB in the
#: 0.19 logs' forward-only peaks; an attribution, not read in the source).
INDUCTOR_FLUSH_BYTES = 50 << 20
#: The Triton top-k/top-p kernel's cached scratch rows: `min(next_pow2(min(SMs, rows)), SMs)` rows of the vocabulary in
#: fp32 (vllm/v1/sample/ops/topk_topp_triton.py); an H100/H200 SXM has 132 SMs (a few MiB either way on other cards).
SAMPLER_SCRATCH_SMS = 132


def _r256(n: int) -> int:
    return -(-n // 256) * 256


def _mxfp4(inv: Inventory) -> bool:
    return inv.prequantized and prequant.scheme(inv).method == "mxfp4"


def profile_peak_019(inv: Inventory, geo: AttentionGeometry, tp: int, last: bool, first: bool, batched: int,
                     seqs: int, vocab: int, e: int) -> int:
    """The torch peak increase of 0.19's profile run on one rank (vllm/v1/worker/gpu_model_runner.py `profile_run`,
    `_dummy_run`, `_dummy_sampler_run`; the sampler path 0.19 takes on CUDA by default, FlashInfer's being off):

    - forward: attention is not run in the profile (no metadata); the compiled piece between two attention calls
      peaks at SiLU-and-mul with the gate/up output and the activated half (3 x T x I/TP) and three hidden-size
      buffers (the attention output in, the residual in and out), plus cuBLAS's workspace and Inductor's flush buffer;
    - sampler (last stage): the model-dtype logits, their fp32 copy, the probabilities and the exponential draw (e +
      12 bytes a logit), the Triton top-k/top-p scratch (`SAMPLER_SCRATCH_SMS` x V x 4), the forward's hidden states
      (T x H), the gathered last hidden states and their random copy (2 x N x H), and cuBLAS's workspace;
    - MoE: fused_moe's workspace (two buffers of T x top-k x max(I/TP, H) and max(2 I/TP, H), vllm/model_executor/
      layers/fused_moe/modular_kernel.py `_allocate_buffers` through the workspace manager) is never freed, so it is
      live under the sampler too (not for an MXFP4 checkpoint, whose experts run another backend: gpt-oss-20b's log
      has the sampler's peak alone);
    - pipeline stages after the first allocate their intermediate tensors (hidden and residual, 2 x T x H) inside it.

    Checked against the 0.19 sweep's "torch peak memory increase" (docs/engines.md): within 0.01 GiB for dense and MoE
    models on one rank, under TP and on later pipeline stages; the first pipeline stage logs about 0.18 GiB more than
    this (not found in the source)."""
    h, tokens = inv.hidden_size, batched
    ws = 0
    if inv.experts_per_token:
        ie, k = inv.expert_intermediate_size // tp, inv.experts_per_token
        if not _mxfp4(inv):  # an MXFP4 checkpoint's experts run another backend, without this workspace
            ws = _r256(tokens * k * max(ie, h) * e) + _r256(tokens * k * max(2 * ie, h) * e)
        mlp = 0
    else:
        mlp = 3 * tokens * (inv.intermediate_size // tp) * e
    fwd = 3 * tokens * h * e + mlp + CUBLAS_WORKSPACE_BYTES + INDUCTOR_FLUSH_BYTES
    peak = fwd
    if last:
        sampler = (_sampler_logits(seqs, vocab, e) + SAMPLER_SCRATCH_SMS * vocab * 4 + tokens * h * e
                   + 2 * seqs * h * e + CUBLAS_WORKSPACE_BYTES)
        peak = max(fwd, sampler)
    return peak + ws + (0 if first else 2 * tokens * h * e)


@dataclass(frozen=True)
class Accounting:
    """What differs between the vLLM releases fitplan mirrors (`fitplan.versions.ENGINE_MIRRORS["vllm"]`): the
    non-torch memory the profile run adds, by layout (cuBLAS and attention workspaces; under tensor parallelism the
    communicators' buffers, where the release builds them inside the profiling window), whether the hybrid state
    pool is mirrored at that release, and what the plan says of the terms the logs check."""

    version: str
    non_torch_single: int
    non_torch_pipeline: int
    non_torch_tp_nvlink: int
    non_torch_tp_other: int
    hybrid_state: bool
    checked: str
    profile_peak: Callable[..., int]

    def non_torch(self, gpu: GPU, tp: int, pp: int) -> int:
        """The non-torch increase of one rank of a `tp` x `pp` deployment on `gpu`."""
        if tp > 1:
            return self.non_torch_tp_nvlink if nvlink_board(gpu) else self.non_torch_tp_other
        return self.non_torch_pipeline if pp > 1 else self.non_torch_single

    def graphs(self) -> str:
        """How this release accounts CUDA graphs, and the releases that account them otherwise: vLLM up to 0.13
        captures them after sizing the KV cache, outside the budget; 0.14 (vllm-project/vllm#30515) estimates them
        during profiling but subtracts the estimate only with VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS=1; from 0.21
        that is the default ("CUDA graph memory profiling is enabled (default since v0.21.0)", as 0.27.1 logs it),
        which leaves that much less KV memory than these figures (docs/engines.md)."""
        how = ("CUDA graphs are captured after the KV cache is sized and are not in the budget; they use the "
               "1 - gpu_memory_utilization margin" if parse(self.version) < (0, 14) else
               "CUDA-graph memory is estimated during profiling (\"Estimated CUDA graph memory\") but left out of the "
               "budget unless VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS=1; the graphs use the 1 - "
               "gpu_memory_utilization margin")
        return (f"mirrors vLLM {self.version} (V1 engine): {how}. vLLM 0.21 and later subtract the estimate from the "
                "budget by default: there, expect less KV memory than this plan by the estimate the log prints, or "
                "set VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS=0")


ACCOUNTING = {a.version: a for a in (
    Accounting(
        "0.11.0", *(C.VLLM_NON_TORCH_BYTES,) * 4, hybrid_state=True, profile_peak=profile_peak_011,
        checked="vLLM 0.11's profile-run peak and non-torch terms are mirrored from its source and checked against "
                "public startup logs (docs/engines.md): on an H100 they come 0.1-0.7 GiB under vLLM 0.19's own; under "
                "tensor parallelism on NVLink boards, vLLM 0.19 also takes about 2 GiB per rank for its communicators, "
                "which 0.11's accounting does not count (plan for 0.19 with --engine-version 0.19)"),
    Accounting(
        "0.19.0", C.VLLM_019_NON_TORCH_SINGLE_BYTES, C.VLLM_019_NON_TORCH_PIPELINE_BYTES,
        C.VLLM_019_NON_TORCH_TP_NVLINK_BYTES, C.VLLM_019_NON_TORCH_SINGLE_BYTES, hybrid_state=False,
        profile_peak=profile_peak_019,
        checked="the non-torch memory is what vLLM 0.19's own logs print for this layout (the largest logged on an "
                "H100: 0.27 GiB alone, 0.07 GiB on pipeline ranks, 2.21 GiB under tensor parallelism on NVLink "
                "boards); the profile-run peak is mirrored from 0.19's source and agrees with its logs within 0.01 GiB, "
                "except on a first pipeline stage (0.18 GiB under) and for vision-language models (up to 0.25 GiB "
                "under: the dummy images and encoder outputs are not counted) (docs/engines.md)"),
)}


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


def state_page_bytes(gdn: GatedDeltaNet, tp: int, state_e: int) -> int:
    """One linear-attention layer's state for one sequence on one of `tp` ranks, unpadded: `MambaSpec.page_size_bytes`
    over `gated_delta_net_state_shape` (both states in the model dtype: `mamba_cache_dtype` auto, vLLM 0.11's
    `gated_delta_net_state_dtype`)."""
    return gdn.state_elements(tp) * state_e


def hybrid_block_size(attn_token_bytes: int, state_page: int, block: int = BLOCK_SIZE) -> int:
    """`HybridAttentionMambaModelConfig.verify_and_update_config`: the attention block size becomes `16 x
    cdiv(state page, 16 x attention bytes per token)` when the default (or asked) block is smaller, so that one
    attention page holds one state page."""
    need = 16 * -(-state_page // (16 * attn_token_bytes))
    return need if block < need else block


@dataclass(frozen=True)
class HybridPool:
    """vLLM's KV pool of a hybrid attention / linear-attention model on one engine: the attention `block` size, the
    one `page` size every layer uses (the state page padded to the attention page), `state_page` unpadded, and the
    KV cache groups as `_get_kv_cache_groups_uniform_page_size` forms them (kind, layer indices): attention groups
    first (the runner lists attention layers before the linear-attention ones)."""

    block: int
    page: int
    state_page: int
    groups: tuple[tuple[str, tuple[int, ...]], ...]

    @property
    def attention_groups(self) -> int:
        return sum(1 for k, _ in self.groups if k == "attention")

    @property
    def state_groups(self) -> int:
        return sum(1 for k, _ in self.groups if k == "state")

    def group_size(self, layers: range) -> int:
        """Layers per group on a worker holding `layers` (`get_kv_cache_config_from_groups`: the largest group)."""
        return max(sum(1 for i in g if i in layers) for _, g in self.groups)

    def num_blocks(self, available: int, layers: range) -> int:
        """`get_num_blocks`: `available // page // group_size` (one tensor of num_blocks pages per group slot)."""
        return max(available, 0) // self.page // self.group_size(layers)

    def tokens(self, num_blocks: int, max_model_len: int) -> int:
        """"GPU KV cache size": `num_blocks // groups x min block size` (a state group's block is max_model_len)."""
        return num_blocks // len(self.groups) * min(self.block, max_model_len)

    def blocks_per_request(self, max_model_len: int) -> int:
        """`get_max_concurrency_for_kv_cache_config`: pages of `max_model_len` tokens in each attention group plus one
        state page in each state group."""
        return self.attention_groups * -(-max_model_len // self.block) + self.state_groups

    def largest_len(self, available: int, layers: range, limit: int) -> int:
        """`estimate_max_model_len` on one worker: the largest length whose per-layer pages (`cdiv(len, block)` per
        attention layer, one per state layer) fit `available`, at most `limit`."""
        n_attn = sum(1 for k, g in self.groups if k == "attention" for i in g if i in layers)
        n_state = sum(1 for k, g in self.groups if k == "state" for i in g if i in layers)
        pages = max(available, 0) // self.page - n_state
        if pages < 0 or (n_attn and pages < n_attn):
            return 0
        return limit if not n_attn else min(limit, pages // n_attn * self.block)


def hybrid_pool(geo: AttentionGeometry, tp: int, kv_e: int, state_e: int) -> HybridPool:
    """The pool of a model with linear-attention layers (`geo.linear_attention`) at tensor parallel size `tp`, KV
    elements of `kv_e` bytes and state elements of `state_e` bytes."""
    attn_token = 2 * geo.kv_heads_per_rank(tp) * geo.head_dim * kv_e
    state = state_page_bytes(geo.linear_attention, tp, state_e)
    block = hybrid_block_size(attn_token, state)
    kinds = [(k, layers) for k, layers in (("attention", geo.attention_layers), ("state", geo.state_layers)) if layers]
    size = min(len(layers) for _, layers in kinds)
    groups = []
    for kind, layers in kinds:
        n = -(-len(layers) // size)
        groups += [(kind, layers[i::n]) for i in range(n)]  # layers[i::num_groups], as vLLM assigns them
    return HybridPool(block, block * attn_token, state, tuple(groups))


def plan_vllm(inv: Inventory, geo: AttentionGeometry, gpu: GPU, knobs: Knobs, *, tp: int, pp: int,
              max_model_len: int, concurrency: int = 1, gpus_per_node: int | None = None,
              version: str = ENGINE_VERSIONS[NAME]) -> EnginePlan:
    """The vLLM deployment of `inv` with `tp` x `pp` ranks of `gpu` at `max_model_len`, as vLLM `version` (a
    mirrored release, `ACCOUNTING`) accounts it: per rank and the figures its startup log prints."""
    acct = ACCOUNTING[version]
    non_torch = acct.non_torch(gpu, tp, pp)
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
    pool = hybrid_pool(geo, tp, kv_e, e) if geo.linear_attention is not None else None
    page = BLOCK_SIZE * per_token_layer if pool is None else pool.page
    vocab = geo.vocab_size or inv.vocab_size
    ranks, blocks, group_windows, fit_lens = [], [], None, []
    for s, w in enumerate(stages):
        act = acct.profile_peak(inv, geo, tp, s == pp - 1, s == 0, batched, seqs, vocab, e)
        graphs = 0  # outside the budget at every mirrored release (Accounting.graphs)
        avail = requested - w.total - act - non_torch
        if pool is None:
            gsize, windows = _groups(geo, stage_layers[s])
            group_windows = group_windows or windows
            nb = max(avail, 0) // page // gsize
            blocks.append((nb, len(windows)))
        else:
            nb = pool.num_blocks(avail, stage_layers[s])
            blocks.append((nb, len(pool.groups)))
            fit_lens.append(pool.largest_len(avail, stage_layers[s], inv.max_positions or max_model_len))
        for r in range(tp):
            ranks.append(RankPlan(s * tp + r, s, w.layers, w.total, act, non_torch, graphs, avail))
    num_blocks = min(nb for nb, _ in blocks)
    n_groups = max(g for _, g in blocks)
    if pool is None:
        tokens = num_blocks // n_groups * BLOCK_SIZE
        per_req = _blocks_per_request(group_windows, max_model_len, batched, BLOCK_SIZE)
        fit = _largest_len(group_windows, num_blocks, batched, inv.max_positions or max_model_len)
        block, kv_layers = BLOCK_SIZE, inv.num_layers
    else:
        tokens = pool.tokens(num_blocks, max_model_len)
        per_req = pool.blocks_per_request(max_model_len)
        fit = min(fit_lens)
        block, kv_layers = pool.block, len(geo.attention_layers)
    max_conc = num_blocks / per_req if per_req else 0.0
    avail_min = min(r.available_kv_cache_bytes for r in ranks)
    notes = [acct.graphs(), acct.checked]
    if pool is not None:
        notes.append(hybrid_note(geo, pool, tp, dtype, version))
    if gpu.free_bytes < requested:
        notes.append(f"{gpu.name} has {gpu.free_bytes / GiB:.2f} GiB free, less than gpu_memory_utilization {util:g} "
                     f"asks ({requested / GiB:.2f} GiB): vLLM refuses to start; lower it or free the GPU")
    if geo.kv_heads < tp:
        notes.append(f"{geo.kv_heads} KV heads under tensor parallel size {tp}: each rank keeps a replicated copy "
                     f"of {geo.kv_heads_per_rank(tp)} head")
    return EnginePlan(
        NAME, version, tp, pp, 1, gpus_per_node or tp * pp, gpu.name, dtype_label(inv, dtype, knobs),
        kv_dtype, block, util, seqs, batched, knobs.enforce_eager, tuple(ranks),
        per_token_layer * kv_layers // pp, avail_min, tokens, max_conc, max_model_len, concurrency, fit,
        knobs.quantization, (), tuple(notes))


def hybrid_note(geo: AttentionGeometry, pool: HybridPool, tp: int, dtype: str, version: str) -> str:
    """What a hybrid plan assumes of the state pool, in words."""
    (ca, cb), (h, k, v) = geo.linear_attention.state_shapes(tp)
    pad = 100 * (pool.page - pool.state_page) / pool.state_page
    sizes = sorted({len(g) for _, g in pool.groups})
    return (f"{len(geo.state_layers)} Gated DeltaNet layers keep a state per sequence instead of a KV cache: "
            f"{pool.state_page:,} bytes per layer on each rank (convolution {ca}x{cb} and recurrent {h}x{k}x{v}, "
            f"{dtype}); vLLM {version} sets the attention block size to {pool.block} tokens so that one attention "
            f"page ({pool.page:,} bytes) holds a state page, pads the state page by {pad:.2f}%, and makes "
            f"{pool.attention_groups} attention and {pool.state_groups} state groups of "
            f"{'/'.join(map(str, sizes))} layers: each sequence takes one page per state group whatever its length "
            "(prefix caching off, as vLLM turns it off for these models; no MTP speculative decoding; "
            "--mamba-cache-dtype auto)")


def dtype_label(inv: Inventory, dtype: str, knobs: Knobs) -> str:
    if inv.prequantized:
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


