"""`fitplan.load()` under `torchrun --nproc-per-node N`: each rank plans its share, then loads with
transformers' own tensor parallelism (the argument the installed release takes).

The world comes from torchrun's environment (`WORLD_SIZE`, `RANK`, `LOCAL_RANK`); transformers
starts the process group itself (NCCL on CUDA, each rank on GPU `LOCAL_RANK`; gloo on the CPU).
Everything that can refuse does so before a weight is read: bitsandbytes precisions, a model
without a TP plan on the installed release, heads the ranks cannot split, more ranks than GPUs, a
rank's share larger than its GPU's free memory.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from ..errors import TensorParallelError
from ..planning.plan import Plan
from ..planning.tensor_parallel import TensorParallelPlan, plan_tensor_parallel, refuse_precision
from ..vocab.units import fmt_bytes

#: from_pretrained arguments a tensor-parallel load cannot take: transformers places the shards itself.
NOT_WITH_TP = ("device_map", "max_memory", "quantization_config")


@dataclass(frozen=True)
class World:
    size: int
    rank: int
    local_rank: int


def world(environ=None) -> World | None:
    """This process's place in a torchrun launch; None outside one (or with one rank)."""
    env = os.environ if environ is None else environ
    if "WORLD_SIZE" not in env:
        return None
    try:
        w = World(int(env["WORLD_SIZE"]), int(env.get("RANK", "0")), int(env.get("LOCAL_RANK", env.get("RANK", "0"))))
    except ValueError:
        raise TensorParallelError(world_size=None, reason=f"WORLD_SIZE={env['WORLD_SIZE']!r:.20}, RANK and "
                                  "LOCAL_RANK are not all integers", fix="launch with torchrun --nproc-per-node N, "
                                  "which sets them") from None
    if w.size < 1 or not 0 <= w.rank < w.size:
        raise TensorParallelError(world_size=w.size, reason=f"RANK {w.rank} is outside WORLD_SIZE {w.size}",
                                  fix="launch with torchrun --nproc-per-node N, which sets them")
    return w if w.size > 1 else None


def device(w: World, plan: Plan) -> str:
    return f"cuda:{w.local_rank}" if plan.hardware.gpus else "cpu"


def prepare(plan: Plan, w: World, user: dict) -> tuple[TensorParallelPlan, dict]:
    """(this launch's per-rank plan, the from_pretrained kwargs), or `TensorParallelError` before loading."""
    refuse_precision(plan.precision, plan.inventory.prequantized, w.size)
    given = [k for k in NOT_WITH_TP if k in user]
    if given:
        raise TensorParallelError(world_size=w.size, reason=f"{given[0]}= cannot be combined with tensor "
                                  "parallelism (transformers places each rank's shards itself)",
                                  fix=f"drop {given[0]}=")
    if plan.offloaded:
        raise TensorParallelError(world_size=w.size, reason="the plan offloads layers to the CPU",
                                  fix="run more ranks on GPUs with more free memory, or run without torchrun")
    import torch

    from ..model import hf
    from ..model.sources import resolve

    src = resolve(plan.model_id, revision=plan.revision, token=user.get("token"))
    try:
        with hf.quiet():
            built = hf.build(src.config, plan.inventory.auto_class, torch.bfloat16,
                             trust_remote_code=bool(user.get("trust_remote_code")))
        rules = hf.tensor_parallel_rules(built.model)
    except hf.NoTensorParallelPlan as exc:
        raise TensorParallelError(
            world_size=w.size, reason=f"{exc} has no tensor-parallel plan in transformers {hf.version()} "
            "(its config's base_model_tp_plan is empty)",
            fix="run it without torchrun (fitplan splits it over the GPUs of one process), or pick a model "
                "whose config has a TP plan") from None
    except hf.UnplannedTensorParallelStyle as exc:
        raise TensorParallelError(
            world_size=w.size, reason=f"its plan uses {exc}, which fitplan does not plan on transformers {hf.version()}",
            fix="run it without torchrun (fitplan splits it over the GPUs of one process), or upgrade transformers "
                "(docs/engines.md lists what each release shards)") from None
    tp = plan_tensor_parallel(plan.inventory, rules, w.size, plan.load_dtype, precision=plan.precision,
                              transformers=hf.version())
    gpus = plan.hardware.gpus
    if gpus:
        here = next((g for g in gpus if g.index == w.local_rank), None)
        if here is None:
            raise TensorParallelError(world_size=w.size, reason=f"local rank {w.local_rank} has no GPU "
                                      f"({len(gpus)} visible)", fix=f"run at most {len(gpus)} ranks per node")
        need = tp.share(w.rank).weights_bytes
        if need > here.free_bytes:
            raise TensorParallelError(world_size=w.size, reason=f"rank {w.rank} holds {fmt_bytes(need)} of weights, "
                                      f"more than the {fmt_bytes(here.free_bytes)} free on GPU {here.index}",
                                      fix="run more ranks")
    kwargs = {"dtype": getattr(torch, plan.load_dtype), **hf.tensor_parallel_kwargs(w.size)}
    if plan.revision:
        kwargs["revision"] = plan.revision
    return tp, {**kwargs, **user}


def local_bytes(model) -> tuple[int, int]:
    """(parameter bytes, buffer bytes) this rank holds: a sharded parameter's local shard only, each
    storage once (a tied weight is one)."""
    import torch
    from torch.distributed.tensor import DTensor

    def bytes_of(tensors) -> int:
        seen = {}
        for t in tensors:
            t = t.to_local() if isinstance(t, DTensor) else t
            if isinstance(t, torch.Tensor) and t.device.type != "meta":
                seen[(t.untyped_storage().data_ptr(), t.storage_offset())] = t.numel() * t.element_size()
        return sum(seen.values())

    return bytes_of(model.parameters()), bytes_of(model.buffers())
