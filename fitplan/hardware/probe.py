"""The real machine, via NVML: the GPUs torch will see, numbered the way torch numbers them.

NVML (module `pynvml`, package nvidia-ml-py) reads the driver without creating a CUDA context,
so probing costs milliseconds and no GPU memory, and it never imports torch. Two gaps between
what NVML lists and what `cuda:N` means are closed here (sources in docs/hardware.md):

1. Order. NVML lists GPUs in PCI bus order (nvidia-smi's numbering). CUDA numbers them by
   `CUDA_DEVICE_ORDER`: `PCI_BUS_ID` gives PCI order; the default, `FASTEST_FIRST`, puts the
   device a "simple heuristic" calls fastest first and leaves the rest unspecified. fitplan
   approximates it as: higher compute capability first, then more CUDA cores x max SM clock,
   ties in PCI order, and says so in a note whenever that guess changed the order.
2. Selection. `CUDA_VISIBLE_DEVICES` then filters and reorders that list: integer indices into
   it, `GPU-` UUIDs (unique prefixes allowed), `MIG-` UUIDs; parsing stops at the first entry
   that matches nothing; a repeated device or an empty value leaves no GPUs. This follows
   PyTorch's NVML-based parser (`torch.cuda._parse_visible_devices`), corrected where CUDA itself
   was seen to differ (a bare `GPU-`, capital UUID digits, `MIG-<GPU digits>`).

Everything that can go wrong with NVML (no pynvml, no driver, driver/library mismatch, one
device failing or falling off the bus) is a normal outcome: `probe()` returns what it could see
and says what it could not in `Hardware.notes`; it does not raise for NVML problems.

The NVML calls go through `fitplan.hardware.nvml.NvmlBackend` (the real one, or a recorded table
replayed).
"""
from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .catalogue import spec_for_probed
from .machine import GPU, Hardware
from .nvml import NVML_ERRORS, NvmlBackend, NvmlError, PynvmlBackend
from ..vocab.units import fmt_bytes

# ----------------------------------------------------------------------------------------------
# What was read


@dataclass(frozen=True)
class MigDevice:
    """One MIG compute instance: what a process given its `MIG-` UUID can use."""

    uuid: str
    name: str
    total_bytes: int
    free_bytes: int
    gpu_instance: int | None
    compute_instance: int | None


@dataclass(frozen=True)
class NvmlDevice:
    """One physical GPU as NVML reported it (before CUDA's ordering and selection)."""

    nvml_index: int
    name: str
    uuid: str | None
    pci_bus_id: str | None
    total_bytes: int
    free_bytes: int
    compute_capability: tuple[int, int]
    speed: int | None = None
    mig: bool = False
    mig_devices: tuple[MigDevice, ...] = ()

    @property
    def label(self) -> str:
        where = f", PCI {self.pci_bus_id}" if self.pci_bus_id else ""
        return f"{self.name} (nvidia-smi GPU {self.nvml_index}{where})"


@dataclass(frozen=True)
class CpuRam:
    """CPU RAM as the OS reports it; `limit_bytes` is a container (cgroup) limit below the total."""

    total_bytes: int
    available_bytes: int | None = None
    limit_bytes: int | None = None

    @property
    def usable_bytes(self) -> int:
        return min(self.total_bytes, self.limit_bytes) if self.limit_bytes else self.total_bytes


# ----------------------------------------------------------------------------------------------
# Entry points


def probe(nvml: NvmlBackend | None = None, env: Mapping[str, str] | None = None,
          *, cpu_ram: CpuRam | None = None) -> Hardware:
    """This machine's GPUs (numbered as torch will number them) and CPU RAM.

    `nvml` defaults to the real driver, `env` to `os.environ`, `cpu_ram` to what the OS says.
    Never raises for NVML problems: it returns fewer GPUs (or none) and says why in `notes`.
    """
    env = os.environ if env is None else env
    ram = read_cpu_ram() if cpu_ram is None else cpu_ram
    devices, notes = read_devices(nvml)
    ordered, order_notes = cuda_order(devices, env)
    visible, visible_notes = apply_visible_devices(ordered, env)
    gpus = [_to_gpu(i, dev, mig) for i, (dev, mig) in enumerate(visible)]
    notes += order_notes + visible_notes + _mig_notes(gpus, visible) + _ram_notes(ram)
    return Hardware(gpus=tuple(gpus), cpu_ram_bytes=ram.usable_bytes, source="probe", notes=tuple(notes))


def cpu_ram_bytes() -> int:
    """CPU RAM a plan may use on this machine: total, or the container limit if lower."""
    return read_cpu_ram().usable_bytes


def read_devices(nvml: NvmlBackend | None = None) -> tuple[list[NvmlDevice], list[str]]:
    """Every GPU NVML can read, in NVML order, and a note for each thing that failed."""
    if nvml is None:
        try:
            nvml = PynvmlBackend()
        except ImportError:
            return [], ["nvidia-ml-py (module pynvml) is not installed, so no GPU can be seen; "
                        "planning for CPU only (pip install nvidia-ml-py)"]
    try:
        nvml.init()
    except NvmlError as err:
        return [], [_init_note(err)]
    devices: list[NvmlDevice] = []
    notes: list[str] = []
    try:
        try:
            count = nvml.device_count()
        except NvmlError as err:
            return [], [f"NVML started but could not count the GPUs ({err}); planning for CPU only"]
        for i in range(count):
            try:
                devices.append(_read_device(nvml, i, notes))
            except NvmlError as err:
                notes.append(_device_note(i, err))
    finally:
        try:
            nvml.shutdown()
        except NvmlError:
            pass  # nothing left to release that a failed shutdown would keep
    return devices, notes


def cuda_order(devices: list[NvmlDevice], env: Mapping[str, str]) -> tuple[list[NvmlDevice], list[str]]:
    """The order CUDA enumerates `devices` in, under `CUDA_DEVICE_ORDER` (see module doc)."""
    by_pci = sorted(devices, key=_pci_key)
    order = env.get("CUDA_DEVICE_ORDER")
    if order == "PCI_BUS_ID":
        return by_pci, []
    notes = []
    if order not in (None, "", "FASTEST_FIRST"):
        notes.append(f"CUDA_DEVICE_ORDER={order!r} is neither FASTEST_FIRST nor PCI_BUS_ID; "
                     f"fitplan assumed CUDA's default, FASTEST_FIRST")
    use_speed = all(d.speed for d in by_pci)
    # sorted() is stable even with reverse=True: equal keys keep PCI order
    fastest = sorted(by_pci, key=lambda d: (d.compute_capability, d.speed if use_speed else 0), reverse=True)
    by_uuid = env.get("CUDA_VISIBLE_DEVICES", "").strip().startswith(("GPU-", "MIG-"))  # order cannot matter
    if not by_uuid and [d.nvml_index for d in fastest] != [d.nvml_index for d in by_pci]:
        names = ", ".join(f"{i} = {d.label}" for i, d in enumerate(fastest))
        notes.append(
            "CUDA_DEVICE_ORDER is not PCI_BUS_ID, so CUDA numbers the GPU it guesses fastest first; "
            f"fitplan guessed CUDA's order as {names} (what cuda:N and CUDA_VISIBLE_DEVICES indices "
            "refer to). Set CUDA_DEVICE_ORDER=PCI_BUS_ID to make CUDA's numbering match nvidia-smi's and certain"
        )
    return fastest, notes


def apply_visible_devices(
    ordered: list[NvmlDevice], env: Mapping[str, str]
) -> tuple[list[tuple[NvmlDevice, MigDevice | None]], list[str]]:
    """Select and reorder `ordered` as `CUDA_VISIBLE_DEVICES` does; MIG entries pick instances."""
    raw = env.get("CUDA_VISIBLE_DEVICES")
    if raw is None:
        return [(d, None) for d in ordered], []
    if not raw.strip():
        return [], ["CUDA_VISIBLE_DEVICES is set but empty, so CUDA shows no GPU; planning for CPU only "
                    "(unset it to use the GPUs)"]
    entries = raw.split(",")  # indices may carry spaces (strtoul skips them); UUIDs may not
    kind = "GPU-" if entries[0].startswith("GPU-") else "MIG-" if entries[0].startswith("MIG-") else "index"
    chosen: list[tuple[NvmlDevice, MigDevice | None]] = []
    notes: list[str] = []
    for entry in entries:
        target, why = _resolve_entry(entry, kind, ordered)
        if target is None:
            notes.append(f"CUDA_VISIBLE_DEVICES={raw!r}: entry {entry.strip()!r} {why}, so CUDA ignores it and every "
                         f"entry after it ({len(chosen)} GPU(s) visible)")
            break
        if any(_same(target, c) for c in chosen):
            return [], [f"CUDA_VISIBLE_DEVICES={raw!r} names the same GPU twice ({entry!r}); CUDA then shows "
                        f"no GPU at all; planning for CPU only"]
        chosen.append(target)
    return chosen, notes


def read_cpu_ram(meminfo: str | Path = "/proc/meminfo",
                 cgroup_limits: tuple[str | Path, ...] = ("/sys/fs/cgroup/memory.max",
                                                         "/sys/fs/cgroup/memory/memory.limit_in_bytes")) -> CpuRam:
    """Total and available RAM from /proc/meminfo (sysconf where there is none), and a cgroup limit."""
    total = available = None
    try:
        fields = {}
        for line in Path(meminfo).read_text(encoding="ascii", errors="replace").splitlines():
            m = re.match(r"^(\w+):\s+(\d+)\s*kB", line)
            if m:
                fields[m.group(1)] = int(m.group(2)) * 1024
        total, available = fields.get("MemTotal"), fields.get("MemAvailable")
    except OSError:
        pass
    if not total:
        try:
            total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (AttributeError, ValueError, OSError):
            total = 0
    limit = None
    for path in cgroup_limits:
        try:
            text = Path(path).read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError):
            continue
        if text.isdigit() and 0 < int(text) < (total or 1 << 62):
            limit = int(text)
        break
    return CpuRam(total_bytes=int(total or 0), available_bytes=available, limit_bytes=limit)


# ----------------------------------------------------------------------------------------------
# Helpers


def _read_device(nvml: NvmlBackend, i: int, notes: list[str]) -> NvmlDevice:
    h = nvml.handle(i)

    def optional(fn: Any, default: Any) -> Any:
        try:
            return fn(h)
        except NvmlError as err:
            if err.code == NVML_ERRORS["GPU_IS_LOST"]:
                raise
            return default

    name = optional(nvml.name, f"NVIDIA GPU {i}")
    pci = optional(nvml.pci_bus_id, None)
    uuid = optional(nvml.uuid, None)
    try:
        total, free = nvml.memory(h)
        cc = nvml.compute_capability(h)
    except NvmlError as err:
        raise NvmlError(err.code, f"{err.text} (reading {name}{', PCI ' + pci if pci else ''})") from None
    cores_clock = optional(nvml.speed, None)
    mig = optional(nvml.mig_enabled, False)
    migs: tuple[MigDevice, ...] = ()
    if mig:
        try:
            migs = tuple(_read_mig(nvml, mh, name) for mh in nvml.mig_devices(h))
        except NvmlError as err:
            if err.code == NVML_ERRORS["GPU_IS_LOST"]:
                raise
            notes.append(f"GPU {i} ({name}) has MIG enabled but its MIG instances could not be read ({err})")
    return NvmlDevice(
        nvml_index=i, name=name, uuid=uuid, pci_bus_id=pci, total_bytes=total, free_bytes=free,
        compute_capability=(int(cc[0]), int(cc[1])),
        speed=cores_clock[0] * cores_clock[1] if cores_clock else None,
        mig=bool(mig), mig_devices=migs,
    )


def _read_mig(nvml: NvmlBackend, mh: Any, parent_name: str) -> MigDevice:
    total, free = nvml.memory(mh)
    try:
        name = nvml.name(mh)
    except NvmlError:
        name = f"{parent_name} MIG"
    try:
        gi, ci = nvml.mig_ids(mh)
    except NvmlError:
        gi = ci = None
    return MigDevice(uuid=nvml.uuid(mh), name=name, total_bytes=total, free_bytes=free,
                     gpu_instance=gi, compute_instance=ci)


def _init_note(err: NvmlError) -> str:
    code = err.code
    if code == NVML_ERRORS["LIBRARY_NOT_FOUND"]:
        why = "the NVIDIA driver library (libnvidia-ml.so.1) was not found: no NVIDIA driver is installed here"
    elif code == NVML_ERRORS["DRIVER_NOT_LOADED"]:
        why = "the NVIDIA driver is not loaded (load it with `sudo modprobe nvidia`, or reboot)"
    elif code == NVML_ERRORS["LIB_RM_VERSION_MISMATCH"]:
        why = ("the NVIDIA driver library and the loaded kernel module are different versions, "
               "usually after a driver update without a reboot; reboot to fix it")
    elif code == NVML_ERRORS["NO_PERMISSION"]:
        why = "this user may not open the NVIDIA devices (/dev/nvidia*); check their permissions or group"
    else:
        why = f"NVML failed to start ({err})"
    return f"no GPU can be seen: {why}; planning for CPU only"


def _device_note(i: int, err: NvmlError) -> str:
    if err.code == NVML_ERRORS["GPU_IS_LOST"]:
        return (f"nvidia-smi GPU {i} fell off the bus while fitplan read it (NVML: GPU is lost); it is left "
                f"out of the plan. Check `nvidia-smi` and `dmesg`; a GPU reset or a reboot usually brings it back")
    return (f"nvidia-smi GPU {i} could not be read ({err}); it is left out of the plan, so if CUDA still "
            f"sees it, CUDA device numbers may differ from fitplan's: pin the GPUs with CUDA_VISIBLE_DEVICES")


def _pci_key(d: NvmlDevice) -> tuple:
    """`00000000:41:00.0` -> (domain, bus, device, function), numerically; unknown last."""
    m = re.match(r"^([0-9a-fA-F]+):([0-9a-fA-F]+):([0-9a-fA-F]+)\.([0-9a-fA-F]+)$", d.pci_bus_id or "")
    if not m:
        return (1, d.nvml_index)
    return (0, *(int(g, 16) for g in m.groups()), d.nvml_index)


def _strtoul(text: str) -> int:
    """An index read like strtoul: spaces skipped, leading digits count ("1gpu" is 1); else -1."""
    m = re.match(r"^\s*([+-]?\d+)", text)
    return int(m.group(1)) if m else -1


def _resolve_entry(entry: str, kind: str, ordered: list[NvmlDevice]) -> tuple[Any, str]:
    if kind == "index":
        index = _strtoul(entry)
        if index < 0:
            return None, "is not a device index (indices, GPU- and MIG- UUIDs cannot be mixed)"
        if index >= len(ordered):
            return None, f"is past the last GPU (there are {len(ordered)})"
        return (ordered[index], None), ""
    if not entry.startswith(kind):
        return None, f"is not a {kind} UUID (indices, GPU- and MIG- UUIDs cannot be mixed)"
    if entry == kind:  # CUDA itself rejects a bare prefix, even with one GPU (PyTorch's parser accepts it)
        return None, "has no UUID digits after the prefix"
    digits = entry[len(kind):].lower()  # CUDA matches the hex digits in any case, the prefix exactly
    gpus = [(d, None) for d in ordered if d.uuid and _hex(d.uuid).startswith(digits)]
    if kind == "GPU-":
        hits = gpus
    else:
        legacy = re.match(r"^MIG-GPU-([0-9a-fA-F-]+)/(\d+)/(\d+)$", entry)  # MIG-GPU-<uuid>/<gi>/<ci>
        if legacy:
            ids = (int(legacy.group(2)), int(legacy.group(3)))
            hits = [(d, m) for d in ordered if d.uuid and _hex(d.uuid) == legacy.group(1).lower()
                    for m in d.mig_devices if (m.gpu_instance, m.compute_instance) == ids]
        else:
            hits = [(d, m) for d in ordered for m in d.mig_devices if _hex(m.uuid).startswith(digits)]
            hits = hits or gpus  # CUDA also takes MIG-<digits of a whole GPU's UUID> as that GPU
    if len(hits) != 1:
        what = "GPU" if kind == "GPU-" else "MIG instance"
        return None, f"matches no {what}" if not hits else f"matches more than one {what} (give more of the UUID)"
    return hits[0], ""


def _hex(uuid: str) -> str:
    """The digits of a `GPU-…`/`MIG-…` UUID, lowercased."""
    return uuid.split("-", 1)[1].lower() if uuid[:4] in ("GPU-", "MIG-") else uuid.lower()


def _same(a: tuple[NvmlDevice, MigDevice | None], b: tuple[NvmlDevice, MigDevice | None]) -> bool:
    return a[0].nvml_index == b[0].nvml_index and (a[1] is None or b[1] is None or a[1].uuid == b[1].uuid)


def _to_gpu(index: int, dev: NvmlDevice, mig: MigDevice | None) -> GPU:
    if mig is not None:
        return GPU(index=index, name=mig.name, total_bytes=mig.total_bytes, free_bytes=mig.free_bytes,
                   compute_capability=dev.compute_capability, uuid=mig.uuid, mig=True)
    spec = spec_for_probed(dev.name, dev.total_bytes)
    return GPU(index=index, name=dev.name, total_bytes=dev.total_bytes, free_bytes=dev.free_bytes,
               compute_capability=dev.compute_capability, uuid=dev.uuid,
               bandwidth_gbs=spec.bandwidth_gbs if spec else None, mig=dev.mig)


def _mig_notes(gpus: list[GPU], visible: list[tuple[NvmlDevice, MigDevice | None]]) -> list[str]:
    notes = []
    for gpu, (dev, mig) in zip(gpus, visible):
        if mig is not None or not dev.mig:
            continue
        sizes = ", ".join(f"{m.uuid} {fmt_bytes(m.total_bytes)}" for m in dev.mig_devices) or "none created"
        notes.append(
            f"cuda:{gpu.index} ({dev.label}) has MIG enabled: a CUDA program only gets the memory of the MIG "
            f"instance it runs in, but fitplan counted the whole GPU ({fmt_bytes(dev.total_bytes)}). To plan "
            f"for one instance, put its MIG UUID in CUDA_VISIBLE_DEVICES (instances: {sizes})"
        )
    return notes


def _ram_notes(ram: CpuRam) -> list[str]:
    notes = []
    if ram.total_bytes <= 0:
        notes.append("CPU RAM could not be read; planning with no CPU RAM to offload to")
    if ram.limit_bytes and ram.limit_bytes < ram.total_bytes:
        notes.append(f"a container memory limit (cgroup) of {fmt_bytes(ram.limit_bytes)} applies; planning with "
                     f"it rather than the machine's {fmt_bytes(ram.total_bytes)}")
    if ram.available_bytes is not None:
        notes.append(f"CPU RAM: {fmt_bytes(ram.total_bytes)} total, {fmt_bytes(ram.available_bytes)} available now")
    return notes


__all__ = ["probe", "cpu_ram_bytes", "read_devices", "cuda_order", "apply_visible_devices", "read_cpu_ram",
           "NvmlDevice", "MigDevice", "CpuRam"]
