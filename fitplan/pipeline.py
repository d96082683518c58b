"""The one orchestrator: probe → inspect → estimate → policy → plan.

`make_plan(Request)` is the only algorithm. Three front doors build its `Request` and call it:

- `plan_model(model, **options)`: `fitplan.plan()` and `fitplan check MODEL`;
- `plan_profile(path, ...)`: `fitplan check --profile` and `fitplan lock` (a lock beside the
  profile only adds a note);
- `plan_for_load(...)`: `fitplan.load()` and `fitplan verify`, for this machine; a profile's lock
  is followed, which is data on the request (`Request.pin`), not another algorithm.

Side effects live here and at the edges it calls (NVML, the Hub, the inventory cache); what it
hands on is frozen data.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Any, Callable

from .errors import OptionError
from .hardware.machine import Hardware, allocator_planned
from .hardware.resolve import resolve_hardware
from .model.cache import get_inventory
from .options import OPTION_KEYS, PLAN_KEYS, SOURCE_KEYS, PlanOptions, check_keys
from .planning.plan import Pin, Plan, decide


@dataclass(frozen=True)
class Request:
    """Everything one plan is made from, resolved: no defaults left to decide."""

    model: str
    options: PlanOptions
    hardware: Hardware
    revision: str | None = None
    token: str | None = None
    offline: bool | None = None
    pin: Pin | None = None
    notes: tuple[str, ...] = ()
    model_sha256: str | None = None  # a lock's digest of the local folder: it must still hold that
    context_given: bool = True  # False: the context is the default, which a model's position limit caps


def make_plan(req: Request, *, use_cache: bool = True, progress: Callable[[str], None] | None = None) -> Plan:
    """The plan for `req`, one stage after another: the model's source and inventory, the policy's choice (and
    what would make it fit), then what the plan adds for its target: a serving engine's deployment, or the Hub
    kernels, llama.cpp rows and tensor-parallel hint of a transformers load. `progress(text)` hears about slow
    steps (the first meta-device build of a config)."""
    from .model.sources import resolve

    src = resolve(req.model, revision=req.revision, token=req.token, offline=req.offline)
    digest = None
    if src.origin == "local":
        from .model.digest import checked_digest

        digest = checked_digest(src.local_path, req.model_sha256, since="locked",
                                fix="check the folder, or re-run `fitplan lock --force` on the profile")
    stored = None
    if src.tensors is not None and src.config.get("quantization_config"):
        stored = sum(t.nbytes for t in src.tensors)
    on_build = None if progress is None else (
        lambda _: progress(f"building {src.model_id} on the meta device (first plan for this config; cached after)"))
    # a folder is one model however it is named (`./m`, `/abs/m`): key the cache on where it is
    key_id = src.local_path if src.origin == "local" else src.model_id
    inv = get_inventory(src.config, model_id=key_id, stored_bytes=stored, stored_parameters=src.stored_parameters,
                        auto_class=req.options.auto_class, use_cache=use_cache, on_build=on_build)
    # the reserve planned is that of the allocator a load from this environment runs under
    hardware = replace(req.hardware, allocator=allocator_planned(os.environ))
    plan = decide(inv, hardware, req.options, model_id=src.model_id, origin=src.origin, revision=src.revision,
                  pin=req.pin, notes=req.notes, context_given=req.context_given, model_digest=digest)
    on_engine = plan.options.engine != "transformers"
    # one GPU is not enough, or the plan is a sequential split: say what vLLM tensor parallelism gives
    hint = not on_engine and len(hardware.gpus) > 1 and (
        not plan.fits or len({s.device for s in plan.decision.placement}) > 1)
    deployment = None
    if on_engine or hint:
        from .engines.choose import deploy

        deployment = deploy(inv, src.config, hardware, plan.options, plan.workload, model_id=plan.model_id,
                            hint=hint)
    if on_engine:
        return replace(plan, engine=deployment)
    # the Hub kernels from_pretrained fetches where the plan loads: CUDA when it places layers on a GPU (the
    # first one decides a capability-limited kernel); this machine's kernel cache only when it is the target
    from .model.kernels import keeps_fp8, keeps_mxfp4, kernel_use

    gpus = sorted(hardware.gpus, key=lambda g: g.index)
    on_gpu = any(s.device != "cpu" for s in plan.decision.placement) if plan.decision is not None else bool(gpus)
    plan = replace(plan, tp_hint=deployment, hub_kernels=kernel_use(
        inv, device="cuda" if on_gpu else "cpu", compute_capability=gpus[0].compute_capability if on_gpu and gpus
        else None, this_machine=hardware.source == "probe",
        mxfp4=plan.fits and keeps_mxfp4(inv, plan.precision, plan.decision.placement),
        fp8=plan.fits and keeps_fp8(inv, plan.precision, plan.decision.placement)))
    if not hardware.gpus or not plan.fits:
        # llama.cpp (GGUF) rows for a machine without a GPU or a plan that does not fit with bitsandbytes (none for
        # architectures the GGUF what-if cannot map)
        from .errors import UnsupportedModelError
        from .gguf import plan_gguf

        try:
            plan = replace(plan, gguf=plan_gguf(inv, hardware, context=plan.workload.context,
                                                n_parallel=plan.workload.batch, kv_type=plan.options.kv_type,
                                                headroom=plan.options.headroom, unified=hardware.unified))
        except UnsupportedModelError:
            pass
    if plan.pin is not None:
        from .profiles.lock import check_pin

        check_pin(plan)
    return plan


def plan_gguf_file(path: str, *, hardware: Hardware, options: PlanOptions):
    """`fitplan check FILE.gguf` (or a folder of .gguf files): llama.cpp rows from the header alone."""
    from .gguf import plan_gguf, read_gguf, read_gguf_folder

    model = read_gguf_folder(path) if os.path.isdir(path) else read_gguf(path)
    return plan_gguf(model, hardware, context=options.context, n_parallel=options.batch, kv_type=options.kv_type,
                     headroom=options.headroom, unified=hardware.unified)


def _given(settings, name: str) -> bool:
    """Whether a profile, a flag or a FITPLAN_* variable set `name` (else it is the default)."""
    return any(n == name for n, _ in settings.origin)


def _split(keywords: dict[str, Any]) -> tuple[PlanOptions, dict[str, Any]]:
    check_keys(keywords, OPTION_KEYS)
    return (PlanOptions.from_values(**{k: v for k, v in keywords.items() if k in PLAN_KEYS}),
            {k: keywords.get(k) for k in SOURCE_KEYS})


def plan_model(model: str, *, use_cache: bool = True, progress: Callable[[str], None] | None = None,
               **keywords) -> Plan:
    """`fitplan.plan()`: `keywords` are the options of `fitplan.options` (None: the default)."""
    options, where = _split(keywords)
    hw = resolve_hardware(where["gpu"], where["hardware"])
    return make_plan(Request(model, options, hw, where["revision"], where["token"], where["offline"],
                             context_given=keywords.get("context") is not None),
                     use_cache=use_cache, progress=progress)


def resolve_profile(path, *, model: str | None = None, overrides: dict | None = None, use_cache: bool = True,
                    environ=None, progress: Callable[[str], None] | None = None):
    """(profile, settings, plan) for a profile and the hardware it names, flags and FITPLAN_* applied."""
    from .profiles.lock import lock_notes, lock_path_for
    from .profiles.settings import profile_hardware, read_inputs

    overrides = dict(overrides or {})
    profile, s, env = read_inputs(path, model=model, overrides=overrides, environ=environ)
    hw = profile_hardware(profile, overrides, env)
    req = Request(s.model, s.options, hw, s.revision, s.token, s.offline, context_given=_given(s, "context"))
    plan = make_plan(req, use_cache=use_cache, progress=progress)
    notes = lock_notes(lock_path_for(path), profile, plan)
    return profile, s, replace(plan, extra_notes=plan.extra_notes + notes) if notes else plan


def plan_profile(path, *, model: str | None = None, overrides: dict | None = None, use_cache: bool = True,
                 environ=None, progress: Callable[[str], None] | None = None) -> Plan:
    """`fitplan check --profile`: the plan a profile describes (see `fitplan.profiles.settings`)."""
    return resolve_profile(path, model=model, overrides=overrides, use_cache=use_cache, environ=environ,
                           progress=progress)[2]


def plan_for_load(model: str | None = None, *, profile=None, hardware: Hardware | None = None,
                  use_cache: bool = True, environ=None, **keywords) -> Plan:
    """The plan `load()` follows: for this machine (probed, or `hardware` given as a `Hardware`).

    With a profile whose lock sits beside it, the lock's precision, revision and placement are
    followed (`Request.pin`); a lock the profile, model, workload or GPUs left is refused.
    """
    if keywords.get("gpu") or not (hardware is None or isinstance(hardware, Hardware)):
        raise OptionError("load() plans for the GPUs of this machine; gpu names and hardware files are for "
                         "fitplan.plan() and `fitplan check` (pass hardware= a fitplan Hardware to emulate a card)",
                          option="gpu" if keywords.get("gpu") else "hardware")
    keywords.pop("gpu", None)
    if hardware is None:
        from .hardware.probe import probe

        hardware = probe()
    if profile is None:
        if not model:
            raise OptionError("load() needs a model (Hub id or local folder) or profile=", option="model")
        options, where = _split(keywords)
        return make_plan(Request(model, options, hardware, where["revision"], where["token"], where["offline"],
                                 context_given=keywords.get("context") is not None), use_cache=use_cache)
    from .profiles.lock import check_lock, lock_path_for, pin_of, read_lock
    from .profiles.settings import read_inputs

    prof, s, _ = read_inputs(profile, model=model, overrides={k: v for k, v in keywords.items() if v is not None},
                             environ=environ)
    req = Request(s.model, s.options, hardware, s.revision, s.token, s.offline, context_given=_given(s, "context"))
    lock_file = lock_path_for(profile)
    if lock_file.is_file():
        lock = read_lock(lock_file)
        check_lock(lock, prof, s, hardware)
        req = replace(req, options=replace(s.options, precision=lock.precision), revision=lock.revision,
                      pin=pin_of(lock), model_sha256=lock.model_sha256)
    return make_plan(req, use_cache=use_cache)
