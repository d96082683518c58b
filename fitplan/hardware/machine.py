"""What the plan is made for: GPUs (probed, from the catalogue, or described in a file) and CPU RAM.

Pure data. `probe.py` fills it from NVML; `catalogue.py` fills it from `--gpu NAME` and
`--hardware FILE.yaml`. The policy never asks where a `Hardware` came from, only what it holds.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .software import Software

from ..vocab.precision import BF16_MIN_CC
from ..vocab.units import gib


@dataclass(frozen=True)
class GPU:
    """One CUDA device as torch will number it.

    `index` is the CUDA ordinal torch uses after `CUDA_VISIBLE_DEVICES`/`CUDA_DEVICE_ORDER`
    are applied (what goes into `device_map`/`max_memory`), not NVML's PCI-order index.
    """

    index: int
    name: str
    total_bytes: int
    free_bytes: int
    compute_capability: tuple[int, int]
    uuid: str | None = None
    bandwidth_gbs: float | None = None
    mig: bool = False

    @property
    def supports_bf16(self) -> bool:
        """bf16 tensor-core math exists from Ampere on (`BF16_MIN_CC`)."""
        return self.compute_capability >= BF16_MIN_CC

    def to_dict(self) -> dict:
        return {
            "index": self.index,
            "name": self.name,
            "uuid": self.uuid,
            "total_bytes": self.total_bytes,
            "free_bytes": self.free_bytes,
            "compute_capability": f"{self.compute_capability[0]}.{self.compute_capability[1]}",
            "bandwidth_gbs": self.bandwidth_gbs,
            "mig": self.mig,
        }


@dataclass(frozen=True)
class Hardware:
    """The machine a plan is for. `source` is `probe`, `catalogue` or `file`; `notes` say what could not be seen."""

    gpus: tuple[GPU, ...]
    cpu_ram_bytes: int
    source: str
    notes: tuple[str, ...] = field(default_factory=tuple)
    unified: bool = False  # CPU and GPU share one memory (Apple silicon): `cpu_ram_bytes` is that pool
    # The CUDA allocator setting the loading process runs with, whose reserve the plan budgets:
    # "expandable" (what fitplan.load() sets up) or "caching" (torch's default); see `allocator_planned`.
    allocator: str = "expandable"
    gpus_per_node: int | None = None  # several machines (`--gpu 2x8xh100`): GPUs per node; None: one machine
    #: The target's packages that only matter where it loads (`hardware/software.py`); None for this
    #: machine (the probe), whose packages are read where they are.
    software: "Software | None" = None

    @property
    def has_gpu(self) -> bool:
        return bool(self.gpus)

    def describe(self) -> str:
        if not self.gpus:
            kind = "unified memory" if self.unified else "RAM"
            return f"CPU only ({gib(self.cpu_ram_bytes)} GiB {kind})"
        names: dict[str, int] = {}
        for g in self.gpus:
            names[g.name] = names.get(g.name, 0) + 1
        parts = [f"{n}x {name}" if n > 1 else name for name, n in names.items()]
        free, total = sum(g.free_bytes for g in self.gpus), sum(g.total_bytes for g in self.gpus)
        return f"{' + '.join(parts)} ({gib(free)} GiB free of {gib(total)} GiB)"

    def to_dict(self) -> dict:
        return {
            "source": self.source,
            "gpus": [g.to_dict() for g in self.gpus],
            "cpu_ram_bytes": self.cpu_ram_bytes,
            "unified": self.unified,
            "allocator": self.allocator,
            **({"gpus_per_node": self.gpus_per_node} if self.gpus_per_node else {}),
            "software": None if self.software is None else self.software.to_dict(),
            "notes": list(self.notes),
        }


#: The settings of PyTorch's CUDA caching allocator fitplan plans for: "expandable" (expandable
#: segments, which `fitplan.load()` turns on before the weights are allocated unless the user's own
#: PYTORCH_CUDA_ALLOC_CONF says otherwise) and "caching" (torch's default, fixed-size segments).
ALLOCATORS = ("expandable", "caching")
#: Where torch reads its allocator settings, the first one set wins (torch >= 2.9 reads both).
ALLOC_CONF_VARS = ("PYTORCH_ALLOC_CONF", "PYTORCH_CUDA_ALLOC_CONF")


def user_alloc_conf(environ) -> tuple[str, str] | None:
    """(variable, value) of the user's own allocator settings in `environ`, or None where none is set."""
    for var in ALLOC_CONF_VARS:
        if environ.get(var, "").strip():
            return var, environ[var].strip()
    return None


def allocator_planned(environ) -> str:
    """The allocator setting a process started with `environ` loads under: with no allocator settings of
    the user's, "expandable" (fitplan.load() turns expandable segments on); else what they say:
    "expandable" where they turn expandable segments on, "caching" otherwise (torch's default
    segments, or another backend, whose reserve the default's covers at most)."""
    conf = user_alloc_conf(environ)
    if conf is None:
        return "expandable"
    pairs = dict(p.split(":", 1) for p in conf[1].replace(" ", "").split(",") if ":" in p)
    return "expandable" if pairs.get("expandable_segments", "").lower() in ("true", "1") else "caching"
