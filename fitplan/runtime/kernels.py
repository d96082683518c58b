"""The Hub kernels a load needs, found before any weight is read: `load()` asks here what to do when one is not
in the local kernel cache and cannot be fetched (docs/compatibility.md, "Hub kernels").

- the layer kernels 5.25 swaps in (`use_kernels`): load without them (`hub_kernels_fallback`);
- the kernel that keeps gpt-oss's mxfp4 packed (every version) and the one fp8 layers run through (from 5.17):
  plan again for a target without `kernels` (the dequantized row) and load that, or refuse in one line when it
  does not fit or a lock pins the stored row (`mxfp4_kernel_fallback`, `fp8_kernel_fallback`);
- a checkpoint no row of which the transformers here loads (5.0's fp8 without triton): refuse in one line, by the
  plan's own rule (`prequant.refusal`).
"""
from __future__ import annotations

import re
from dataclasses import replace

from ..errors import DependencyError, DoesNotFitError
from ..planning.plan import Plan


def hub_kernels_fallback(use) -> str | None:
    """None when `from_pretrained` can load the Hub kernels the plan's target needs (or needs none); else the
    one note saying it loads without them. A repository missing from the local kernel cache is fetched now,
    before any weight is read, unless the Hub is offline; one that cannot be had means `use_kernels=False`
    (the torch path, which is what fitplan planned) instead of a ValueError inside from_pretrained."""
    if use is None or not use.used:
        return None
    from ..model import hf

    missing = [r for r in use.repos if not hf.kernel_cached(r.repo_id, r.ref)]
    if not missing:
        return None
    names = ", ".join(f"{r.repo_id} {r.ref}" for r in missing)
    if hf.hub_offline():
        why = "the Hub is offline (HF_HUB_OFFLINE)"
    else:
        errors = [e for e in (hf.fetch_kernel(r.repo_id, r.ref) for r in missing) if e]
        if not errors:
            return None
        why = f"fetching failed ({errors[0]})"
    return (f"loaded without Hub kernels (use_kernels=False): {names} not in the local kernel cache and {why}; "
            "the torch path is what the plan sized. Load once with the Hub reachable to cache them")


def mxfp4_kernel_fallback(plan: Plan, replan) -> tuple[Plan, str | None]:
    """(plan, None) when the plan does not keep mxfp4 (gpt-oss) packed on a GPU, or when the Hub kernel that
    transformers fetches for it (`hf.mxfp4_kernel_repo()`, inside `from_pretrained`, with or without
    `use_kernels`) is in the local kernel cache or can be fetched now, before any weight is read. Otherwise the
    kernel-less path: the plan made again for a target without the kernel (mxfp4 dequantized to bf16, the size
    transformers then holds) and the one note that says so; `load()` passes `Mxfp4Config(dequantize=True)`.
    When that dequantized plan does not fit, or a lock pins mxfp4, `DoesNotFitError` in one line naming the
    kernel and how to fetch it, instead of a ValueError inside from_pretrained."""
    kernel = plan.hub_kernels.mxfp4 if plan.fits and plan.hub_kernels is not None else None  # model/kernels.py
    return _kernel_fallback(plan, replan, kernel, "mxfp4")


def fp8_kernel_fallback(plan: Plan, replan) -> tuple[Plan, str | None]:
    """The same for an fp8 checkpoint kept as fp8 on a GPU: from transformers 5.17 its FP8Linear / FP8Experts
    fetch a Hub kernel (`hf.fp8_kernel_repo()`) at the first forward, after the load, and offline a kernel not
    cached is a ValueError there. Found here before any weight is read; without it the plan is made again for a
    target without `kernels` (fp8 dequantized to bf16) and `load()` passes `FineGrainedFP8Config(dequantize=True)`;
    a dequantized plan that does not fit, or a lock pinning fp8, is refused in one line."""
    kernel = plan.hub_kernels.fp8 if plan.fits and plan.hub_kernels is not None else None  # model/kernels.py
    return _kernel_fallback(plan, replan, kernel, "fp8")


def _kernel_fallback(plan: Plan, replan, kernel, what: str) -> tuple[Plan, str | None]:
    from ..model import hf
    from ..model.prequant import DEQUANTIZED_CONFIGS

    if kernel is None:
        return plan, None
    repo_id, ref = kernel.repo_id, kernel.ref
    if hf.kernel_cached(repo_id, ref):  # now, not when planned
        return plan, None
    if hf.hub_offline():
        why = "the Hub is offline (HF_HUB_OFFLINE)"
    else:
        error = hf.fetch_kernel(repo_id, ref)
        if error is None:
            return plan, None
        why = f"fetching it failed ({error})"
    spec = f"version={ref[1:]}" if re.fullmatch(r"v\d+", ref) else f"revision='{ref}'"
    fetch = (f"fetch it once with the Hub reachable: python -c \"from kernels import install_kernel; "
             f"install_kernel('{repo_id}', {spec})\"")
    head = f"{plan.model_id}: {what} needs the Hub kernel {repo_id} {ref}, which is not in the local kernel cache " \
           f"and {why}"
    if plan.pin is not None:
        raise DoesNotFitError(f"{head}; the lock {plan.pin.path} pins {what}; {fetch}", model_id=plan.model_id)
    from ..hardware.software import Software

    sw = plan.hardware.software
    triton = hf.mxfp4_kernels()[0] if sw is None else sw.triton
    new = replan(replace(plan.hardware, software=Software(triton=triton, kernels=False, declared=("kernels",))))
    if not new.fits:
        raise DoesNotFitError(f"{head}; dequantized (the path without it) it does not fit: {new.summary_line()}; "
                              f"{fetch}", model_id=plan.model_id)
    config = f"{DEQUANTIZED_CONFIGS[what]}(dequantize=True)"  # what the new plan's from_pretrained arguments carry
    return new, (f"loaded {what} dequantized to {new.precision} ({config}), planned at that size: "
                 f"the Hub kernel {repo_id} {ref} is not in the local kernel cache and {why}; to keep {what}, {fetch}")


def prequant_refusal(plan: Plan) -> None:
    """A pre-quantized checkpoint that transformers here loads in no row, dequantized or not (5.0 imports triton
    at the top of its fp8 integration): refused in one line naming the package, before any weight. The rule is
    the plan's own (`prequant.refusal`), read for this machine, where the load runs, whatever target the plan
    described."""
    from ..planning import prequant

    inv = plan.inventory
    if not inv.prequantized:
        return
    target = prequant.target_of(inv, plan.hardware.gpus)  # software None: this environment's packages
    why = prequant.refusal(inv, target)
    if why is not None:
        raise DependencyError(f"{plan.model_id}: {why}", package=target.lacks or "transformers")
