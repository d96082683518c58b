"""The lock beside a profile: the resolved plan a load must reproduce, written by `fitplan lock`.

`render_lock` writes it, `read_lock` parses it, `check_lock` refuses a machine, profile, model or
workload that left it, and `pin_of` turns it into the `Pin` a followed plan carries as data.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..errors import DoesNotFitError, FileError, HardwareError, InputError
from ..hardware.machine import Hardware
from ..vocab import precision as P
from ..planning.plan import Pin, Plan
from ..vocab.units import fmt_bytes
from ..versions import fitplan_version, lib_versions
from ..vocab.kinds import describe
from ..yamlsource import YamlMap, get_int, get_str, load_yaml, require_list, require_map
from .settings import Profile, Settings

LOCK_VERSION = 1
#: A probed GPU still "is" the locked one when its total memory is within this share of the lock's
#: (drivers round differently); ECC on/off moves GDDR cards by 1/16, well outside it.
LOCK_MEMORY_TOLERANCE = 0.02


# -- the lock -------------------------------------------------------------------------------------

def lock_path_for(profile_path: str | os.PathLike) -> Path:
    """`deploy/fitplan.yaml` -> `deploy/fitplan.lock.yaml`."""
    p = Path(profile_path)
    stem = p.name[: -len(p.suffix)] if p.suffix in (".yaml", ".yml") else p.name
    return p.with_name(f"{stem}.lock.yaml")


@dataclass(frozen=True)
class Lock:
    """What `fitplan.load(profile=...)` holds a machine to. Parsed from `<profile>.lock.yaml`."""

    path: str
    profile_sha256: str
    model: str
    revision: str | None
    context: int
    batch: int
    images: int
    auto_class: str
    precision: str
    compute_dtype: str
    device_map: Any  # "auto" | "cpu" | (("", index),)
    max_memory: tuple[tuple[Any, int], ...] | None
    gpus: tuple[tuple[str, int], ...]  # (name, total bytes) in CUDA order
    needs: tuple[tuple[Any, int], ...]  # (device, bytes planned there) per device of the placement
    model_sha256: str | None = None  # a local folder's content (fitplan.model.digest); None for Hub models
    kv_type: str = "f16"  # the llama.cpp KV cache type the plan's GGUF rows were made for


#: The keys of a serving-engine lock's `engine:` that a later check must plan again: the deployment. The figures
#: (KV tokens, concurrency) follow from them; a check that plans another deployment says so (`lock_notes`).
ENGINE_LOCK_KEYS = ("name", "version", "tensor_parallel_size", "pipeline_parallel_size", "nodes", "gpus_per_node",
                    "gpu_name", "precision", "kv_cache_dtype", "gpu_memory_utilization", "max_model_len",
                    "quantization", "command")


def engine_summary(plan: Plan) -> str:
    """One line for a serving-engine plan (`fitplan lock`'s answer, the lock's header)."""
    e = plan.engine.plan
    if not e.fits:
        return f"{plan.model_id} on {e.name}: " + (plan.engine.rejected[-1].reason if plan.engine.rejected else
                                                   "does not fit")
    nodes = f" on {e.nodes} nodes of {e.gpus_per_node} GPUs" if e.nodes > 1 else ""
    return (f"{plan.model_id} on {e.name} {e.version}: TP {e.tensor_parallel_size} x PP {e.pipeline_parallel_size}"
            f"{nodes}, {e.precision} weights, {e.kv_cache_tokens:,} KV tokens")


@dataclass(frozen=True)
class EngineLock:
    """A serving-engine lock (`engine:` instead of `plan:`), parsed: what `fitplan check --profile` compares."""

    path: str
    profile_sha256: str
    model: str
    engine: dict  # ENGINE_LOCK_KEYS -> the locked value (the command as a tuple)


def _render_engine_lock(plan: Plan, profile: Profile, settings: Settings, profile_path) -> str:
    """The lock of a serving-engine plan: the deployment (sizes, engine settings, command) it was made with."""
    e = plan.engine.plan
    if not e.fits:
        raise DoesNotFitError(engine_summary(plan), model_id=plan.model_id)
    data = {
        "lock_version": LOCK_VERSION, "profile": Path(profile_path).name, "profile_sha256": profile.digest,
        "model": plan.model_id, "revision": plan.revision or settings.revision, "origin": plan.origin,
        "workload": {"context": plan.options.context, "concurrency": e.concurrency},
        "engine": {k: v for k, v in e.to_dict().items() if k not in ("per_rank", "notes")},
        "hardware": {"source": plan.hardware.source, "gpus": [{"index": g.index, "name": g.name,
                                                               "total_bytes": g.total_bytes} for g in plan.hardware.gpus]},
        "versions": {"fitplan": fitplan_version(), **lib_versions()},
    }
    head = (f"# fitplan lock for {Path(profile_path).name}: written by `fitplan lock`, read by `fitplan check "
            f"--profile`. Do not edit.\n# {engine_summary(plan)}\n")
    return head + yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=100, default_flow_style=None)


def render_lock(plan: Plan, profile: Profile, settings: Settings, profile_path: str | os.PathLike) -> str:
    """The lock file's text: the resolved plan a load must reproduce, and what it was made from."""
    if plan.engine is not None:
        return _render_engine_lock(plan, profile, settings, profile_path)
    if not plan.fits:
        raise DoesNotFitError(plan.summary_line(), model_id=plan.model_id)
    d = plan.decision
    kwargs = plan.kwargs_as_data()
    mm = plan.max_memory()
    data = {
        "lock_version": LOCK_VERSION,
        "profile": Path(profile_path).name,
        "profile_sha256": profile.digest,
        "model": plan.model_id,
        "revision": plan.revision or settings.revision,
        "origin": plan.origin,
        **({"model_sha256": plan.model_digest} if plan.model_digest else {}),
        "auto_class": plan.inventory.auto_class,
        "workload": {"context": plan.options.context, "batch": plan.options.batch, "images": plan.options.images,
                     "kv_type": plan.options.kv_type},
        "plan": {
            "precision": d.precision,
            "compute_dtype": plan.compute_dtype,
            "device_map": plan.device_map(),
            "max_memory": mm,
            "quantization_config": plan.quantization_kwargs(),
            "offload_bytes": d.offload_bytes,
            "generation": None if d.generation is None else d.generation.to_dict(),
            "reason": d.reason,
            "devices": [s.to_dict() for s in d.placement],
        },
        "estimate": d.estimate.to_dict(),
        "from_pretrained_kwargs": kwargs,
        "hardware": {
            "source": plan.hardware.source,
            "gpus": [{"index": g.index, "name": g.name, "total_bytes": g.total_bytes,
                      "compute_capability": f"{g.compute_capability[0]}.{g.compute_capability[1]}"}
                     for g in plan.hardware.gpus],
            "cpu_ram_bytes": plan.hardware.cpu_ram_bytes,
        },
        "versions": {"fitplan": fitplan_version(), **lib_versions()},
    }
    head = (f"# fitplan lock for {Path(profile_path).name}: written by `fitplan lock`, read by "
            f"fitplan.load(profile=...). Do not edit.\n"
            f"# {plan.summary_line()}\n"
            f"# After changing the profile or the hardware: fitplan lock --force {profile_path}\n")
    body = yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=100, default_flow_style=None)
    # PyYAML writes the empty key of device_map={"": 0} as an explicit `? ''` key; the plain form reads the same.
    return head + body.replace("{? '' : ", "{'': ")


def read_lock(path: str | os.PathLike) -> Lock | EngineLock:
    """Parse a lock file (a serving-engine lock is an `EngineLock`); a damaged or foreign one is an InputError
    saying to re-run `fitplan lock`."""
    name = str(path)
    fix = "re-run `fitplan lock --force` on the profile"
    try:
        doc = require_map(load_yaml(Path(path), source_name=name), where=f"{name}:1", what="a fitplan lock file")
        version = get_int(doc, "lock_version", what="lock", required=True)
        if version != LOCK_VERSION:
            raise FileError(f"{doc.where('lock_version')}: lock_version {version} is not {LOCK_VERSION}, the "
                             f"version this fitplan reads", **doc.at("lock_version"))
        digest = get_str(doc, "profile_sha256", what="lock", required=True)
        model = get_str(doc, "model", what="lock", required=True)
        if "engine" in doc:
            return EngineLock(name, digest, model, _lock_engine(doc))
        revision = get_str(doc, "revision", what="lock")
        model_sha256 = get_str(doc, "model_sha256", what="lock")  # local folders only
        work = require_map(doc.get("workload"), where=doc.where("workload"), what="lock workload")
        context = get_int(work, "context", what="workload", required=True, minimum=1)
        batch = get_int(work, "batch", what="workload", required=True, minimum=1)
        images = get_int(work, "images", what="workload", minimum=0) or 0  # locks before images: none
        kv_type = get_str(work, "kv_type", what="workload") or "f16"  # locks before it: llama.cpp's default
        auto_class = get_str(doc, "auto_class", what="lock") or "causal-lm"  # locks before it: causal LMs only
        plan = require_map(doc.get("plan"), where=doc.where("plan"), what="lock plan")
        precision = get_str(plan, "precision", what="plan", required=True)
        if precision not in P.BY_NAME and not P.is_label(precision):
            raise FileError(f"{plan.where('precision')}: plan.precision: unknown precision {precision!r}",
                            **plan.at("precision"))
        compute = get_str(plan, "compute_dtype", what="plan", required=True)
        device_map = _lock_device_map(plan)
        max_memory = _lock_max_memory(plan)
        needs = _lock_needs(plan)
        hw = require_map(doc.get("hardware"), where=doc.where("hardware"), what="lock hardware")
        items = require_list(hw.get("gpus"), where=hw.where("gpus"), what="hardware.gpus")
        gpus = []
        for i, g in enumerate(items):
            g = require_map(g, where=items.where(i), what=f"hardware.gpus[{i}]")
            gpus.append((get_str(g, "name", what=f"hardware.gpus[{i}]", required=True),
                         get_int(g, "total_bytes", what=f"hardware.gpus[{i}]", required=True, minimum=0)))
    except InputError as err:
        raise FileError(f"{err}; this lock cannot be used: {fix}", **FileError.fields_of(err, name)) from None
    return Lock(name, digest, model, revision, context, batch, images, auto_class, precision, compute, device_map,
                max_memory, tuple(gpus), needs, model_sha256, kv_type)


def _lock_engine(doc: YamlMap) -> dict:
    """A serving-engine lock's deployment (`ENGINE_LOCK_KEYS`), each key present and of a plain type."""
    eng = require_map(doc.get("engine"), where=doc.where("engine"), what="lock engine")
    out = {}
    for key in ENGINE_LOCK_KEYS:
        if key not in eng:
            raise FileError(f"{eng.where(key)}: engine is missing the required key {key!r}", **eng.at(key))
        value = eng[key]
        if key == "command":
            value = tuple(require_list(value, where=eng.where(key), what="engine.command"))
        if not isinstance(value, (str, int, float, tuple, type(None))) or \
                (isinstance(value, tuple) and not all(isinstance(c, str) for c in value)):
            raise FileError(f"{eng.where(key)}: engine.{key}: unexpected {describe(value)}", **eng.at(key))
        out[key] = value
    return out


def engine_lock_change(lock: EngineLock, plan: Plan) -> str | None:
    """How a check's serving-engine deployment differs from the locked one, or None."""
    if plan.engine is None:
        return f"the lock pins a {lock.engine['name']} deployment, this check plans no engine"
    now = plan.engine.plan.to_dict()
    now["command"] = tuple(now["command"])
    for key in ENGINE_LOCK_KEYS:
        if now[key] != lock.engine[key]:
            return f"engine.{key} is {now[key]!r} in this check, {lock.engine[key]!r} in the lock"
    return None


def _lock_device_map(plan: YamlMap):
    value = plan.get("device_map")
    if value in ("auto", "cpu"):
        return value
    def device(d) -> bool:
        return d == "cpu" or (isinstance(d, int) and not isinstance(d, bool) and d >= 0)

    # {'': GPU index} for one GPU; {module: GPU index or 'cpu'} for an offloaded plan (every module named)
    if isinstance(value, YamlMap) and value and all(isinstance(k, str) and device(v) for k, v in value.items()):
        return tuple(value.items())
    raise FileError(f"{plan.where('device_map')}: plan.device_map must be 'auto', 'cpu', {{'': GPU index}} or a "
                     f"map of modules to GPU indices and 'cpu', got {describe(value)}", **plan.at("device_map"))


def _lock_max_memory(plan: YamlMap):
    value = plan.get("max_memory")
    if value is None:
        return None
    value = require_map(value, where=plan.where("max_memory"), what="plan.max_memory")
    out = []
    for key, n in value.items():
        good_key = key == "cpu" or (isinstance(key, int) and not isinstance(key, bool) and key >= 0)
        if not good_key or isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise FileError(f"{value.where(key)}: plan.max_memory must map GPU indices (and 'cpu') to bytes",
                            **value.at(key))
        out.append((key, n))
    return tuple(out)


def _lock_needs(plan: YamlMap) -> tuple[tuple[Any, int], ...]:
    items = require_list(plan.get("devices"), where=plan.where("devices"), what="plan.devices")
    out = []
    for i, d in enumerate(items):
        d = require_map(d, where=items.where(i), what=f"plan.devices[{i}]")
        dev = d.get("device")
        if not (dev == "cpu" or (isinstance(dev, int) and not isinstance(dev, bool) and dev >= 0)):
            raise FileError(f"{d.where('device')}: plan.devices[{i}].device must be a GPU index or 'cpu'",
                            **d.at("device"))
        out.append((dev, get_int(d, "total_bytes", what=f"plan.devices[{i}]", required=True, minimum=0)))
    return tuple(out)


def check_lock(lock: Lock | EngineLock, profile: Profile, s: Settings, hw: Hardware) -> None:
    """Refuse to load when the profile, the model, the workload or this machine's GPUs left the lock."""
    fix = f"re-run `fitplan lock --force {profile.path}`"
    if isinstance(lock, EngineLock):
        name, command = lock.engine["name"], lock.engine["command"]
        raise FileError(f"{lock.path} locks a {name} deployment, which fitplan.load() does not start: run its "
                        f"command ({command[-1] if command else name}), or drop 'engine:' from the profile and re-run "
                        "`fitplan lock --force` to load with transformers", path=str(lock.path), key="engine")
    if lock.profile_sha256 != profile.digest:
        raise FileError(f"{profile.path} changed since it was locked ({lock.path}); {fix} and commit the new lock",
                        path=str(profile.path))
    if s.model != lock.model:
        raise FileError(f"model {s.model!r} (from {s.source_of('model')}) is not the locked {lock.model!r} "
                         f"({lock.path}); drop the override or {fix}", path=str(lock.path), key="model")
    for name in ("context", "batch", "images", "auto_class", "kv_type"):
        now, locked = getattr(s.options, name), getattr(lock, name)
        if name == "context" and locked < now and not any(n == "context" for n, _ in s.origin):
            continue  # the default context, capped at the model's positions when planned (planning.workload.planned)
        if now != locked and not (name == "auto_class" and now is None):  # None: the checkpoint's own, as locked
            raise FileError(f"{name} {now} (from {s.source_of(name)}) differs from the locked {locked} "
                             f"({lock.path}); drop the override or {fix}", path=str(lock.path), key=name)
    if s.options.precision is not None and s.options.precision != lock.precision:
        raise FileError(f"precision {s.options.precision} (from {s.source_of('precision')}) differs from the locked "
                         f"{lock.precision} ({lock.path}); drop it or {fix}", path=str(lock.path), key="precision")
    problem = hardware_change(lock.gpus, hw)
    if problem:
        raise HardwareError(f"this machine's GPUs differ from the lock {lock.path}: {problem}; "
                            f"{fix} for this hardware", gpu=None, path=str(lock.path))


def hardware_change(locked: tuple[tuple[str, int], ...], hw: Hardware) -> str | None:
    """How this machine's GPUs differ from the locked ones (count, names, total memory), or None."""
    def say(n):
        return "no GPU" if n == 0 else f"{n} GPU{'s' if n > 1 else ''}"

    if len(locked) != len(hw.gpus):
        return f"the lock was made for {say(len(locked))}, this machine has {say(len(hw.gpus))}"
    for (name, total), g in zip(locked, hw.gpus):
        if _gpu_name(name) != _gpu_name(g.name):
            return f"GPU {g.index} is {g.name}, the lock has {name}"
        if abs(g.total_bytes - total) > LOCK_MEMORY_TOLERANCE * total:
            return (f"GPU {g.index} ({g.name}) has {fmt_bytes(g.total_bytes)} in total, the lock has "
                    f"{fmt_bytes(total)} (ECC or MIG setting changed?)")
    return None


def _gpu_name(name: str) -> str:
    n = " ".join(name.lower().split())
    return n.removeprefix("nvidia ")


def pin_of(lock: Lock) -> Pin:
    """What a plan that follows `lock` must reproduce (`Plan.pin`)."""
    return Pin(path=lock.path, precision=lock.precision, compute_dtype=lock.compute_dtype,
               device_map=lock.device_map, max_memory=lock.max_memory, needs=lock.needs)


def check_pin(plan: Plan) -> None:
    """The locked placement must still find room on this machine: the same compute dtype, and each
    GPU at least as much free memory now as the lock puts on it (else DoesNotFitError, exit 1)."""
    pin = plan.pin
    if plan.compute_dtype != pin.compute_dtype:
        raise HardwareError(f"this machine computes in {plan.compute_dtype}, the lock {pin.path} in "
                            f"{pin.compute_dtype}; re-run `fitplan lock --force` on this hardware",
                            gpu=None, path=str(pin.path))
    free = {g.index: g.free_bytes for g in plan.hardware.gpus}
    for dev, need in pin.needs:
        if dev != "cpu" and free.get(dev, 0) < need:
            raise DoesNotFitError(f"GPU {dev} has {fmt_bytes(free.get(dev, 0))} free, the locked plan ({pin.path}) "
                                  f"puts {fmt_bytes(need)} there; free GPU memory (another process?) or re-run "
                                  "`fitplan lock --force` on the profile", model_id=plan.model_id)


def lock_notes(lock_file: Path, profile: Profile, plan: Plan) -> tuple[str, ...]:
    """For `check --profile`: a stale or disagreeing lock is worth a note, not a failure."""
    if not lock_file.is_file():
        return ()
    fix = f"re-run `fitplan lock --force {profile.path}`"
    try:
        lock = read_lock(lock_file)
    except InputError as err:
        return (f"lock {lock_file} cannot be read ({err})",)
    if isinstance(lock, EngineLock):
        if lock.profile_sha256 != profile.digest:
            return (f"lock {lock_file} is stale: {profile.path} changed since it was locked; {fix}",)
        change = engine_lock_change(lock, plan) if plan.model_id == lock.model else \
            f"it pins {lock.model}, this check plans {plan.model_id}"
        return (f"lock {lock_file} differs from this check: {change} (flags or FITPLAN_* variables?)",) if change \
            else ()
    if lock.profile_sha256 != profile.digest:
        return (f"lock {lock_file} is stale: {profile.path} changed since it was locked, so "
                f"fitplan.load(profile=...) will refuse it; {fix}",)
    if plan.engine is not None:
        return (f"lock {lock_file} pins a transformers load, this check plans a {plan.engine.plan.name} deployment "
                f"(flags or FITPLAN_* variables?)",)
    if lock.model_sha256 and plan.model_digest and lock.model_sha256 != plan.model_digest:
        return (f"lock {lock_file} is stale: the model folder {plan.model_id} changed since it was locked (its "
                f"config.json or safetensors headers differ), so fitplan.load(profile=...) will refuse it; {fix}",)
    if plan.fits and (plan.precision != lock.precision or plan.model_id != lock.model):
        return (f"lock {lock_file} pins {lock.model} at {lock.precision}, this check plans {plan.model_id} at "
                f"{plan.precision} (flags or FITPLAN_* variables?)",)
    return ()

