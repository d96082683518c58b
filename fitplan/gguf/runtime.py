"""Memory llama.cpp allocates to run a GGUF model, per device, for a given `-ngl`.

Sources (github.com/ggml-org/llama.cpp; commits in docs/gguf.md):

* Context: `llama_context` pads `n_ctx` to a multiple of 256 (src/llama-context.cpp,
  `GGML_PAD(n_ctx, 256)`); with `n_parallel` sequences and no `--kv-unified`, each sequence gets
  `n_ctx / n_parallel` cells, so `-c` is the total over all sequences (llama-server's slots).
* KV cache (src/llama-kv-cache.cpp): per attention layer one K tensor of
  `row_bytes(type_k, head_dim_k * n_head_kv) * cells` and one V tensor likewise. Layers with a
  sliding window (src/llama-kv-cache-iswa.cpp) hold `pad(min(cells, n_swa + n_ubatch), 256)` cells
  per sequence unless `--swa-full`. With `offload_kqv` (the default) a layer's cache sits on the
  layer's device.
* Weights (src/llama-model.cpp `load_tensors`): `-ngl L` puts the last L repeating blocks on the GPU
  (`i_gpu_start = n_layer - L`) and, when L > n_layer, the output layer (`output`, `output_norm`)
  too; `token_embd` always stays in host memory (the input layer runs `get_rows` on the CPU).
* Compute buffer: ggml's graph allocator (ggml/src/ggml-alloc.c) reserves the peak of the tensors
  alive at once while it walks the worst-case graph, `n_ubatch` tokens against the whole cache,
  with `n_outputs = n_ubatch` (llama-context.cpp `graph_reserve`); freed tensors' memory is reused.
  With flash attention no score matrix is materialised, so the peak is the largest of three
  moments of one ubatch (4-byte activations): the output projection (`n_vocab + 2 n_embd` per
  token), the feed-forward block (`4 n_embd + 3 n_ff` per token; MoE: `3 n_ff_exp` per used
  expert) and attention (`4 n_embd + 2 q + 2 kv` widths), the last two plus the f16 KQ mask
  (`n_ubatch x n_ctx`). These widths reproduce llama.cpp's CPU compute buffer to the MiB on three
  shapes (docs/gguf.md, "Measured"). With the layers on a GPU, token embeddings and the mask are
  built in a host buffer too.
* Output buffer: llama.cpp reserves logits for `n_parallel` outputs (`output_reserve`), what the
  `llama-server` / `llama-cli` commands hold; llama-cpp-python's `Llama` keeps a host array of
  `n_batch x n_vocab` float32 scores on top (llama_cpp/llama.py), which the plan states apart.
* Repack: host-resident Q4_0 / Q4_K / IQ4_NL (and, on AVX-512 CPUs, Q2_K) matrices are copied into
  the CPU backend's `CPU_REPACK` buffer; with the default memory-mapped loading the mapped file
  stays resident too, so they count twice (`REPACK_ROWS`, `repack_bytes`).
* Several GPUs: layers split as `load_tensors` does with `--tensor-split` (`layer_devices`).

Pure functions of a `GGUFModel` and the run parameters.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from gguf import GGMLQuantizationType as T

from ..errors import OptionError
from .model import GGUFModel
from .ggml_types import kv_type, row_bytes

PAD_CTX = 256
#: llama.cpp's default `n_ubatch` (llama-server `-ub`, llama_cpp.Llama `n_ubatch`).
DEFAULT_UBATCH = 512
#: llama_cpp.Llama's default `n_batch` (llama-server's is 2048, but its logits are per slot).
DEFAULT_BATCH = 512
ACT_BYTES = 4  # ggml's activations are f32


def _pad(n: int, to: int = PAD_CTX) -> int:
    return -(-n // to) * to


@dataclass(frozen=True)
class RunConfig:
    """What a llama.cpp run is asked for. `context` is tokens per sequence; `n_parallel` sequences
    (llama-server `-np`); `kv_type` the K and V cache type (`f16`, `q8_0`, `q4_0`, ...)."""

    context: int = 4096
    n_parallel: int = 1
    kv_type: str = "f16"
    n_ubatch: int = DEFAULT_UBATCH
    n_batch: int = DEFAULT_BATCH
    swa_full: bool = False

    def __post_init__(self):
        for name in ("context", "n_parallel", "n_ubatch", "n_batch"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise OptionError(f"{name} must be a positive whole number, got {v!r}", option=name)
        kv_type(self.kv_type)

    @property
    def n_ctx(self) -> int:
        """`-c` / `n_ctx`: all sequences' cells together, each sequence padded to 256 as llama.cpp does."""
        return _pad(self.context) * self.n_parallel

    @property
    def ubatch(self) -> int:
        return min(self.n_ubatch, self.n_batch, self.n_ctx)


def kv_bytes_per_layer(m: GGUFModel, run: RunConfig) -> tuple[int, ...]:
    """K + V bytes of each layer's cache (0 for a layer without attention heads)."""
    t = kv_type(run.kv_type)
    seq_cells = _pad(run.context)
    out = []
    for i in range(m.n_layer):
        kv_heads = m.n_head_kv[i]
        if not kv_heads:
            out.append(0)
            continue
        if m.swa_layers and m.swa_layers[i] and m.sliding_window and not run.swa_full:
            cells = run.n_parallel * min(seq_cells, _pad(m.sliding_window + run.ubatch))
        else:
            cells = run.n_ctx
        try:
            out.append(cells * (row_bytes(t, m.head_dim_k * kv_heads) + row_bytes(t, m.head_dim_v * kv_heads)))
        except ValueError as err:  # heads that do not fill whole blocks of this KV cache type
            raise OptionError(str(err), option="kv_type") from None
    return tuple(out)


def _ffn_width(m: GGUFModel) -> int:
    """Per-token f32 elements a feed-forward block holds at its peak besides the hidden states:
    gate, up and their product (3 n_ff), or for MoE the routed experts' (3 n_ff_exp per used
    expert) plus the router logits."""
    if m.n_expert and m.n_expert_used:
        exps = next((t for t in m.tensors if "ffn_up_exps" in t.name or "ffn_gate_exps" in t.name), None)
        n_ff_exp = exps.shape[1] if exps is not None else m.n_ff
        return 3 * n_ff_exp * m.n_expert_used + m.n_expert
    up = next((t for t in m.tensors if t.name.endswith("ffn_up.weight")), None)
    n_ff = up.shape[1] if up is not None and len(up.shape) > 1 else m.n_ff
    if up is not None and m.tensor(up.name.replace("ffn_up", "ffn_gate")) is None and n_ff == 2 * m.n_ff:
        n_ff = m.n_ff  # Phi-3 stores gate and up fused in ffn_up
    return 3 * n_ff


def mask_bytes(run: RunConfig) -> int:
    """The KQ mask every layer reads: f16 with flash attention, `n_ubatch x n_ctx`."""
    return run.ubatch * run.n_ctx * 2


def compute_bytes(m: GGUFModel, run: RunConfig, *, with_output: bool) -> int:
    """The graph allocator's peak for one ubatch on a device that runs the repeating layers, and the
    output projection when `with_output` (see the module docstring). Calibrated on llama.cpp's CPU
    backend (benchmarks/gguf_buffers.py): the feed-forward moment holds 4 hidden states, gate, up and
    their product plus the mask; the output moment the logits and 2 hidden states."""
    ub = run.ubatch
    q_dim = m.n_head * m.head_dim_k
    kv_dim = m.head_dim_k * max(m.n_head_kv or (0,))
    attn = ub * ACT_BYTES * (4 * m.n_embd + 2 * q_dim + 2 * kv_dim) + mask_bytes(run)
    ffn = ub * ACT_BYTES * (4 * m.n_embd + _ffn_width(m)) + mask_bytes(run)
    out = ub * ACT_BYTES * (m.n_vocab + 2 * m.n_embd) if with_output else 0
    return max(attn, ffn, out)


def host_input_bytes(m: GGUFModel, run: RunConfig) -> int:
    """Inputs llama.cpp builds in host memory each ubatch when the layers run on a GPU: token
    embeddings (get_rows on the CPU, where token_embd lives) and the mask."""
    return run.ubatch * ACT_BYTES * m.n_embd + mask_bytes(run)


def output_bytes(m: GGUFModel, run: RunConfig) -> int:
    """The logits buffer llama.cpp itself allocates in host memory (`llama_context::output_reserve`):
    `n_vocab` float32 per sequence (`n_seq_max` = `-np`), what `llama-server` and `llama-cli` hold
    ("CPU output buffer size = 0.49 MiB" for a 128256-token vocabulary, docs/gguf.md)."""
    return run.n_parallel * m.n_vocab * 4


def python_scores_bytes(m: GGUFModel, run: RunConfig) -> int:
    """What `llama_cpp.Llama` keeps on top, per instance: its `scores` array of `n_batch x n_vocab`
    float32 (llama_cpp/llama.py, `logits_all=False`)."""
    return run.n_batch * m.n_vocab * 4


#: The ggml types llama.cpp's CPU backend repacks into its `CPU_REPACK` buffer, with the multiple
#: of `ne[1]` (rows) each needs: `ggml_repack_get_optimal_repack_type` in
#: ggml/src/ggml-cpu/repack.cpp (llama.cpp 4df29be4f4c3, the build docs/gguf.md measured). Q4_0 and
#: IQ4_NL: 8 rows with AVX2, 4 with ARM NEON dot-product / int8 matmul; Q4_K: 8 rows (AVX2 or NEON);
#: Q2_K: 8 rows, AVX-512 only. fitplan plans for any of these CPUs, so the smallest multiple.
REPACK_ROWS = {T.Q4_0: 4, T.IQ4_NL: 4, T.Q4_K: 8, T.Q2_K: 8}
#: ggml_backend_sched's copies of each split's inputs when layers are split over several GPUs
#: (GGML_SCHED_MAX_COPIES, pipeline parallelism: ggml/src/ggml-backend.cpp).
SCHED_MAX_COPIES = 4


def repack_bytes(t) -> int:
    """Bytes of `t` llama.cpp copies into `CPU_REPACK` when the tensor sits in host memory: matrix
    weights (2-D for `mul_mat`, 3-D experts for `mul_mat_id`) of a repacked type whose row count
    is a multiple of what the kernel interleaves; 0 otherwise. The embeddings table is read with
    `get_rows`, which the repack buffer does not take."""
    rows = REPACK_ROWS.get(t.ggml_type)
    if rows is None or len(t.shape) not in (2, 3) or t.shape[1] % rows or t.name == "token_embd.weight":
        return 0
    return t.nbytes


@dataclass(frozen=True)
class ModelSums:
    """Per-layer sums of one model for one run, computed once so that trying every `-ngl` on every
    split costs O(layers) each, not O(tensors) (a 256-layer MoE has ~1,800 tensors per file type)."""

    layer_weights: tuple[int, ...]
    layer_kv: tuple[int, ...]
    layer_repack: tuple[int, ...]
    layer_largest: tuple[int, ...]  # the largest tensor of each layer
    total_weights: int
    output_layer: int  # output (or output_norm alone when tied) as llama.cpp offloads it
    tied_copy: int  # a tied model's GPU copy of token_embd for the output layer
    outside_largest: int  # the largest tensor outside the layers, token_embd excepted
    outside_repack: int  # repacked bytes outside the layers (an untied output.weight)
    compute: int  # compute_bytes without the output moment
    compute_with_output: int
    output_moment: int  # the host's output projection while the output layer stays there


def model_sums(m: GGUFModel, run: RunConfig) -> ModelSums:
    n = m.n_layer
    weights, repack, largest = [0] * n, [0] * n, [0] * n
    outside_largest = outside_repack = 0
    by_name = {}
    total = 0
    for t in m.tensors:
        b = t.nbytes
        total += b
        i = t.layer
        if i is not None and 0 <= i < n:
            weights[i] += b
            repack[i] += repack_bytes(t)
            largest[i] = max(largest[i], b)
        else:
            by_name[t.name] = b
            if t.name != "token_embd.weight":
                outside_largest = max(outside_largest, b)
                outside_repack += repack_bytes(t)
    tied = "output.weight" not in by_name
    norm = by_name.get("output_norm.weight", 0)
    output_layer = norm if tied else by_name["output.weight"] + norm
    return ModelSums(
        layer_weights=tuple(weights), layer_kv=kv_bytes_per_layer(m, run), layer_repack=tuple(repack),
        layer_largest=tuple(largest), total_weights=total, output_layer=output_layer,
        tied_copy=by_name.get("token_embd.weight", 0) if tied else 0, outside_largest=outside_largest,
        outside_repack=outside_repack, compute=compute_bytes(m, run, with_output=False),
        compute_with_output=compute_bytes(m, run, with_output=True),
        output_moment=run.ubatch * ACT_BYTES * (m.n_vocab + 2 * m.n_embd))


def layer_devices(n_layer: int, n_gpu_layers: int, split: tuple[float, ...]) -> tuple[int | None, ...]:
    """The device of each layer and, last, of the output layer (None: host memory), as llama.cpp's
    `load_tensors` assigns them in its layer split mode (src/llama-model.cpp): `i_gpu_start = n_layer
    - ngl`, `act = min(ngl, n_layer + 1)`, and layer `il` goes to the first GPU whose cumulative,
    normalised `--tensor-split` share exceeds `(il - i_gpu_start) / act`, in float32 as there."""
    start = max(n_layer - n_gpu_layers, 0)
    act = min(n_gpu_layers, n_layer + 1)
    if len(split) == 1:
        return tuple(None if il < start or il - start >= act else 0 for il in range(n_layer + 1))
    cum, total = [], np.float32(0)
    for x in split:
        total = np.float32(total + np.float32(x))
        cum.append(total)
    cum = [np.float32(c / total) for c in cum]
    out = []
    for il in range(n_layer + 1):
        if il < start or il - start >= act:
            out.append(None)
            continue
        x = np.float32(il - start) / np.float32(act)
        out.append(min(next((d for d, c in enumerate(cum) if c > x), len(cum)), len(cum) - 1))
    return tuple(out)


@dataclass(frozen=True)
class Placement:
    """Bytes per device for one `-ngl`: `gpu_*` on the GPUs together (or the unified pool), `ram_*` in
    host memory; `per_gpu` each GPU's own total (weights + KV + compute) in `--tensor-split` order.
    `ram_repack`: the `CPU_REPACK` copy of host-resident weights that memory-mapped loading adds
    (0 with `mmap=False`, where the repacked tensors are read into that buffer instead)."""

    n_gpu_layers: int
    gpu_weights: int
    ram_weights: int
    gpu_kv: int
    ram_kv: int
    gpu_compute: int
    ram_compute: int
    ram_output: int
    ram_repack: int = 0
    per_gpu: tuple[int, ...] = ()
    mmap: bool = True

    @property
    def gpu_total(self) -> int:
        return self.gpu_weights + self.gpu_kv + self.gpu_compute

    @property
    def ram_total(self) -> int:
        return self.ram_weights + self.ram_kv + self.ram_compute + self.ram_output + self.ram_repack

    def to_dict(self) -> dict:
        d = asdict(self)
        d["gpu_total"], d["ram_total"] = self.gpu_total, self.ram_total
        return d


def placement(m: GGUFModel, run: RunConfig, n_gpu_layers: int, *, gpu: bool = True, split: tuple[float, ...] = (1.0,),
              mmap: bool = True, sums: ModelSums | None = None) -> Placement:
    """Where each byte sits with `-ngl n_gpu_layers` (0 .. n_layer + 1; n_layer + 1 = everything
    llama.cpp can offload, output layer included) over GPUs weighted `split` (`--tensor-split`).
    `gpu=False`: a CPU-only build or host, where the whole graph runs in one CPU compute buffer
    (n_gpu_layers must be 0). `sums`: `model_sums(m, run)`, when the caller already has it."""
    if not 0 <= n_gpu_layers <= m.n_layer + 1:
        raise OptionError(f"n_gpu_layers must be between 0 and {m.n_layer + 1} for this model, got {n_gpu_layers}",
                          option="n_gpu_layers")
    if not gpu and n_gpu_layers:
        raise OptionError("n_gpu_layers must be 0 without a GPU", option="n_gpu_layers")
    s = sums or model_sums(m, run)
    n = m.n_layer
    devs = layer_devices(n, n_gpu_layers, split) if gpu else (None,) * (n + 1)
    k = len(split)
    w, kv, runs, out_dev = [0] * k, [0] * k, [False] * k, devs[n]
    ram_w = s.total_weights
    ram_kv = ram_repack = cpu_largest = 0
    for i in range(n):
        d = devs[i]
        if d is None:
            ram_kv += s.layer_kv[i]
            ram_repack += s.layer_repack[i]
            cpu_largest = max(cpu_largest, s.layer_largest[i])
        else:
            w[d] += s.layer_weights[i]
            kv[d] += s.layer_kv[i]
            runs[d] = True
            ram_w -= s.layer_weights[i]
    if out_dev is not None:
        # tied embeddings: the output layer reuses token_embd; llama.cpp then loads a GPU copy of it
        w[out_dev] += s.output_layer + s.tied_copy
        runs[out_dev] = True
        ram_w -= s.output_layer
    else:
        ram_repack += s.outside_repack
        cpu_largest = max(cpu_largest, s.outside_largest)
    if not gpu:
        return Placement(0, 0, ram_w, 0, ram_kv, 0, s.compute_with_output, output_bytes(m, run),
                         ram_repack if mmap else 0, (), mmap)
    compute = [0] * k
    for d in range(k):
        if runs[d] or d == 0:
            compute[d] = s.compute_with_output if d == out_dev else s.compute
            if k > 1 and n_gpu_layers > n:  # pipeline parallelism: each split's inputs copied per copy
                compute[d] += SCHED_MAX_COPIES * host_input_bytes(m, run)
    # the first GPU runs large batches of host-resident layers too, copying their weights in: the
    # largest such tensor is charged (an upper bound, not measured)
    compute[0] += cpu_largest
    ram_compute = host_input_bytes(m, run) + (0 if out_dev is not None else s.output_moment)
    per_gpu = tuple(w[d] + kv[d] + compute[d] for d in range(k))
    return Placement(n_gpu_layers, sum(w), ram_w, sum(kv), ram_kv, sum(compute), ram_compute, output_bytes(m, run),
                     ram_repack if mmap else 0, per_gpu, mmap)


def kv_type_id(name: str) -> int:
    """The ggml type id llama.cpp's `type_k`/`type_v` take (llama_cpp.GGML_TYPE_*)."""
    return int(kv_type(name))


def needs_flash_attention(run: RunConfig) -> bool:
    """llama.cpp refuses a quantized V cache without flash attention (llama-context.cpp)."""
    return kv_type(run.kv_type) not in (T.F16, T.F32, T.BF16)
