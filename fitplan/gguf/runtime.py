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
* Output buffer: llama.cpp reserves logits for `n_parallel` outputs (`output_reserve`) and grows it
  on demand; llama-cpp-python's `Llama` keeps a host array of `n_batch x n_vocab` float32 scores
  (llama_cpp/llama.py). fitplan plans the larger: `n_batch * n_vocab * 4` in host memory.

Pure functions of a `GGUFModel` and the run parameters.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

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
    """Logits kept in host memory: `n_batch * n_vocab` float32 (llama-cpp-python's scores array)."""
    return run.n_batch * m.n_vocab * 4


@dataclass(frozen=True)
class Placement:
    """Bytes per device for one `-ngl`: `gpu_*` on the GPU (or the unified pool), `ram_*` in host memory."""

    n_gpu_layers: int
    gpu_weights: int
    ram_weights: int
    gpu_kv: int
    ram_kv: int
    gpu_compute: int
    ram_compute: int
    ram_output: int

    @property
    def gpu_total(self) -> int:
        return self.gpu_weights + self.gpu_kv + self.gpu_compute

    @property
    def ram_total(self) -> int:
        return self.ram_weights + self.ram_kv + self.ram_compute + self.ram_output

    def to_dict(self) -> dict:
        d = asdict(self)
        d["gpu_total"], d["ram_total"] = self.gpu_total, self.ram_total
        return d


def placement(m: GGUFModel, run: RunConfig, n_gpu_layers: int, *, gpu: bool = True) -> Placement:
    """Where each byte sits with `-ngl n_gpu_layers` (0 .. n_layer + 1; n_layer + 1 = everything
    llama.cpp can offload, output layer included). `gpu=False`: a CPU-only build or host, where
    the whole graph runs in one CPU compute buffer (n_gpu_layers must be 0)."""
    if not 0 <= n_gpu_layers <= m.n_layer + 1:
        raise OptionError(f"n_gpu_layers must be between 0 and {m.n_layer + 1} for this model, got {n_gpu_layers}",
                          option="n_gpu_layers")
    if not gpu and n_gpu_layers:
        raise OptionError("n_gpu_layers must be 0 without a GPU", option="n_gpu_layers")
    start = m.n_layer - min(n_gpu_layers, m.n_layer)
    per_layer = m.layer_bytes()
    kv = kv_bytes_per_layer(m, run)
    gpu_w = sum(per_layer[start:])
    gpu_kv = sum(kv[start:])
    out_on_gpu = n_gpu_layers > m.n_layer
    output_layer = m.output_bytes if not m.tied_embeddings else (
        m.tensor("output_norm.weight").nbytes if m.tensor("output_norm.weight") else 0)
    # tied embeddings: the output layer reuses token_embd; llama.cpp then loads a GPU copy of it
    tied_copy = m.tensor("token_embd.weight").nbytes if (m.tied_embeddings and out_on_gpu
                                                         and m.tensor("token_embd.weight")) else 0
    total_w = m.weights_bytes
    if out_on_gpu:
        gpu_w += output_layer + tied_copy
    ram_w = total_w - sum(per_layer[start:]) - (output_layer if out_on_gpu else 0)
    if not gpu:
        gpu_compute, ram_compute = 0, compute_bytes(m, run, with_output=True)
    else:
        # the GPU runs its layers (and borrows big batches of CPU-resident layers, copying the
        # weights in: counted as the largest CPU-resident tensor, an upper bound not measured)
        cpu_tensors = [t.nbytes for t in m.tensors if t.name != "token_embd.weight"
                       and ((t.layer is not None and t.layer < start) or (t.layer is None and not out_on_gpu))]
        gpu_compute = compute_bytes(m, run, with_output=out_on_gpu) + max(cpu_tensors, default=0)
        ram_compute = host_input_bytes(m, run) + (0 if out_on_gpu else run.ubatch * ACT_BYTES * (
            m.n_vocab + 2 * m.n_embd))
    return Placement(n_gpu_layers, gpu_w, ram_w, gpu_kv, sum(kv) - gpu_kv, gpu_compute, ram_compute,
                     output_bytes(m, run))


def kv_type_id(name: str) -> int:
    """The ggml type id llama.cpp's `type_k`/`type_v` take (llama_cpp.GGML_TYPE_*)."""
    return int(kv_type(name))


def needs_flash_attention(run: RunConfig) -> bool:
    """llama.cpp refuses a quantized V cache without flash attention (llama-context.cpp)."""
    return kv_type(run.kv_type) not in (T.F16, T.F32, T.BF16)
