"""The engine plan: what each rank of a vLLM or SGLang deployment holds and what the engine's startup log will
say (available KV cache memory, KV cache size in tokens, maximum concurrency), as frozen data.

Built by `fitplan.engines.vllm.plan_vllm` and `fitplan.engines.sglang.plan_sglang`; chosen over TP/PP/KV dtype
by `fitplan.engines.choose`.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

GiB = 1 << 30


@dataclass(frozen=True)
class Knobs:
    """The engine's own settings, by the engine's names; None: the engine's default (or fitplan chooses).
    `gpu_memory_utilization` is vLLM's `--gpu-memory-utilization` and SGLang's `--mem-fraction-static`."""

    tensor_parallel_size: int | None = None
    pipeline_parallel_size: int | None = None
    gpu_memory_utilization: float | None = None
    kv_cache_dtype: str | None = None
    quantization: str | None = None
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    enforce_eager: bool = False

    def label(self, tp: int, pp: int) -> str:
        """How a tried layout with these settings is named among the rejected ones."""
        parts = [f"TP {tp} x PP {pp}"]
        if self.quantization:
            parts.append(f"{self.quantization} weights")
        if self.kv_cache_dtype:
            parts.append(f"{self.kv_cache_dtype} KV cache")
        return ", ".join(parts)


@dataclass(frozen=True)
class RankPlan:
    """One rank (all TP ranks of a pipeline stage hold the same): bytes by term, and its KV budget."""

    rank: int
    stage: int
    layers: int
    weights_bytes: int
    activation_bytes: int
    non_torch_bytes: int
    cuda_graph_bytes: int
    available_kv_cache_bytes: int

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class EnginePlan:
    """A deployment on one engine. `available_kv_cache_bytes` is the smallest rank's (the engine sizes the pool
    to it); `kv_cache_tokens` and `max_concurrency` are what the engine logs; `max_model_len_fit` the largest
    `--max-model-len` the pool holds when `max_model_len` does not fit (the engine refuses to start then)."""

    name: str
    version: str
    tensor_parallel_size: int
    pipeline_parallel_size: int
    nodes: int
    gpus_per_node: int
    gpu_name: str
    precision: str
    kv_cache_dtype: str
    block_size: int
    gpu_memory_utilization: float
    max_num_seqs: int
    max_num_batched_tokens: int
    enforce_eager: bool
    per_rank: tuple[RankPlan, ...]
    kv_bytes_per_token: int
    available_kv_cache_bytes: int
    kv_cache_tokens: int
    max_concurrency: float
    max_model_len: int
    concurrency: int
    max_model_len_fit: int
    quantization: str | None = None
    command: tuple[str, ...] = ()
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def fits(self) -> bool:
        return self.available_kv_cache_bytes > 0 and self.max_model_len_fit >= self.max_model_len and \
            self.max_concurrency >= self.concurrency

    @property
    def world_size(self) -> int:
        return self.tensor_parallel_size * self.pipeline_parallel_size

    def shortfall(self) -> str:
        """Why this deployment does not fit: no KV memory, a context too long, or too few sequences."""
        if self.available_kv_cache_bytes <= 0:
            w = max(r.weights_bytes for r in self.per_rank)
            return (f"no memory left for the KV cache: {w / GiB:.2f} GiB of weights per rank plus the profile run "
                    f"exceed {self.gpu_memory_utilization:g} of the GPU")
        if self.max_model_len_fit < self.max_model_len:
            return (f"{self.available_kv_cache_bytes / GiB:.2f} GiB of KV cache holds {self.kv_cache_tokens:,} "
                    f"tokens; the largest --max-model-len that fits is {self.max_model_len_fit:,}, below "
                    f"{self.max_model_len:,} (the engine refuses to start)")
        return (f"holds {self.max_concurrency:.2f} sequences of {self.max_model_len:,} tokens, fewer than the "
                f"{self.concurrency} asked")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["per_rank"] = [r.to_dict() for r in self.per_rank]
        d["command"] = list(self.command)
        d["notes"] = list(self.notes)
        d["fits"] = self.fits
        d["max_concurrency"] = round(self.max_concurrency, 2)
        return d
