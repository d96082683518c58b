"""Choosing a deployment on a serving engine: tensor/pipeline parallel sizes, weights precision and KV dtype, fewest
GPUs first, then quality; each rejected option with its reason. And the command that starts it.

TP stays within a node and must divide the attention heads (vLLM and SGLang both refuse otherwise); pipeline
parallelism takes the rest (across nodes, or where TP cannot divide the heads), as both engines' docs advise.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from ..errors import OptionError, UnsupportedModelError
from ..hardware.machine import Hardware
from ..model import prequant
from ..model.inventory import Inventory
from .common import FP8_MIN_CC
from .model import AttentionGeometry, geometry
from .plan import EnginePlan, Knobs
from .sglang import plan_sglang
from .vllm import check_parallel, plan_vllm


@dataclass(frozen=True)
class Rejected:
    what: str
    reason: str

    def to_dict(self) -> dict:
        return {"option": self.what, "reason": self.reason}


@dataclass(frozen=True)
class EngineChoice:
    """The chosen `plan` (the best that fits, else the closest), and every option rejected before it."""

    plan: EnginePlan
    rejected: tuple[Rejected, ...] = ()

    def to_dict(self) -> dict:
        return {**self.plan.to_dict(), "rejected": [r.to_dict() for r in self.rejected]}


def _layouts(geo: AttentionGeometry, n_gpus: int, per_node: int, knobs: Knobs) -> list[tuple[int, int]]:
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


def _variants(inv: Inventory, cc: tuple[int, int], knobs: Knobs) -> list[Knobs]:
    """Weights and KV dtype, best quality first: the checkpoint as it is, then online fp8 weights and an fp8 KV
    cache where the GPU runs fp8 (compute capability 8.9) and nothing was forced."""
    out = [knobs]
    fp8 = cc >= FP8_MIN_CC
    if knobs.kv_cache_dtype is None and fp8:
        out.append(replace(knobs, kv_cache_dtype="fp8"))
    if knobs.quantization is None and not inv.prequantized and fp8:
        out.append(replace(knobs, quantization="fp8"))
        if knobs.kv_cache_dtype is None:
            out.append(replace(knobs, quantization="fp8", kv_cache_dtype="fp8"))
    return out


def _label(tp: int, pp: int, k: Knobs) -> str:
    parts = [f"TP {tp} x PP {pp}"]
    if k.quantization:
        parts.append(f"{k.quantization} weights")
    if k.kv_cache_dtype:
        parts.append(f"{k.kv_cache_dtype} KV cache")
    return ", ".join(parts)


def tp_hint(inv: Inventory, config: dict, hw: Hardware, *, max_model_len: int, concurrency: int,
            model_id: str) -> EngineChoice | None:
    """What vLLM tensor parallelism over the GPUs of this machine gives, the checkpoint as it is (`fitplan check`
    says it when one GPU is not enough, or the plan is a sequential split): the largest power-of-two TP that divides
    the heads. None when no TP above 1 divides them."""
    geo = geometry(config)
    n = hw.gpus_per_node or len(hw.gpus)
    tp = max((t for t in (2, 4, 8, 16, 32, 64) if t <= n and geo.num_heads % t == 0
              and (geo.kv_heads <= t or geo.kv_heads % t == 0)), default=None)
    if tp is None:
        return None
    return plan_engine(inv, config, hw, engine="vllm", knobs=Knobs(tensor_parallel_size=tp, kv_cache_dtype="auto"),
                       max_model_len=max_model_len, concurrency=concurrency, model_id=model_id, explore=False)


def plan_engine(inv: Inventory, config: dict, hw: Hardware, *, engine: str, knobs: Knobs, max_model_len: int,
                concurrency: int, model_id: str, explore: bool = True) -> EngineChoice:
    """The deployment of `model_id` on `engine` over `hw`'s GPUs (one kind; `gpus_per_node` from the hardware).
    `explore` False plans `knobs` as they are (no fp8 variants)."""
    if not hw.gpus:
        raise OptionError(f"{engine} plans need GPUs: give --gpu (e.g. --gpu 4xh100) or a hardware file",
                          option="engine")
    if any(k.state_elements or k.state_fixed_bytes for k in inv.kv_layers):
        raise UnsupportedModelError(f"{model_id} keeps recurrent (Mamba / linear-attention) state; fitplan does not "
                                    f"mirror {engine}'s state pool yet: plan it with engine transformers",
                                    model_type=inv.model_type)
    if inv.prequantized and prequant.scheme(inv).method == "bitsandbytes" and engine == "sglang":
        raise UnsupportedModelError(f"{model_id} is a bitsandbytes checkpoint; fitplan sizes bitsandbytes for "
                                    "transformers and vllm only", model_type=inv.model_type)
    geo = geometry(config)
    gpu = hw.gpus[0]
    n = len(hw.gpus)
    if knobs.quantization == "fp8" and gpu.compute_capability < (8, 0):
        cc = ".".join(map(str, gpu.compute_capability))
        raise OptionError(f"quantization fp8 needs compute capability 8.0 (weight-only, Marlin) or 8.9 (W8A8); "
                         f"{gpu.name} has {cc}: drop --quantization", option="quantization")
    per_node = hw.gpus_per_node or n
    tp0, pp0 = knobs.tensor_parallel_size or 1, knobs.pipeline_parallel_size or 1
    if knobs.tensor_parallel_size or knobs.pipeline_parallel_size:
        check_parallel(geo, tp0, pp0)
        if tp0 * pp0 > n:
            raise OptionError(f"tensor_parallel_size {tp0} x pipeline_parallel_size {pp0} = {tp0 * pp0} ranks, but the "
                             f"hardware has {n} GPU{'s' if n > 1 else ''}", option="tensor_parallel_size")
    if max_model_len > (inv.max_positions or max_model_len):
        raise OptionError(f"context {max_model_len} exceeds {model_id}'s max_position_embeddings {inv.max_positions}; "
                         "the engine refuses a longer --max-model-len", option="context")
    rejected: list[Rejected] = []
    best: EnginePlan | None = None
    for tp, pp in _layouts(geo, n, per_node, knobs):
        for k in (_variants(inv, gpu.compute_capability, knobs) if explore else [knobs]):
            p = (plan_vllm(inv, geo, gpu, k, tp=tp, pp=pp, max_model_len=max_model_len, concurrency=concurrency,
                           gpus_per_node=per_node) if engine == "vllm" else
                 plan_sglang(inv, geo, gpu, k, tp=tp, pp=pp, max_model_len=max_model_len, concurrency=concurrency,
                             gpus_per_node=per_node))
            p = replace(p, nodes=-(-tp * pp // per_node), command=command(p, model_id, per_node))
            if p.fits:
                return EngineChoice(p, tuple(rejected))
            rejected.append(Rejected(_label(tp, pp, k), _why(p)))
            if best is None or (p.max_concurrency, p.available_kv_cache_bytes) > (best.max_concurrency,
                                                                                   best.available_kv_cache_bytes):
                best = p  # nothing fits: show the one that comes closest
    if best is None:
        raise OptionError(f"no tensor parallel size up to {n} divides {model_id}'s {geo.num_heads} attention heads",
                         option="tensor_parallel_size")
    return EngineChoice(best, tuple(rejected))


def _why(p: EnginePlan) -> str:
    gib = 1 << 30
    if p.available_kv_cache_bytes <= 0:
        w = max(r.weights_bytes for r in p.per_rank)
        return (f"no memory left for the KV cache: {w / gib:.2f} GiB of weights per rank plus the profile run exceed "
                f"{p.gpu_memory_utilization:g} of the GPU")
    if p.max_model_len_fit < p.max_model_len:
        return (f"{p.available_kv_cache_bytes / gib:.2f} GiB of KV cache holds {p.kv_cache_tokens:,} tokens; the "
                f"largest --max-model-len that fits is {p.max_model_len_fit:,}, below {p.max_model_len:,} (the engine "
                "refuses to start)")
    return (f"holds {p.max_concurrency:.2f} sequences of {p.max_model_len:,} tokens, fewer than the "
            f"{p.concurrency} asked")


#: The flag each engine takes for a setting that is passed only when it differs from the default.
_EAGER_FLAG = {"vllm": "--enforce-eager", "sglang": "--disable-cuda-graph"}


def _optional_flags(p: EnginePlan) -> list[str]:
    """The KV dtype, online quantization and eager-mode flags `p` needs, spelled for its engine."""
    out = [f"--kv-cache-dtype {p.kv_cache_dtype}"] if p.kv_cache_dtype != "auto" else []
    out += [f"--quantization {p.quantization}"] if p.quantization else []
    return out + ([_EAGER_FLAG[p.name]] if p.enforce_eager else [])


def command(p: EnginePlan, model_id: str, per_node: int) -> tuple[str, ...]:
    """The command lines that start `p`: `vllm serve ...` (with the Ray steps across nodes) or SGLang's launcher
    (one line per node). A pre-quantized checkpoint gets no --quantization: the engine reads its method."""
    nodes = -(-p.world_size // per_node)
    if p.name == "vllm":
        args = [f"vllm serve {model_id}", f"--tensor-parallel-size {p.tensor_parallel_size}",
                f"--pipeline-parallel-size {p.pipeline_parallel_size}", f"--max-model-len {p.max_model_len}",
                f"--gpu-memory-utilization {p.gpu_memory_utilization:g}", *_optional_flags(p)]
        if nodes == 1:
            return (" ".join(args),)
        args.append("--distributed-executor-backend ray")
        return ("# on the head node:", "ray start --head --port 6379",
                f"# on each of the {nodes - 1} other nodes:", "ray start --address HEAD_IP:6379",
                "# then on the head node:", " ".join(args))
    args = [f"python -m sglang.launch_server --model-path {model_id}", f"--tp {p.tensor_parallel_size}",
            f"--pp-size {p.pipeline_parallel_size}", f"--context-length {p.max_model_len}",
            f"--mem-fraction-static {p.gpu_memory_utilization:g}", *_optional_flags(p)]
    if nodes == 1:
        return (" ".join(args),)
    return tuple(f"# node {i}: " + " ".join(args + [f"--nnodes {nodes}", f"--node-rank {i}",
                                                     "--dist-init-addr HEAD_IP:5000"]) for i in range(nodes))
