"""The Python API: `fitplan.plan()`. Same option names as the CLI flags (`fitplan.options`)."""
from __future__ import annotations

from .hardware.machine import Hardware
from .planning.plan import Plan


def plan(model: str, *, context: int | None = None, batch: int | None = None, images: int | None = None,
         auto_class: str | None = None, precision: str | None = None,
         gpu: str | None = None, hardware: "str | Hardware | None" = None, headroom=None,
         offload: bool | None = None, min_precision: str | None = None, prefer: str | None = None,
         revision: str | None = None, token: str | None = None, offline: bool | None = None,
         use_cache: bool = True, engine: str | None = None, concurrency: int | None = None,
         tensor_parallel_size: int | None = None, pipeline_parallel_size: int | None = None,
         gpu_memory_utilization: float | None = None, kv_cache_dtype: str | None = None,
         quantization: str | None = None, max_num_seqs: int | None = None, max_num_batched_tokens: int | None = None,
         enforce_eager: bool | None = None) -> Plan:
    """Plan `model` (Hub id or local folder) for this machine, or for `gpu`/`hardware` if given.

    Never downloads weights; raises a `FitplanError` for bad input. A plan that does not fit is
    returned (check `plan.fits`), not raised: `load()` is what refuses to go on. `plan.inventory.auto_class`
    says which transformers Auto class the plan is for. With `engine="vllm"` or `"sglang"`, `plan.engine` is the
    deployment on that engine (fitplan.engines: per rank, what its startup log will say, the command).
    """
    from .pipeline import plan_model

    return plan_model(model, context=context, batch=batch, images=images, auto_class=auto_class,
                      precision=precision, gpu=gpu, hardware=hardware,
                      headroom=headroom, offload=offload, min_precision=min_precision, prefer=prefer,
                      revision=revision, token=token, offline=offline, use_cache=use_cache, engine=engine,
                      concurrency=concurrency, tensor_parallel_size=tensor_parallel_size,
                      pipeline_parallel_size=pipeline_parallel_size, gpu_memory_utilization=gpu_memory_utilization,
                      kv_cache_dtype=kv_cache_dtype, quantization=quantization, max_num_seqs=max_num_seqs,
                      max_num_batched_tokens=max_num_batched_tokens, enforce_eager=enforce_eager)
