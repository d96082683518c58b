"""`fitplan.load()`: plan for this machine, re-check free memory, load with transformers as planned.

The only module that allocates model memory. Everything it decides comes from a `Plan`; what it
measured after loading is attached to the model as `model.fitplan`.
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field, replace
from typing import Any

from ..errors import DoesNotFitError, LibraryChangedError, OptionError
from ..vocab.classes import AUTO_CLASSES
from ..options import OPTION_KEYS
from ..planning.plan import Plan
from . import localcheck
from .kernels import fp8_kernel_fallback, hub_kernels_fallback, mxfp4_kernel_fallback, prequant_refusal

log = logging.getLogger("fitplan")

#: from_pretrained arguments a plan sets; a user value for one of them wins, with a warning.
PLANNED_KEYS = ("quantization_config", "dtype", "device_map", "max_memory")
#: Accepted and handed through untouched.
PASSTHROUGH_KEYS = ("revision", "token", "trust_remote_code", "attn_implementation", "cache_dir", "use_kernels",
                    "local_files_only", "low_cpu_mem_usage", "offload_folder", "subfolder", "variant",
                    "use_safetensors", "force_download")
#: A tokenizer of this many entries or fewer is not one: real vocabularies hold thousands of tokens.
MIN_TOKENIZER_SIZE = 16


@dataclass(frozen=True)
class LoadReport:
    """Attached as `model.fitplan`: the plan followed and what the devices hold after loading."""

    plan: Plan
    predicted_weights: dict = field(default_factory=dict)  # device -> bytes
    measured_weights: dict = field(default_factory=dict)  # device -> bytes
    overrides: tuple[str, ...] = ()
    allocator: str = ""  # how the CUDA allocator was set up for the load, in words (`configure_allocator`)
    #: under torchrun: the per-rank plan (`fitplan.planning.tensor_parallel.TensorParallelPlan`) and this rank
    tensor_parallel: Any = None
    rank: int | None = None
    generation: Any = None  # the setup applied (fitplan.planning.generation.Generation)
    warmup_s: float | None = None  # the first generate() (compile included) with warmup=True
    notes: tuple[str, ...] = ()  # what load() did that the plan alone does not say (Hub kernels left out)

    def __str__(self) -> str:  # `print(model.fitplan)`; the words live with the other renderers
        from ..render import render_load_report

        return render_load_report(self)


def _auto_class_name(auto_class):
    """`auto_class=` as fitplan's name for it: a name, or one of the Auto classes fitplan plans for
    (`AutoModelForCausalLM`). Any other class is refused: the plan would be for another model."""
    if auto_class is None or isinstance(auto_class, str):
        return auto_class
    names = {cls: name for name, cls in AUTO_CLASSES.items()}
    given = getattr(auto_class, "__name__", repr(auto_class))
    if given not in names:
        raise OptionError(f"auto_class: fitplan plans and loads {', '.join(AUTO_CLASSES.values())} only, not {given:.60} "
                         "(encoder-decoder and other heads are not planned); pass one of "
                         f"{', '.join(AUTO_CLASSES)}", option="auto_class")
    return names[given]


def merge_kwargs(planned: dict, user: dict) -> tuple[dict, tuple[str, ...]]:
    """Planned from_pretrained kwargs with the user's on top; names every planned value they replaced."""
    unknown = set(user) - set(PLANNED_KEYS) - set(PASSTHROUGH_KEYS)
    if unknown:
        raise OptionError(f"fitplan.load() does not know {', '.join(sorted(unknown))}; pass from_pretrained "
                         f"arguments among: {', '.join(PLANNED_KEYS + PASSTHROUGH_KEYS)}", option=sorted(unknown)[0])
    changed = tuple(f"{k}={user[k]!r} replaces the planned {planned[k]!r}" if k in planned else f"{k}={user[k]!r} added"
                    for k in user if k in PLANNED_KEYS and planned.get(k) != user[k])
    return {**planned, **user}, changed


def _recheck(plan: Plan, replan) -> Plan:
    """Free memory is read again just before loading; if others took it since, plan again."""
    if not plan.hardware.gpus or plan.hardware.source != "probe":
        return plan
    from ..hardware.probe import probe

    now = probe()
    need = {s.device: s.total_bytes for s in plan.decision.placement if s.device != "cpu"}
    short = [i for i, g in ((g.index, g) for g in now.gpus) if i in need and g.free_bytes < need[i]]
    gone = [i for i in need if i not in {g.index for g in now.gpus}]
    if not short and not gone:
        return plan
    new = replan(now)
    if not new.fits:
        raise DoesNotFitError(f"free GPU memory dropped since planning (another process?): {new.summary_line()}",
                              model_id=new.model_id)
    log.warning("fitplan: free GPU memory changed since planning; re-planned: %s", new.summary_line())
    return new


EXPANDABLE = "expandable_segments:True"


def configure_allocator(plan: Plan, environ=None) -> str:
    """Set PyTorch's CUDA allocator up as the plan budgeted its reserve (`Hardware.allocator`), before
    any weight is allocated; returns what was done, in words, for the load report.

    With no allocator settings of the user's, expandable segments are turned on at run time (torch
    reads the setting again for every new segment, so this holds whether or not CUDA is initialised;
    segments the process already reserved stay as they are). A user's own PYTORCH_CUDA_ALLOC_CONF /
    PYTORCH_ALLOC_CONF is left alone: the plan was made for it (`allocator_planned`)."""
    import os

    from ..hardware.machine import user_alloc_conf

    if not plan.hardware.gpus:
        return ""
    conf = user_alloc_conf(os.environ if environ is None else environ)
    if conf is not None:
        return (f"allocator: your {conf[0]}={conf[1]!r} is kept; the plan budgets the reserve of "
                f"{'expandable segments' if plan.hardware.allocator == 'expandable' else 'torch default segments'}")
    if plan.hardware.allocator != "expandable":  # a plan made for another environment's allocator
        return "allocator: torch's default segments, as the plan was made for"
    import torch

    setter = getattr(torch._C, "_accelerator_setAllocatorSettings", None)  # torch >= 2.9
    if setter is None:
        setter = getattr(getattr(torch.cuda, "memory", None), "_set_allocator_settings", None)  # torch 2.1-2.8
    if setter is None:
        raise LibraryChangedError(
            f"fitplan.load() cannot turn on the CUDA allocator's expandable segments on torch {torch.__version__}, "
            "which the plan assumes; set PYTORCH_CUDA_ALLOC_CONF=expandable_segments:False to plan and load with "
            "torch's default allocator", library="torch", version=torch.__version__,
            what="no allocator-settings function (torch._C._accelerator_setAllocatorSettings)")
    getter = getattr(torch._C, "_accelerator_getAllocatorSettings", None)
    setter(EXPANDABLE)
    if getter is not None and "expandable_segments:true" not in getter().replace(" ", "").lower():
        raise LibraryChangedError(
            f"torch {torch.__version__} did not take {EXPANDABLE!r} (its allocator settings read {getter()!r}); set "
            "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:False to plan and load with torch's default allocator",
            library="torch", version=torch.__version__, what=f"allocator settings read {getter()!r}")
    held = torch.cuda.memory_reserved() if torch.cuda.is_available() and torch.cuda.is_initialized() else 0
    already = (f"; the {held / 2**30:.2f} GiB this process had already reserved stays in default segments"
               if held else "")
    return f"allocator: expandable segments turned on before loading, as the plan budgets{already}"


def expandable_in_use() -> bool | None:
    """Whether the allocator holds expandable segments now (torch's memory snapshot says so per
    segment); None where there is no CUDA or the snapshot does not tell."""
    import torch

    if not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return None
    segs = torch.cuda.memory_snapshot()
    flags = [s.get("is_expandable") for s in segs if isinstance(s, dict)]
    if not flags or any(f is None for f in flags):
        return None
    return any(flags)


def _allocated() -> dict:
    import torch

    if not torch.cuda.is_available():
        return {}
    return {f"cuda:{i}": torch.cuda.memory_allocated(i) for i in range(torch.cuda.device_count())}


def _measured(model, before: dict) -> dict:
    """Bytes the load added per device: the allocator's growth on GPUs (what the GPU really holds,
    bitsandbytes' quant state included), the model's own tensors on the CPU."""
    from .measure import held_bytes

    held = held_bytes(model)
    after = _allocated()
    for dev in list(held):
        if dev in after:
            held[dev] = after[dev] - before.get(dev, 0)
    return held


def _predicted(plan: Plan) -> dict:
    out = {}
    for s in plan.decision.placement:
        out["cpu" if s.device == "cpu" else f"cuda:{s.device}"] = s.weights_bytes
    return out


def load(model: str | None = None, *, profile: str | None = None, tokenizer: bool = True, use_cache: bool = True,
         warmup: bool = False, **kwargs):
    """Plan `model` for this machine and load it as planned. Returns (model, tokenizer), or the model
    alone with `tokenizer=False`; for a vision-language model (planned as image-text-to-text) the
    second item is its processor (`AutoProcessor`: tokenizer and image processor). Raises
    `DoesNotFitError` before any download or allocation when nothing fits. The model is in eval
    mode; `model.fitplan` holds the plan and measured memory.

    `kwargs` are fitplan's options (`context`, `batch`, `precision`, `images`, `auto_class`, ... as in
    `fitplan.plan()`; `hardware=` only as a fitplan `Hardware`, to emulate a card) and `from_pretrained`
    arguments (PLANNED_KEYS override the plan with a warning; PASSTHROUGH_KEYS are handed through).
    The Auto class is the one the plan is for: the checkpoint's own unless `auto_class=` says
    "causal-lm" or "image-text-to-text" (or passes that transformers class).

    The model generates as `plan.generation` says (`fast=False`: plain transformers). With a static
    cache, it is sized for the planned `context` x `batch`: generate() calls past that context or with
    more sequences raise `PlannedShapeError`, and a smaller batch makes transformers compile again. A model
    with learned absolute positions (GPT-2, OPT) raises it past its positions, with any cache.
    `warmup=True` runs one short generate() at the planned batch before returning, so the first
    compile happens here; `model.fitplan.warmup_s` says how long it took.
    """
    from ..pipeline import plan_for_load

    if "auto_class" in kwargs:
        kwargs["auto_class"] = _auto_class_name(kwargs["auto_class"])
    options = {k: kwargs.pop(k) for k in list(kwargs) if k in OPTION_KEYS}
    if "torch_dtype" in kwargs:
        raise OptionError("fitplan.load() takes dtype=, not torch_dtype= (renamed in transformers 5)",
                          option="torch_dtype")
    user = dict(kwargs)
    merge_kwargs({}, user)  # unknown names are refused here, before anything is planned or loaded
    for key in ("revision", "token"):
        if key in user:
            options.setdefault(key, user[key])
    hardware = options.pop("hardware", None)

    def replan(hw):
        return plan_for_load(model, profile=profile, hardware=hw, use_cache=use_cache, **options)

    plan = replan(hardware)
    model = plan.model_id
    if plan.revision and "revision" not in user:
        user["revision"] = plan.revision
    prequant_refusal(plan)  # a package missing here that no row loads without: named, before the tokenizer and any weight
    if not plan.fits:
        hint = plan.suggestions()
        raise DoesNotFitError(plan.summary_line() + (f"; try: {hint[0]}" if hint else ""), model_id=plan.model_id)
    from .tensor_parallel import world

    w = world()  # under torchrun: each rank plans its share and loads with transformers' TP
    gen = None
    prequant_note = None
    if w is None:
        plan = _recheck(plan, replan)
        if "quantization_config" not in user:  # the user's own (e.g. Mxfp4Config) is theirs to choose
            plan, prequant_note = mxfp4_kernel_fallback(plan, replan)
            if prequant_note is None:
                plan, prequant_note = fp8_kernel_fallback(plan, replan)
        gen = plan.generation
        planned = plan.from_pretrained_kwargs()
        if gen is not None and gen.attn_implementation == "flash_attention_2":
            planned["attn_implementation"] = gen.attn_implementation
        tp, (kwargs, changed) = None, merge_kwargs(planned, user)
    else:
        from .tensor_parallel import prepare

        (tp, kwargs), changed = prepare(plan, w, user), ()
    for c in changed:
        log.warning("fitplan: user argument overrides the plan: %s", c)
    notes = ()
    if prequant_note:
        notes = (prequant_note,)
        log.warning("fitplan: %s", prequant_note)
    if "use_kernels" not in user:
        kernels_off = hub_kernels_fallback(plan.hub_kernels)
        if kernels_off:
            kwargs["use_kernels"] = False
            notes += (kernels_off,)
            log.warning("fitplan: %s", kernels_off)
    import transformers

    cls = getattr(transformers, AUTO_CLASSES[plan.inventory.auto_class])
    vlm = plan.inventory.auto_class == "image-text-to-text"
    local = plan.origin == "local"
    if local:
        localcheck.require_weights(model, user.get("subfolder"))
    tok = _tokenizer(model, user, processor=vlm) if tokenizer else None  # before any weight is read or allocated
    import torch

    if local:
        localcheck.require_unchanged(plan)  # the folder still holds what was planned, before any weight is read
    allocator = configure_allocator(plan)  # before the first weight is allocated
    before = _allocated()
    with localcheck.local_load_errors(model) if local else contextlib.nullcontext():
        loaded = cls.from_pretrained(model, **kwargs)
    loaded.eval()
    loaded.requires_grad_(False)
    if allocator.startswith("allocator: expandable") and expandable_in_use() is False:
        allocator = "allocator: expandable segments were asked for, but torch's snapshot shows none"
        log.warning("fitplan: %s; the plan budgeted their smaller reserve", allocator)
    if tp is None:
        report = LoadReport(plan, _predicted(plan), _measured(loaded, before), changed, allocator, generation=gen,
                            notes=notes)
    else:
        from .tensor_parallel import device, local_bytes

        dev = device(w, plan)
        report = LoadReport(plan, {dev: tp.share(w.rank).weights_bytes}, {dev: sum(local_bytes(loaded))}, changed,
                            allocator, tp, w.rank, notes=notes)
    from . import generation as apply_gen

    if gen is not None:
        apply_gen.apply(loaded, gen, context=plan.workload.context, batch=plan.options.batch)
    limit = plan.inventory.position_limit
    if limit and not (gen is not None and gen.static):  # a static cache's guard already stops at the context
        apply_gen.guard_positions(loaded, limit=limit, model_id=plan.model_id)
    loaded.fitplan = report
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    if warmup:
        took = apply_gen.warmup(loaded, batch=plan.options.batch, vocab_size=plan.inventory.vocab_size)
        loaded.fitplan = replace(report, warmup_s=took)
    return (loaded, tok) if tokenizer else loaded


def _tokenizer(model: str, user: dict, *, processor: bool = False):
    """The model's tokenizer (with `processor`, its `AutoProcessor`: a vision-language model needs the
    image processor too), resolved before the model loads, so a folder without one fails in a second,
    not after minutes of loading weights."""
    from transformers import AutoProcessor, AutoTokenizer

    tok_kw = {k: user[k] for k in ("revision", "token", "trust_remote_code", "cache_dir") if k in user}
    what = "processor" if processor else "tokenizer"
    try:
        loaded = (AutoProcessor if processor else AutoTokenizer).from_pretrained(model, **tok_kw)
        tok = getattr(loaded, "tokenizer", None) if processor else loaded
        if processor and (tok is None or not hasattr(loaded, "image_processor")):
            raise ValueError(f"AutoProcessor gave a {type(loaded).__name__} without a tokenizer and an image processor")
    except Exception as exc:  # noqa: BLE001 - transformers raises many types here; one line for the user
        reason = " ".join(str(exc).split())[:200] or type(exc).__name__
        tok = None
    else:
        # transformers 5.0 builds a tokenizer from nothing when a folder has no tokenizer files (a
        # CodeLlamaTokenizer of 3 tokens): a vocabulary that small is no tokenizer
        reason = f"transformers made a {type(tok).__name__} of {len(tok)} tokens, so it found no tokenizer files"
        tok = tok if len(tok) > MIN_TOKENIZER_SIZE else None
    if tok is None:
        raise OptionError(f"{model!r} has no {what} fitplan.load() can use ({reason}); pass tokenizer=False "
                         "to load the model alone", option="tokenizer")
    return loaded if processor else tok
