"""The command lines that start an engine plan: `vllm serve ...` (with the Ray steps across nodes) or SGLang's
launcher (one line per node), with only the flags the plan needs."""
from __future__ import annotations

from .plan import EnginePlan


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
