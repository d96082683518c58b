"""What-if hardware: GPUs named on the command line (`--gpu`) or described in a file (`--hardware`).

Pure: reads the shipped catalogue (`fitplan/data/gpus.yaml`) and user YAML, never touches
NVML or torch, so planning for a card you do not have is fast and works on any machine.

- `--gpu rtx4090`, `--gpu 2xa100-80gb`, `--gpu "2x a100-80gb"`, `--gpu a100-80gb,rtx4090`:
  `hardware_from_gpu_flag`. Names are case-insensitive; aliases and NVML names work too.
- `--hardware FILE.yaml`: `hardware_from_file`, schema in `docs/hardware.md`.

Every GPU built here is numbered 0..n-1 in the order written.

Why one module (~425 lines): a hardware file's `gpus:` entries are catalogue names (`rtx4090`,
`2x a100-80gb`, `gpu: h100` with a `free:` of its own) as often as described cards, so the file
reader and the `--gpu` parser share one reader of a counted name, one catalogue lookup with its
did-you-mean, and one builder of a GPU from a catalogue entry; split apart, each would import the
other's internals.
"""
from __future__ import annotations

import difflib
import functools
import os
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from ..errors import FileError, HardwareError, InputError, OptionError
from .machine import GPU, Hardware
from .nodes import file_nodes, nodes_note, parse_nodes
from .software import Software, default_software, parse_software
from ..vocab.units import fmt_bytes
from ..yamlsource import (
    at,
    YamlList,
    YamlMap,
    check_keys,
    describe,
    get_int,
    get_number,
    get_size,
    get_str,
    load_yaml,
    require_list,
    require_map,
)

#: Memory NVML counts in a card's total that no process can use: NVML's v2 memory query reports it
#: as `reserved`, and v1's idle `used` is exactly it. 480 MiB on an H100 80GB HBM3 with driver
#: 580.159.04 (shared/FINDINGS.md; tests/fixtures/nvml/h100_sxm_recorded.json: torch's total_memory
#: is NVML's total less it). Not yet measured on other cards: this figure is assumed for them until
#: a `reserved:` in gpus.yaml says otherwise (docs/hardware.md lists which are measured).
DRIVER_RESERVED_BYTES = 480 << 20
MAX_GPUS = 64
"""More GPUs than one process can address through device_map is a typo, not a machine."""
MAX_GPU_MEMORY = 2 << 40
MAX_CPU_RAM = 64 << 40
_CC = re.compile(r"^\s*(\d{1,2})\.(\d)\s*$")
_COUNTED = re.compile(r"^([+-]?\d+)\s*[x×*]\s*(.*)$", re.IGNORECASE)
_CATALOGUE_FILE = "gpus.yaml"
_HINT = "run `fitplan gpus` to list known names, or describe the card with --hardware FILE.yaml"


@dataclass(frozen=True)
class GPUSpec:
    """One catalogue card: what a real one reports (NVML name and total), not its marketing."""

    key: str
    name: str
    memory_bytes: int
    compute_capability: tuple[int, int]
    bandwidth_gbs: float
    aliases: tuple[str, ...] = ()
    reserved_bytes: int = DRIVER_RESERVED_BYTES

    def to_gpu(self, index: int, free_bytes: int | None = None) -> GPU:
        """The card as a process finds it idle: its total less what the driver reserves, unless a
        measured `free_bytes` (which already excludes it) is given."""
        return GPU(
            index=index,
            name=self.name,
            total_bytes=self.memory_bytes,
            free_bytes=self.memory_bytes - self.reserved_bytes if free_bytes is None else free_bytes,
            compute_capability=self.compute_capability,
            bandwidth_gbs=self.bandwidth_gbs,
        )


def parse_compute_capability(value: Any) -> tuple[int, int]:
    """`"8.6"` (or YAML's float 8.6) -> (8, 6). Raises ValueError with the reason."""
    if isinstance(value, bool) or not isinstance(value, (str, float)):
        raise ValueError(f"write it as 'major.minor' in quotes, e.g. \"8.6\"; got {describe(value)}")
    m = _CC.match(str(value))
    if not m:
        raise ValueError(f"write it as 'major.minor', e.g. \"8.6\"; got {value!r}")
    major, minor = int(m.group(1)), int(m.group(2))
    if not 1 <= major <= 20:
        raise ValueError(f"{value!r} is not an NVIDIA compute capability (majors run 1..12 today)")
    return major, minor


def parse_gpu_catalogue(source: str | bytes | Path, *, source_name: str = _CATALOGUE_FILE) -> dict[str, GPUSpec]:
    """Validate catalogue YAML into specs keyed by their lowercase key; errors carry file:line."""
    doc = require_map(load_yaml(source, source_name=source_name), where=f"{source_name}:1", what="the catalogue")
    check_keys(doc, ["gpus"], what="the catalogue")
    entries = require_map(doc.get("gpus"), where=doc.where("gpus"), what="gpus")
    specs: dict[str, GPUSpec] = {}
    claimed: dict[str, str] = {}  # normalised key/alias -> key that owns it
    for key, entry in entries.items():
        where = entries.where(key)
        if not isinstance(key, str) or key != key.lower() or _norm(key) != key:
            raise FileError(f"{where}: catalogue key {key!r} must be lowercase with '-' between words",
                            **entries.at(key))
        entry = require_map(entry, where=where, what=f"gpus.{key}")
        what = f"gpus.{key}"
        check_keys(entry, ["name", "memory", "compute_capability", "bandwidth_gbs", "aliases", "reserved"], what=what)
        name = get_str(entry, "name", what=what, required=True)
        memory = get_size(entry, "memory", what=what, required=True, minimum=1, maximum=MAX_GPU_MEMORY)
        cc = _cc_field(entry, what)
        bandwidth = get_number(entry, "bandwidth_gbs", what=what, required=True, **BANDWIDTH_GBS)
        aliases = _aliases(entry, what)
        for word in (key, *aliases):
            owner = claimed.setdefault(_norm(word), key)
            if owner != key:
                line = where if word == key else entry.where("aliases")
                raise FileError(f"{line}: name {word!r} of {what} is already taken by '{owner}'; names must be unique",
                                **at(line, word))
        reserved = get_size(entry, "reserved", what=what, minimum=0, maximum=memory - 1)
        specs[key] = GPUSpec(key, name, memory, cc, bandwidth, aliases,
                             DRIVER_RESERVED_BYTES if reserved is None else reserved)
    if not specs:
        raise FileError(f"{entries.where()}: the catalogue lists no GPUs", **entries.at())
    return specs


@functools.cache
def _shipped() -> tuple[GPUSpec, ...]:
    data = resources.files("fitplan").joinpath("data", _CATALOGUE_FILE).read_bytes()
    return tuple(parse_gpu_catalogue(data, source_name=f"fitplan/data/{_CATALOGUE_FILE}").values())


def load_gpu_catalogue() -> dict[str, GPUSpec]:
    """The shipped catalogue, parsed once per process; each call returns a fresh dict."""
    return {spec.key: spec for spec in _shipped()}


def find_gpu(word: str, catalogue: dict[str, GPUSpec] | None = None) -> GPUSpec:
    """The spec a user means by `word`: a key, an alias or an NVML name, in any case.

    Raises HardwareError with the closest known name and where to look.
    """
    catalogue = load_gpu_catalogue() if catalogue is None else catalogue
    index = _index(catalogue)
    key = index.get(_norm(word))
    if key is not None:
        return catalogue[key]
    raise HardwareError(f"unknown GPU {word.strip()!r}{_suggest(word, catalogue, index)}; {_HINT}",
                        gpu=word.strip(), path=None)


def _suggest(word: str, catalogue: dict[str, GPUSpec], index: dict[str, str]) -> str:
    """Did-you-mean for a GPU name: every card it could mean ('a100' -> four A100s), else the closest."""
    w = _norm(word)
    keys = [s.key for s in catalogue.values() if _name_norm(s.name) == _name_norm(word)]
    keys = keys or [k for k in catalogue if k.startswith(w) or w.startswith(k + "-")]
    if not keys:
        keys = [index[m] for m in difflib.get_close_matches(w, list(index), n=1, cutoff=0.6)]
    if not keys:
        return ""
    quoted = [f"'{k}'" for k in keys[:5]]
    return f" (did you mean {quoted[0]}?)" if len(quoted) == 1 else f" (did you mean {', '.join(quoted[:-1])} or {quoted[-1]}?)"


def spec_for_probed(name: str, total_bytes: int, catalogue: dict[str, GPUSpec] | None = None) -> GPUSpec | None:
    """The catalogue entry of a probed card: same NVML name, and the closest memory size.

    Some names cover several cards (the RTX 3080 10 GB and 12 GB both say "NVIDIA GeForce RTX
    3080"); memory tells them apart. Returns None for a card the catalogue does not know.
    """
    catalogue = load_gpu_catalogue() if catalogue is None else catalogue
    target = _name_norm(name)
    same = [s for s in catalogue.values() if _name_norm(s.name) == target]
    if not same:
        return None
    best = min(same, key=lambda s: abs(s.memory_bytes - total_bytes))
    return best if abs(best.memory_bytes - total_bytes) <= max(total_bytes, 1) * 0.15 else None


CATALOGUE_NOTE = ("GPUs from the catalogue, not probed: free memory is taken to be the card's total less what "
                  "its driver reserves")


def hardware_from_gpu_flag(text: str, cpu_ram_bytes: int) -> Hardware:
    """`--gpu` -> Hardware. `text` lists cards, each optionally counted: `2xa100-80gb,rtx4090`."""
    if not isinstance(cpu_ram_bytes, int) or isinstance(cpu_ram_bytes, bool) or cpu_ram_bytes < 0:
        raise OptionError(f"CPU RAM must be a non-negative number of bytes, got {cpu_ram_bytes!r}", option="cpu_ram")
    if not isinstance(text, str):
        raise OptionError(f"--gpu must be text naming GPUs such as 'rtx4090' or '2x a100-80gb', got {text!r:.80}",
                          option="gpu")
    if not text or not text.strip():
        raise OptionError("--gpu is empty; name a GPU such as 'rtx4090' or '2x a100-80gb' (`fitplan gpus` lists them)",
                          option="gpu")
    catalogue = load_gpu_catalogue()
    software = default_software()
    nodes = parse_nodes(text)
    if nodes:  # several machines (hardware/nodes.py)
        n, per, word = nodes
        _check_total(n * per, f"--gpu {text!r}")
        return Hardware(gpus=tuple(find_gpu(word, catalogue).to_gpu(i) for i in range(n * per)),
                        cpu_ram_bytes=cpu_ram_bytes, source="catalogue", gpus_per_node=per if n > 1 else None,
                        notes=(CATALOGUE_NOTE, software.note(), *nodes_note(n * per, per)), software=software)
    gpus: list[GPU] = []
    for part in text.split(","):
        if not part.strip():
            raise OptionError(f"--gpu {text!r} has an empty entry; separate GPU names with single commas", option="gpu")
        count, spec = _counted(part, catalogue, context="--gpu")
        _check_total(len(gpus) + count, f"--gpu {text!r}")
        gpus.extend([spec.to_gpu(len(gpus) + i) for i in range(count)])
    return Hardware(
        gpus=tuple(gpus),
        cpu_ram_bytes=cpu_ram_bytes,
        source="catalogue",
        notes=(CATALOGUE_NOTE, software.note()),
        software=software,
    )


#: The keys of a hardware file, and of a profile's `hardware:` mapping, which is the same thing.
HARDWARE_FILE_KEYS = ("gpus", "cpu_ram", "unified", "software", "nodes")
#: The keys of one entry of a `gpus:` list.
GPU_ITEM_KEYS = ("gpu", "name", "memory", "compute_capability", "free", "bandwidth_gbs", "count")
#: Bounds of a `bandwidth_gbs` (GB/s), in the catalogue and in files.
BANDWIDTH_GBS = {"minimum": 1, "maximum": 100_000}


def read_hardware_map(doc: YamlMap, *, name: str,
                      what: str) -> tuple[tuple[GPU, ...], int | None, bool, Software, int | None]:
    """(GPUs, cpu_ram or None, unified, the target's software, GPUs per node or None for one machine) from a
    hardware file's mapping or a profile's `hardware:`: the one reader of `HARDWARE_FILE_KEYS`. `what` names
    the mapping in errors."""
    check_keys(doc, HARDWARE_FILE_KEYS, what=what)
    if doc.get("gpus") is None:
        raise FileError(f"{doc.where('gpus')}: {what} needs a 'gpus:' list (write 'gpus: []' for a CPU-only "
                        "machine)", **doc.at("gpus"))
    gpus = parse_gpu_list(require_list(doc["gpus"], where=doc.where("gpus"), what="gpus"),
                          what="gpus" if what == "a hardware file" else f"{what}.gpus")
    ram = get_size(doc, "cpu_ram", what="" if what == "a hardware file" else what, maximum=MAX_CPU_RAM)
    unified = doc.get("unified", False)
    if not isinstance(unified, bool):
        raise FileError(f"{doc.where('unified')}: unified must be true or false (true: the CPU and GPU share "
                        f"cpu_ram, as on Apple silicon), got {describe(unified)}", **doc.at("unified"))
    software = parse_software(doc, what="software" if what == "a hardware file" else f"{what}.software")
    per_node = file_nodes(doc, len(gpus), what="nodes" if what == "a hardware file" else f"{what}.nodes")
    return gpus, ram, unified, software, per_node


def hardware_from_file(path: str | Path, *, cpu_ram_bytes: int | None = None) -> Hardware:
    """`--hardware FILE.yaml` -> Hardware. `cpu_ram_bytes` is used when the file has no `cpu_ram`."""
    if not isinstance(path, (str, os.PathLike)):
        raise OptionError(f"hardware must be the path of a YAML file (or a fitplan Hardware), got {path!r:.80}",
                          option="hardware")
    path = Path(path)
    name = str(path)
    doc = load_yaml(path, source_name=name)
    doc = require_map(doc, where=f"{name}:1", what="a hardware file")
    check_keys(doc, HARDWARE_FILE_KEYS, what="a hardware file")  # an unknown key ('gpu:') is said first
    if "gpus" not in doc:
        raise FileError(f"{name}:1: a hardware file needs a 'gpus:' list (write 'gpus: []' for a CPU-only machine)",
                        path=name, line=1, key="gpus")
    if doc["gpus"] is None:
        raise FileError(f"{doc.where('gpus')}: 'gpus' is empty; list GPUs, or write 'gpus: []' for a CPU-only machine",
                        **doc.at("gpus"))
    gpus, ram, unified, software, per_node = read_hardware_map(doc, name=name, what="a hardware file")
    notes = [f"GPUs described in {name}, not probed"]
    if ram is None:
        if cpu_ram_bytes is None:
            ram = 0
            notes.append(f"{name} gives no cpu_ram: planning with no CPU RAM to offload to")
        else:
            ram = cpu_ram_bytes
    notes.append(software.note())
    return Hardware(gpus=gpus, cpu_ram_bytes=ram, source="file", unified=unified, gpus_per_node=per_node,
                    software=software, notes=tuple(notes) + nodes_note(len(gpus), per_node))


def parse_gpu_list(items: YamlList, *, what: str = "gpus") -> tuple[GPU, ...]:
    """A located `gpus:` list (see docs/hardware.md) -> GPUs numbered 0..n-1 in the order written.

    Shared by `--hardware` files and anything else that embeds the same list; `what` is how
    errors name the list (`hardware.gpus[2].memory: ...`).
    """
    catalogue = load_gpu_catalogue()
    gpus: list[GPU] = []
    for i, item in enumerate(items):
        for gpu in _file_gpus(items, i, item, catalogue, what):
            _check_total(len(gpus) + 1, f"{items.where(i)}: {what}")
            gpus.append(_renumber(gpu, len(gpus)))
    return tuple(gpus)


def _file_gpus(items: YamlList, i: int, item: Any, catalogue: dict[str, GPUSpec], list_what: str) -> list[GPU]:
    where, what = items.where(i), f"{list_what}[{i}]"
    if isinstance(item, str):
        count, spec = _counted(item, catalogue, context=f"{where}: {what}")
        return [spec.to_gpu(0) for _ in range(count)]
    if not isinstance(item, YamlMap):
        raise FileError(
            f"{where}: {what} must be a catalogue name like 'rtx4090' or a mapping "
            f"with 'gpu:' or 'name:', got {describe(item)}", **items.at(i)
        )
    check_keys(item, GPU_ITEM_KEYS, what=what)
    count = get_int(item, "count", what=what, minimum=1, maximum=MAX_GPUS)
    count = 1 if count is None else count
    if "gpu" in item:
        for key in ("name", "memory", "compute_capability", "bandwidth_gbs"):
            if key in item:
                raise FileError(
                    f"{item.where(key)}: {what} takes '{key}' from the catalogue entry 'gpu: {item['gpu']}'; "
                    f"to describe a different card, replace 'gpu:' with 'name:'", **item.at(key)
                )
        word = item["gpu"]
        if not isinstance(word, (str, int)) or isinstance(word, bool):
            raise FileError(f"{item.where('gpu')}: {what}.gpu must be a catalogue name, got {describe(word)}",
                            **item.at("gpu"))
        try:
            spec = find_gpu(str(word), catalogue)
        except HardwareError as err:
            raise HardwareError(f"{item.where('gpu')}: {what}.gpu: {err}", gpu=err.gpu, path=item.source) from None
        free = _free(item, what, spec.memory_bytes)
        return [spec.to_gpu(0, free) for _ in range(count)]
    if "name" not in item:
        raise FileError(
            f"{item.where()}: {what} needs either 'gpu: KEY' (a catalogue card) or "
            f"'name:', 'memory:' and 'compute_capability:' (any other card)", **item.at()
        )
    name = get_str(item, "name", what=what, required=True)
    memory = get_size(item, "memory", what=what, required=True, minimum=1, maximum=MAX_GPU_MEMORY)
    cc = _cc_field(item, what)
    bandwidth = get_number(item, "bandwidth_gbs", what=what, **BANDWIDTH_GBS)
    free = _free(item, what, memory)
    gpu = GPU(index=0, name=name, total_bytes=memory, free_bytes=memory - DRIVER_RESERVED_BYTES if free is None else free,
              compute_capability=cc, bandwidth_gbs=bandwidth)
    return [gpu for _ in range(count)]


def _free(item: YamlMap, what: str, total: int) -> int | None:
    free = get_size(item, "free", what=what, maximum=MAX_GPU_MEMORY)
    if free is not None and free > total:
        raise FileError(
            f"{item.where('free')}: {what}.free ({fmt_bytes(free)}) is more than the card's memory "
            f"({fmt_bytes(total)}); free memory cannot exceed the total", **item.at("free")
        )
    return free


def _cc_field(entry: YamlMap, what: str) -> tuple[int, int]:
    if entry.get("compute_capability") is None:
        raise FileError(
            f"{entry.where('compute_capability')}: {what} needs compute_capability, e.g. \"8.6\" "
            f"(nvidia-smi --query-gpu=compute_cap --format=csv prints it)", **entry.at("compute_capability")
        )
    try:
        return parse_compute_capability(entry["compute_capability"])
    except ValueError as err:
        raise FileError(f"{entry.where('compute_capability')}: {what}.compute_capability: {err}",
                        **entry.at("compute_capability")) from None


def _aliases(entry: YamlMap, what: str) -> tuple[str, ...]:
    raw = entry.get("aliases")
    if raw is None:
        return ()
    raw = require_list(raw, where=entry.where("aliases"), what=f"{what}.aliases")
    out = []
    for i, alias in enumerate(raw):
        if isinstance(alias, bool) or not isinstance(alias, (str, int)) or not str(alias).strip():
            raise FileError(f"{raw.where(i)}: {what}.aliases[{i}] must be a name, got {describe(alias)}", **raw.at(i))
        out.append(str(alias).strip())
    return tuple(out)


def _counted(part: str, catalogue: dict[str, GPUSpec], *, context: str) -> tuple[int, GPUSpec]:
    word = part.strip()
    count = 1
    m = _COUNTED.match(word)
    if m:
        count, word = int(m.group(1)), m.group(2).strip()
        if not word:
            raise _named_error(context, f"{context}: {part.strip()!r} has a count but no GPU name; write e.g. '2x rtx4090'")
        if count < 1:
            raise _named_error(context, f"{context}: GPU count must be at least 1, got {count} in {part.strip()!r}")
        _check_total(count, context)
    try:
        return count, find_gpu(word, catalogue)
    except HardwareError as err:
        raise HardwareError(f"{context}: {err}",
                            gpu=err.gpu, path=at(context)["path"] if context != "--gpu" else None) from None


def _check_total(n: int, context: str) -> None:
    if n > MAX_GPUS:
        raise _named_error(context, f"{context}: asks for {n} GPUs; fitplan plans for at most {MAX_GPUS} in one process")


def _named_error(context: str, message: str) -> InputError:
    """An error about GPUs named by `--gpu` (the option) or at `context` of a file ("FILE:LINE: what")."""
    return OptionError(message, option="gpu") if context == "--gpu" else FileError(message, **at(context))


def _renumber(gpu: GPU, index: int) -> GPU:
    return GPU(index=index, name=gpu.name, total_bytes=gpu.total_bytes, free_bytes=gpu.free_bytes,
               compute_capability=gpu.compute_capability, uuid=gpu.uuid,
               bandwidth_gbs=gpu.bandwidth_gbs, mig=gpu.mig)


def _norm(word: str) -> str:
    """How names compare: case-insensitive, and spaces/underscores count as '-'."""
    return re.sub(r"[\s_-]+", "-", str(word).strip().lower())


def _name_norm(name: str) -> str:
    """NVML names compare without the vendor prefix old drivers left off ("GeForce GTX 1080 Ti")."""
    n = _norm(name)
    return n[len("nvidia-"):] if n.startswith("nvidia-") else n


@functools.lru_cache(maxsize=8)
def _index_cached(specs: tuple[GPUSpec, ...]) -> dict[str, str]:
    index: dict[str, str] = {}
    for spec in specs:
        for word in (spec.key, *spec.aliases):
            index[_norm(word)] = spec.key
    by_name: dict[str, list[str]] = {}
    for spec in specs:
        for variant in {_norm(spec.name), _name_norm(spec.name)}:
            by_name.setdefault(variant, []).append(spec.key)
    for variant, keys in by_name.items():
        if len(keys) == 1:
            index.setdefault(variant, keys[0])
    return index


def _index(catalogue: dict[str, GPUSpec]) -> dict[str, str]:
    return _index_cached(tuple(catalogue.values()))

