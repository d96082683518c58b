"""Text for serving-engine plans (fitplan.engines): per rank, the figures the engine logs, the command."""
from __future__ import annotations

GiB = 1 << 30


def _g(n: int) -> str:
    return f"{n / GiB:.2f} GiB"


def engine_lines(choice) -> list[str]:
    p = choice.plan
    head = "FITS" if p.fits else "NO FIT"
    nodes = f" on {p.nodes} nodes" if p.nodes > 1 else ""
    lines = [f"{head:9} {p.name} {p.version}: TP {p.tensor_parallel_size} x PP {p.pipeline_parallel_size} "
             f"({p.world_size} x {p.gpu_name}{nodes}), {p.precision} weights, KV cache {p.kv_cache_dtype}",
             "", f"{'rank':>4} {'stage':>5} {'layers':>6} {'weights':>11} {'activation':>11} {'non-torch':>10} "
                 f"{'KV budget':>11}"]
    seen = set()
    for r in p.per_rank:
        if r.stage in seen:
            continue
        seen.add(r.stage)
        ranks = f"{r.rank}" if p.tensor_parallel_size == 1 else f"{r.rank}-{r.rank + p.tensor_parallel_size - 1}"
        lines.append(f"{ranks:>4} {r.stage:>5} {r.layers:>6} {_g(r.weights_bytes):>11} {_g(r.activation_bytes):>11} "
                     f"{_g(r.non_torch_bytes):>10} {_g(r.available_kv_cache_bytes):>11}")
    lines += ["", "the engine will log:",
              f"  Available KV cache memory: {p.available_kv_cache_bytes / GiB:.2f} GiB",
              f"  GPU KV cache size: {p.kv_cache_tokens:,} tokens",
              f"  Maximum concurrency for {p.max_model_len:,} tokens per request: {p.max_concurrency:.2f}x"]
    if p.max_model_len_fit < p.max_model_len:
        lines.append(f"  the engine refuses --max-model-len {p.max_model_len:,}: the largest that fits is "
                     f"{p.max_model_len_fit:,}")
    if choice.rejected:
        lines += ["", "rejected:"] + [f"  {r.what}: {r.reason}" for r in choice.rejected]
    lines += ["", "command:"] + [f"  {c}" for c in p.command]
    lines += [f"note: {n}" for n in p.notes]
    return lines


def hint_lines(choice) -> list[str]:
    p = choice.plan
    head = (f"tensor parallel: vLLM {p.version} with TP {p.tensor_parallel_size} on {p.world_size} of these GPUs, "
            f"{p.precision} weights")
    if not p.fits:
        return ["", f"{head}: does not fit either ({choice.rejected[-1].reason if choice.rejected else ''})"]
    return ["", f"{head}, every GPU computing at once: {p.kv_cache_tokens:,} KV tokens, {p.max_concurrency:.2f} "
                f"sequences of {p.max_model_len:,} tokens (more: fitplan check --engine vllm):",
            f"  {p.command[-1]}"]
