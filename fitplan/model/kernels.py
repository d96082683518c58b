"""Hub kernels: which kernel repositories `from_pretrained` will fetch for a plan's target, and whether each
is in the local kernel cache.

From transformers 5.25, `from_pretrained` defaults to `use_kernels=True`: on a CUDA device it swaps
layers (RMSNorm, activations, rotary embeddings, ...) for kernels fetched from the Hub. The inventory
holds the repositories the installed transformers' own mapping names for the model
(`Inventory.hub_kernels`, read by `hf.hub_kernels`); this module picks those that apply to the
target's device and first GPU, and, when the target is this machine, looks each up in the local
kernel cache (`hf.kernel_cached`). `fitplan.load()` reads the result to load without kernels rather
than fail inside `from_pretrained` when one is missing and cannot be fetched (docs/compatibility.md).
"""
from __future__ import annotations

from dataclasses import dataclass

from . import hf
from .inventory import Inventory


@dataclass(frozen=True)
class KernelRepo:
    repo_id: str
    ref: str
    layers: tuple[str, ...]
    cached: bool | None  # None: the target is another machine, whose cache cannot be seen from here

    def to_dict(self) -> dict:
        return {"repo_id": self.repo_id, "ref": self.ref, "layers": list(self.layers), "cached": self.cached}


@dataclass(frozen=True)
class KernelUse:
    """What the installed transformers does with Hub kernels when it loads this model on the target.
    `applicable` False: it kernelizes nothing by default (before 5.25, or no `kernels` package);
    `disabled`: `USE_HUB_KERNELS` turns it off; `repos`: what kernelize fetches on `device`."""

    applicable: bool
    transformers: str
    device: str = "cuda"
    repos: tuple[KernelRepo, ...] = ()
    disabled: bool = False
    mxfp4: KernelRepo | None = None  # the kernel that keeps mxfp4 (gpt-oss) experts packed, when the plan does
    fp8: KernelRepo | None = None  # the kernel fp8 layers run through, when the plan keeps fp8 on a GPU

    @property
    def used(self) -> bool:
        return self.applicable and not self.disabled and bool(self.repos)

    @property
    def missing(self) -> tuple[KernelRepo, ...]:
        """Repositories known not to be in this machine's kernel cache."""
        return tuple(r for r in self.repos if r.cached is False)

    def summary(self) -> str:
        """One line for the check table."""
        line = self._layers()
        if self.mxfp4 is not None:
            k = self.mxfp4
            line += (f"; mxfp4 experts: {k.repo_id} {k.ref} ({_STATE[k.cached]}), fetched whatever use_kernels says; "
                     "fitplan.load() loads mxfp4 dequantized if it cannot be had")
        if self.fp8 is not None:
            k = self.fp8
            line += (f"; fp8 layers: {k.repo_id} {k.ref} ({_STATE[k.cached]}), fetched at the first forward whatever "
                     "use_kernels says; fitplan.load() loads fp8 dequantized if it cannot be had")
        return line

    def _layers(self) -> str:
        if not self.applicable:
            return f"not applicable (transformers {self.transformers} loads no Hub kernels by default)"
        if self.disabled:
            return "off (USE_HUB_KERNELS turns them off): the torch path, as planned"
        if not self.repos:
            return f"none for this model on {self.device.upper()} (transformers {self.transformers}'s mapping)"
        names = ", ".join(f"{r.repo_id} {r.ref} ({_STATE[r.cached]})" for r in self.repos)
        return (f"{names}; memory planned for the torch path (the kernelized path is not measured); "
                "fitplan.load() loads without them if one cannot be fetched")

    def to_dict(self) -> dict:
        return {"applicable": self.applicable, "transformers": self.transformers, "device": self.device,
                "disabled": self.disabled, "used": self.used, "repos": [r.to_dict() for r in self.repos],
                "mxfp4": None if self.mxfp4 is None else self.mxfp4.to_dict(),
                "fp8": None if self.fp8 is None else self.fp8.to_dict()}


_STATE = {None: "cache not seen from here", True: "cached", False: "NOT cached"}


def dequantized_method(inv: Inventory, precision: str | None) -> str | None:
    """"mxfp4" or "fp8" when a plan row loads such a checkpoint dequantized (its bf16/fp16 row, not the stored
    one), else None. The plan's from_pretrained arguments then carry the method's config with `dequantize=True`
    (`Plan.kwargs_as_data`, `prequant.DEQUANTIZED_CONFIGS`), so transformers takes that path whatever it finds
    installed: 5.25 keeps mxfp4 packed on the CPU with triton 3.5 and `kernels` and would fetch its kernel; fp8 on
    a GPU of compute capability 8.9+ is kept, and its first forward fails, where the plan dequantized it for want
    of `kernels`."""
    from .prequant import DEQUANTIZED_CONFIGS, scheme

    if not inv.quantization or precision is None:
        return None
    s = scheme(inv)
    return s.method if s.method in DEQUANTIZED_CONFIGS and precision != s.label else None


def dequantizes_mxfp4(inv: Inventory, precision: str | None) -> bool:
    return dequantized_method(inv, precision) == "mxfp4"


def keeps_mxfp4(inv: Inventory, precision: str | None, placement) -> bool:
    """Whether a plan row loads an mxfp4 checkpoint packed (its stored row, not dequantized) with layers on a
    GPU: then transformers fetches its mxfp4 Hub kernel (`hf.mxfp4_kernel_repo`) inside from_pretrained."""
    from .prequant import scheme

    if not inv.quantization or precision is None or not any(s.device != "cpu" for s in placement):
        return False
    s = scheme(inv)
    return s.method == "mxfp4" and precision == s.label


def keeps_fp8(inv: Inventory, precision: str | None, placement) -> bool:
    """Whether a plan row loads an fp8 checkpoint as stored with layers on a GPU: then the installed transformers'
    fp8 layers fetch their Hub kernel (`hf.fp8_kernel_repo`, 5.17 .. 5.25; none on 5.0) at the first forward."""
    from .prequant import scheme

    if not inv.quantization or precision is None or not any(s.device != "cpu" for s in placement):
        return False
    s = scheme(inv)
    return s.method == "fp8" and precision == s.label


def kernel_use(inv: Inventory, *, device: str, compute_capability: tuple[int, int] | None,
               this_machine: bool, mxfp4: bool = False, fp8: bool = False) -> KernelUse:
    """The Hub kernels `from_pretrained` fetches for `inv` on `device` ("cuda" when the plan places layers on
    a GPU, else "cpu"); the cache is looked at only when the target is `this_machine`. `mxfp4`: the plan keeps
    mxfp4 experts packed (`keeps_mxfp4`), so their kernel is fetched too, on every transformers version; `fp8`:
    the plan keeps fp8 on a GPU (`keeps_fp8`), whose layers fetch theirs where the installed version has one."""
    version = inv.versions.get("transformers") or hf.version()
    packed = fp8_repo = None
    if mxfp4:
        repo_id, ref = hf.mxfp4_kernel_repo()
        packed = KernelRepo(repo_id, ref, ("Mxfp4GptOssExperts",),
                            hf.kernel_cached(repo_id, ref) if this_machine else None)
    found = hf.fp8_kernel_repo() if fp8 else None
    if found is not None:
        repo_id, ref = found
        fp8_repo = KernelRepo(repo_id, ref, ("FP8Linear", "FP8Experts"),
                              hf.kernel_cached(repo_id, ref) if this_machine else None)
    if inv.hub_kernels is None:
        return KernelUse(applicable=False, transformers=version, device=device, mxfp4=packed, fp8=fp8_repo)
    by_repo: dict[tuple[str, str], list[str]] = {}
    for k in inv.hub_kernels:
        if k.applies(device, compute_capability):
            by_repo.setdefault((k.repo_id, k.ref), []).append(k.layer)
    repos = tuple(KernelRepo(repo_id, ref, tuple(layers), hf.kernel_cached(repo_id, ref) if this_machine else None)
                  for (repo_id, ref), layers in by_repo.items())
    return KernelUse(applicable=True, transformers=version, device=device, repos=repos,
                     disabled=hf.kernels_disabled_by_env(), mxfp4=packed, fp8=fp8_repo)
