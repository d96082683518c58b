"""Choosing a deployment on a serving engine: tensor/pipeline parallel sizes, weights precision and KV dtype, fewest
GPUs first, then quality; each rejected option with its reason. And the command that starts it.

TP stays within a node and must divide the attention heads (vLLM and SGLang both refuse otherwise); pipeline
parallelism takes the rest (across nodes, or where TP cannot divide the heads), as both engines' docs advise.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace

from ..errors import FitplanError, OptionError, UnsupportedModelError
from ..options import PlanOptions, engine_release
from ..planning.workload import Workload
from ..hardware.machine import Hardware
from ..model import prequant
from ..model.inventory import Inventory
from ..versions import release_key
from .common import FP8_MIN_CC
from . import model, vllm
from .command import command
from .plan import EnginePlan, Knobs
from .sglang import plan_sglang
from .vllm import plan_vllm


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


def deploy(inv: Inventory, config: dict, hw: Hardware, options: PlanOptions, workload: Workload, *, model_id: str,
           hint: bool = False) -> EngineChoice | None:
    """The serving-engine deployment a plan's options ask for, at its workload (`fitplan.pipeline`'s one call
    into the engines). `hint`: instead, what vLLM tensor parallelism over the same GPUs gives with the checkpoint
    as it is (`fitplan check` says it when one GPU is not enough, or the plan is a sequential split): the largest
    power-of-two TP that divides the heads; None when none above 1 does, or fitplan cannot plan it for vLLM."""
    if hint:
        engine, knobs, concurrency, runs = "vllm", Knobs(kv_cache_dtype="auto"), workload.batch, None
    else:
        engine, concurrency, runs = options.engine, options.concurrency or workload.batch, options.engine_version
        knobs = Knobs(**{f.name: getattr(options, f.name) for f in fields(Knobs)})
    try:
        return plan_engine(inv, config, hw, engine=engine, knobs=knobs, max_model_len=workload.context,
                           concurrency=concurrency, model_id=model_id, explore=not hint, largest_tp=hint, runs=runs)
    except FitplanError:
        if hint:
            return None
        raise


def plan_engine(inv: Inventory, config: dict, hw: Hardware, *, engine: str, knobs: Knobs, max_model_len: int,
                concurrency: int, model_id: str, explore: bool = True, largest_tp: bool = False,
                runs: str | None = None) -> EngineChoice | None:
    """The deployment of `model_id` on `engine` over `hw`'s GPUs (one kind; `gpus_per_node` from the hardware), as
    the engine release `runs` accounts it (the newest mirrored at or below it; None: the newest mirrored).
    `explore` False plans `knobs` as they are (no fp8 variants); `largest_tp`: at the largest power-of-two TP
    that divides the heads (None when none above 1 does)."""
    version = engine_release(engine, runs)
    runs_note = () if runs is None or release_key(runs) == release_key(version) else (
        f"you run {engine} {runs}: this plan follows {version}, the newest release fitplan mirrors at or below it",)
    if not hw.gpus:
        raise OptionError(f"{engine} plans need GPUs: give --gpu (e.g. --gpu 4xh100) or a hardware file",
                          option="engine")
    gpu = hw.gpus[0]
    variants = _variants(inv, gpu.compute_capability, knobs) if explore else [knobs]
    if inv.prequantized and prequant.scheme(inv).method == "bitsandbytes" and engine == "sglang":
        raise UnsupportedModelError(f"{model_id} is a bitsandbytes checkpoint; fitplan sizes bitsandbytes for "
                                    "transformers and vllm only", model_type=inv.model_type)
    geo = model.geometry(config)
    model.check_state(inv, geo, engine, model_id, version,
                      state_pools=tuple(v for v, a in vllm.ACCOUNTING.items() if a.hybrid_state) if engine == "vllm"
                      else ())
    n = len(hw.gpus)
    if knobs.quantization == "fp8" and gpu.compute_capability < (8, 0):
        cc = ".".join(map(str, gpu.compute_capability))
        raise OptionError(f"quantization fp8 needs compute capability 8.0 (weight-only, Marlin) or 8.9 (W8A8); "
                         f"{gpu.name} has {cc}: drop --quantization", option="quantization")
    per_node = hw.gpus_per_node or n
    if largest_tp:
        tp = model.largest_tp(geo, per_node)
        if tp is None:
            return None
        knobs = replace(knobs, tensor_parallel_size=tp)
        variants = [knobs]  # the hint plans the checkpoint as it is (explore is off)
    tp0, pp0 = knobs.tensor_parallel_size or 1, knobs.pipeline_parallel_size or 1
    if knobs.tensor_parallel_size or knobs.pipeline_parallel_size:
        model.check_parallel(geo, tp0, pp0)
        if tp0 * pp0 > n:
            raise OptionError(f"tensor_parallel_size {tp0} x pipeline_parallel_size {pp0} = {tp0 * pp0} ranks, but the "
                             f"hardware has {n} GPU{'s' if n > 1 else ''}", option="tensor_parallel_size")
    layouts = model.layouts(geo, n, per_node, knobs)
    if max_model_len > (inv.max_positions or max_model_len):
        raise OptionError(f"context {max_model_len} exceeds {model_id}'s max_position_embeddings {inv.max_positions}; "
                         "the engine refuses a longer --max-model-len", option="context")
    rejected: list[Rejected] = []
    best: EnginePlan | None = None
    for tp, pp in layouts:
        for k in variants:
            p = (plan_vllm(inv, geo, gpu, k, tp=tp, pp=pp, max_model_len=max_model_len, concurrency=concurrency,
                           gpus_per_node=per_node, version=version) if engine == "vllm" else
                 plan_sglang(inv, geo, gpu, k, tp=tp, pp=pp, max_model_len=max_model_len, concurrency=concurrency,
                             gpus_per_node=per_node))
            p = replace(p, nodes=-(-tp * pp // per_node), command=command(p, model_id, per_node),
                        notes=runs_note + p.notes)
            if p.fits:
                return EngineChoice(p, tuple(rejected))
            rejected.append(Rejected(k.label(tp, pp), p.shortfall()))
            if best is None or (p.max_concurrency, p.available_kv_cache_bytes) > (best.max_concurrency,
                                                                                   best.available_kv_cache_bytes):
                best = p  # nothing fits: show the one that comes closest
    if best is None:
        raise OptionError(f"no tensor parallel size up to {n} divides {model_id}'s {geo.num_heads} attention heads",
                         option="tensor_parallel_size")
    return EngineChoice(best, tuple(rejected))
