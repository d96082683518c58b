"""The GGUF plan: for each file (or each common type of a what-if), what sits where, whether it fits,
and the llama.cpp command that realises the recommended one.

`plan_gguf(model, hardware, ...)` is pure: `model` is a `GGUFModel` (a real file: one row, as
stored), a sequence of them (a folder or repo holding several quantizations: one row each), or a
transformers `Inventory` (one row per `types.COMMON` file type, estimated). Policy:

* no GPU (or `unified=True`): everything in one pool, host RAM or the unified memory, `-ngl 0`
  on a CPU host and everything offloaded on a unified-memory host (Metal);
* GPUs: the largest `-ngl` whose share fits each GPU's free memory minus headroom (a share of its
  total memory, as everywhere: `fitplan.planning.headroom`) and the CUDA context, the layers split
  over several GPUs by `--tensor-split` (each GPU's usable memory) as llama.cpp's layer split mode
  does (`runtime.layer_devices`), the rest in RAM; fits when the RAM share fits too, loaded
  memory-mapped unless only `--no-mmap` makes it fit (repacked weights);
* recommended: the best quality (order of `types.FILE_TYPES`) among rows that fit with every
  layer offloaded; if none, the best among rows that fit partially (or on the CPU).
"""
from __future__ import annotations

import textwrap
from dataclasses import asdict, dataclass, field
from typing import Sequence

from .. import calibration as C
from ..errors import OptionError
from ..hardware.machine import Hardware
from ..model.inventory import Inventory
from ..planning import headroom as room
from ..vocab.units import GiB, fmt_bytes
from .estimate import estimate_gguf, gguf_architecture, gguf_tensors
from .model import GGUFModel
from .runtime import (Placement, RunConfig, kv_type_id, model_sums, needs_flash_attention, placement,
                      python_scores_bytes)
from .ggml_types import COMMON, quality_rank

@dataclass(frozen=True)
class GGUFRow:
    """One file (type) planned. Bytes per device are `placement`'s; `gpu_total` includes the CUDA
    context; `fits` and `reason` say whether and why (not). `repo_id` is set for a file on the Hub
    (`file` is then its name in the repo)."""

    type: str
    file: str
    file_bytes: int
    origin: str
    n_gpu_layers: int
    n_layers: int
    weights_gpu: int
    weights_ram: int
    kv_gpu: int
    kv_ram: int
    compute_gpu: int
    compute_ram: int
    output_ram: int
    overhead_gpu: int
    gpu_total: int
    ram_total: int
    full_offload: bool
    fits: bool
    reason: str
    repo_id: str | None = None
    repack_ram: int = 0  # the CPU_REPACK copy memory-mapped loading adds (in ram_total)
    no_mmap: bool = False  # the commands load without mmap: the repacked weights are not held twice
    python_scores_ram: int = 0  # what llama_cpp.Llama adds in host memory (its scores array), not in ram_total
    tensor_split: tuple[float, ...] | None = None  # --tensor-split over several GPUs
    per_gpu: tuple[int, ...] = ()  # bytes on each GPU (CUDA context included), in --tensor-split order

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class GGUFChoice:
    """All rows, the recommended one (None when nothing fits) and how to run it."""

    model: str
    hardware: str
    device: str
    context: int
    n_parallel: int
    kv_type: str
    headroom: str
    rows: tuple[GGUFRow, ...]
    recommended: GGUFRow | None
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def fits(self) -> bool:
        return self.recommended is not None

    def run_config(self) -> RunConfig:
        return RunConfig(context=self.context, n_parallel=self.n_parallel, kv_type=self.kv_type)

    # -- commands ---------------------------------------------------------------------------------
    def _flags(self, row: GGUFRow) -> list[str]:
        run = self.run_config()
        where = ["-hfr", row.repo_id, "-hff", row.file] if row.repo_id else ["-m", row.file]
        flags = [*where, "-c", str(run.n_ctx), "-ngl", str(row.n_gpu_layers), "-fa", "on"]
        if row.tensor_split:
            flags += ["-ts", ",".join(_split_text(x) for x in row.tensor_split)]
        if run.kv_type != "f16":
            flags += ["-ctk", run.kv_type, "-ctv", run.kv_type]
        if row.no_mmap:
            flags.append("--no-mmap")
        return flags

    def server_command(self, row: GGUFRow | None = None) -> str | None:
        """`llama-server ...` for `row` (default: the recommended one); `-np` with n_parallel > 1."""
        row = row or self.recommended
        if row is None:
            return None
        np_flags = ["-np", str(self.n_parallel)] if self.n_parallel > 1 else []
        return " ".join(["llama-server", *self._flags(row), *np_flags])

    def cli_command(self, row: GGUFRow | None = None) -> str | None:
        row = row or self.recommended
        if row is None:
            return None
        run = self.run_config()
        flags = self._flags(row)
        flags[flags.index("-c") + 1] = str(run.n_ctx // self.n_parallel)  # one conversation
        return " ".join(["llama-cli", *flags])

    def llama_cpp_kwargs(self, row: GGUFRow | None = None) -> dict | None:
        """The `llama_cpp.Llama(**kwargs)` arguments for `row` (one sequence: `n_ctx` is per sequence).
        For a Hub file, `model_path` is its name in the repo: `Llama.from_pretrained(repo_id, filename)`."""
        row = row or self.recommended
        if row is None:
            return None
        run = self.run_config()
        kw = {"model_path": row.file, "n_ctx": run.n_ctx // self.n_parallel, "n_gpu_layers": row.n_gpu_layers,
              "n_batch": run.n_batch, "n_ubatch": run.n_ubatch, "flash_attn": True}
        if row.tensor_split:
            kw["tensor_split"] = list(row.tensor_split)
        if run.kv_type != "f16":
            kw["type_k"] = kw["type_v"] = kv_type_id(run.kv_type)
        if row.no_mmap:
            kw["use_mmap"] = False
        return kw

    def python_call(self, row: GGUFRow | None = None) -> str | None:
        row = row or self.recommended
        kw = self.llama_cpp_kwargs(row)
        if kw is None:
            return None
        if row.repo_id:
            kw = {"repo_id": row.repo_id, "filename": kw.pop("model_path"), **kw}
            return "llama_cpp.Llama.from_pretrained(" + ", ".join(f"{k}={v!r}" for k, v in kw.items()) + ")"
        return "llama_cpp.Llama(" + ", ".join(f"{k}={v!r}" for k, v in kw.items()) + ")"

    # -- output -----------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "model": self.model, "hardware": self.hardware, "device": self.device, "context": self.context,
            "n_parallel": self.n_parallel, "kv_type": self.kv_type, "headroom": self.headroom,
            "rows": [r.to_dict() for r in self.rows],
            "recommended": self.recommended.type if self.recommended else None,
            "recommended_file": self.recommended.file if self.recommended else None,
            "commands": {"llama_server": self.server_command(), "llama_cli": self.cli_command(),
                         "llama_cpp_python": self.llama_cpp_kwargs()},
            "notes": list(self.notes),
        }

    def render_lines(self) -> list[str]:
        """Plain-text table and commands, every line under 100 columns."""
        gpu = self.device != "cpu"
        head = (f"GGUF (llama.cpp) for {self.model} on {self.hardware}: context {self.context}"
                + (f" x {self.n_parallel}" if self.n_parallel > 1 else "") + f", KV {self.kv_type}")
        lines = _text(head)
        cols = (f"{'type':<9}{'file':>11}{'weights':>11}{'KV':>11}{'compute':>11}"
                + (f"{'GPU':>11}{'RAM':>11}{'layers':>8}" if gpu else f"{'total':>11}") + "  fits")
        lines.append(cols)
        for r in self.rows:
            mark = "*" if self.recommended is r else " "
            base = (f"{r.type:<9}{_gb(r.file_bytes):>11}{_gb(r.weights_gpu + r.weights_ram):>11}"
                    f"{_gb(r.kv_gpu + r.kv_ram):>11}{_gb(r.compute_gpu + r.compute_ram):>11}")
            if gpu:
                base += f"{_gb(r.gpu_total):>11}{_gb(r.ram_total):>11}{f'{r.n_gpu_layers}/{r.n_layers + 1}':>8}"
            else:
                base += f"{_gb(r.ram_total):>11}"
            lines.append(_clip(f"{base}  {'yes' if r.fits else 'no'}{mark}"))
        for r in self.rows:
            if not r.fits:
                lines.extend(_text(f"  {r.type}: {r.reason}"))
        if self.recommended is None:
            lines.append("no GGUF option fits: shorten the context, use a smaller type, or add memory")
        else:
            lines.extend(_text(f"recommended: {self.recommended.type} - {self.recommended.reason}"))
            for cmd in (self.server_command(), self.cli_command(), self.python_call()):
                lines.extend(_wrap(cmd))
        for n in self.notes:
            lines.extend(_text(f"note: {n}"))
        return lines


def _split_text(x: float) -> str:
    return f"{x:g}"


def _gb(n: int) -> str:
    return fmt_bytes(n)


def _clip(s: str, width: int = 99) -> str:
    return s if len(s) <= width else s[:width - 3] + "..."


def _text(s: str, width: int = 99) -> list[str]:
    return textwrap.wrap(s, width=width, subsequent_indent="    ", break_on_hyphens=False) or [""]


def _wrap(cmd: str, width: int = 97) -> list[str]:
    """A command on lines under `width` columns, continued with a trailing backslash."""
    words, lines, cur = cmd.split(" "), [], "  "
    for w in words:
        if len(cur) + len(w) + 1 > width and cur.strip():
            lines.append(cur + " \\")
            cur = "    "
        cur += (" " if cur.strip() else "") + w
    lines.append(cur)
    return lines


def _headroom_text(h: float | int) -> str:
    return f"{h:.0%}" if isinstance(h, float) else fmt_bytes(h)


def gpu_budget(gpu, headroom) -> int:
    """What llama.cpp may use of `gpu`: its free memory less the headroom (of its total) and the CUDA context."""
    h = room.parse(headroom)
    return gpu.free_bytes - room.headroom_bytes(gpu.total_bytes, h) - C.CUDA_CONTEXT_BYTES


def _models(model) -> tuple[tuple[GGUFModel, ...], str, tuple[str, ...]]:
    if isinstance(model, Inventory):
        gguf_architecture(model)  # an architecture the what-if cannot map is refused before the names are built
        named = gguf_tensors(model)
        est = tuple(estimate_gguf(model, t, named=named) for t in COMMON)
        notes = ("sizes are estimates of the files llama-quantize writes (llama.cpp's rules, no imatrix); "
                 "download a GGUF of this model with the recommended type",) + est[0].notes
        return est, model.model_id, notes
    if isinstance(model, GGUFModel):
        return (model,), model.name, model.notes
    if isinstance(model, Sequence) and model and all(isinstance(m, GGUFModel) for m in model):
        ms = tuple(sorted(model, key=lambda m: (quality_rank(m.file_type or ""), -m.file_bytes)))
        return ms, ms[0].repo_id or ms[0].name, tuple(n for m in ms for n in m.notes)
    raise OptionError("plan_gguf needs a GGUFModel (read_gguf/read_hub_gguf), a list of them, or an Inventory",
                      option="model")


def plan_gguf(model, hardware: Hardware, *, context: int = 4096, n_parallel: int = 1, kv_type: str = "f16",
              headroom=None, unified: bool = False) -> GGUFChoice:
    """Plan llama.cpp runs of `model` on `hardware` (see the module docstring).

    `context`: tokens per sequence; `n_parallel`: sequences at once (llama-server slots);
    `kv_type`: KV cache type (`f16`, `q8_0`, `q4_0`; quantized types need flash attention, which
    the commands turn on); `headroom`: the share (`0.1`, `"10%"`) of each pool's total memory, or a size (`"1GiB"`),
    left free; `unified`: the GPU and CPU share one memory (Apple silicon), `hardware.cpu_ram_bytes`.
    """
    run = RunConfig(context=context, n_parallel=n_parallel, kv_type=kv_type)
    models, name, notes = _models(model)
    notes = list(dict.fromkeys(notes))
    gpus = () if unified else tuple(hardware.gpus)
    if needs_flash_attention(run):
        notes.append(f"a {kv_type} V cache needs flash attention: the commands turn it on (-fa on)")
    h = room.parse(headroom)
    room_text = _headroom_text(h)
    ram_budget = hardware.cpu_ram_bytes - room.headroom_bytes(hardware.cpu_ram_bytes, h)
    budgets = tuple(gpu_budget(g, h) for g in gpus)
    split = _tensor_split(budgets)
    device = "gpu" if gpus else ("unified" if unified else "cpu")
    if len(gpus) > 1:
        notes.append(f"layers split over {len(gpus)} GPUs as llama.cpp's --tensor-split {','.join(map(_split_text, split))} "
                     "(each GPU's usable memory in GiB) places them; each GPU holds its layers' KV cache and a "
                     "compute buffer")
    rows = tuple(_row(m, run, device, budgets, split, ram_budget) for m in models)
    best = _recommend(rows)
    if best is not None:
        if best.no_mmap:
            notes.append(f"{best.type}: the commands load without memory mapping (--no-mmap, use_mmap=False): mapped, "
                         f"the {fmt_bytes(best.repack_ram)} of weights llama.cpp's CPU backend repacks would be held "
                         "twice and the RAM would not suffice")
        elif best.repack_ram:
            notes.append(f"{best.type}: {fmt_bytes(best.repack_ram)} of host-resident weights are repacked into "
                         "llama.cpp's CPU_REPACK buffer while the file stays mapped: planned in RAM (--no-mmap would "
                         "hold them once, loading slower)")
        if best.python_scores_ram:
            notes.append(f"llama_cpp.Llama adds a {fmt_bytes(best.python_scores_ram)} scores array (n_batch x n_vocab "
                         "float32) in host memory to what the llama-server and llama-cli commands hold")
    hw = hardware.describe() + (" (unified memory)" if unified else "")
    return GGUFChoice(model=name, hardware=hw, device=device, context=context, n_parallel=n_parallel,
                      kv_type=kv_type, headroom=room_text, rows=rows, recommended=best, notes=tuple(notes))


def _tensor_split(budgets: tuple[int, ...]) -> tuple[float, ...]:
    """`--tensor-split` for these GPUs: each one's usable memory in GiB (one decimal), so llama.cpp
    splits the layers in proportion to what each can hold, as it does by default with free memory;
    printed, so the run places them as planned whatever else holds memory then."""
    if len(budgets) < 2:
        return (1.0,)
    return tuple(max(round(b / GiB, 1), 0.1) for b in budgets)


def _row(m: GGUFModel, run: RunConfig, device: str, budgets: tuple[int, ...], split: tuple[float, ...],
         ram_budget: int) -> GGUFRow:
    full = m.n_layer + 1
    sums = model_sums(m, run)
    if device == "cpu":
        p, no_mmap = _host_fit(m, run, 0, split, ram_budget, sums, gpu=False)
        fits = p.ram_total <= ram_budget
        reason = (f"fits in RAM ({fmt_bytes(p.ram_total)} of {fmt_bytes(ram_budget)} usable)" if fits else
                  f"needs {fmt_bytes(p.ram_total)} of RAM, {fmt_bytes(ram_budget)} usable")
        return _make(m, p, 0, fits, reason, run=run, no_mmap=no_mmap)
    if device == "unified":
        p = placement(m, run, full, sums=sums)
        total = p.gpu_total + p.ram_total  # one pool: the GPU's share and the host's add up
        fits = total <= ram_budget
        reason = (f"fits in unified memory ({fmt_bytes(total)} of {fmt_bytes(ram_budget)} usable)" if fits else
                  f"needs {fmt_bytes(total)} of unified memory, {fmt_bytes(ram_budget)} usable")
        return _make(m, p, 0, fits, reason, unified=True, run=run)
    multi = len(budgets) > 1
    best = _largest_ngl(m, run, full, split, budgets, sums, monotone=not multi)
    if best is None:
        p = placement(m, run, 0, split=split, sums=sums)
        return _make(m, p, C.CUDA_CONTEXT_BYTES, False,
                     f"even with no layer on the GPU{'s' if multi else ''} it needs {fmt_bytes(p.per_gpu[0])} "
                     f"{'on the first GPU ' if multi else 'there '}(compute buffer), {fmt_bytes(max(budgets[0], 0))} usable", run=run, split=split if multi else None)
    best, no_mmap = _host_fit(m, run, best.n_gpu_layers, split, ram_budget, sums, gpu=True)
    fits = best.ram_total <= ram_budget
    where = ("every layer on the GPU" + ("s" if multi else "") if best.n_gpu_layers == full else
             f"{best.n_gpu_layers} of {full} layers on the GPU{'s' if multi else ''}, the rest in RAM")
    reason = (f"{where}" if fits else f"{where}, but the RAM share {fmt_bytes(best.ram_total)} exceeds the "
              f"{fmt_bytes(ram_budget)} usable")
    return _make(m, best, C.CUDA_CONTEXT_BYTES, fits, reason, run=run, no_mmap=no_mmap, split=split if multi else None)


def _largest_ngl(m, run, full, split, budgets, sums, *, monotone: bool) -> Placement | None:
    """The placement of the largest `-ngl` whose share fits every GPU. On one GPU its share grows with
    `-ngl`, so a bisection finds it; over several, each GPU's share depends on how the split rounds,
    so every `-ngl` is tried from the top."""
    def fits(ngl):
        p = placement(m, run, ngl, split=split, sums=sums)
        return p if all(x <= b for x, b in zip(p.per_gpu, budgets)) else None

    if not monotone:
        return next((p for ngl in range(full, -1, -1) if (p := fits(ngl)) is not None), None)
    top = fits(full)
    if top is not None:
        return top
    lo, hi = -1, full  # fits(lo) holds (or lo is -1), fits(hi) does not
    found = None
    while hi - lo > 1:
        mid = (lo + hi) // 2
        p = fits(mid)
        if p is None:
            hi = mid
        else:
            lo, found = mid, p
    return found


def _host_fit(m, run, ngl, split, ram_budget, sums, *, gpu: bool) -> tuple[Placement, bool]:
    """The placement with llama.cpp's default memory-mapped loading, or without it (True) when only
    that makes the host share fit: the repacked weights are then read once into CPU_REPACK."""
    p = placement(m, run, ngl, gpu=gpu, split=split, sums=sums)
    if p.ram_total > ram_budget and p.ram_repack:
        q = placement(m, run, ngl, gpu=gpu, split=split, mmap=False, sums=sums)
        if q.ram_total <= ram_budget:
            return q, True
    return p, False


def _make(m: GGUFModel, p: Placement, overhead: int, fits: bool, reason: str, *, run: RunConfig,
          unified: bool = False, no_mmap: bool = False, split: tuple[float, ...] | None = None) -> GGUFRow:
    file = m.path or (m.files[0] if m.files else m.name)
    n_gpus = max(len(p.per_gpu), 1)
    return GGUFRow(
        type=m.file_type or "?", file=file, file_bytes=m.file_bytes, origin=m.origin,
        n_gpu_layers=m.n_layer + 1 if unified else p.n_gpu_layers, n_layers=m.n_layer,
        weights_gpu=p.gpu_weights, weights_ram=p.ram_weights, kv_gpu=p.gpu_kv, kv_ram=p.ram_kv,
        compute_gpu=p.gpu_compute, compute_ram=p.ram_compute, output_ram=p.ram_output, overhead_gpu=overhead,
        gpu_total=p.gpu_total + overhead * n_gpus, ram_total=p.ram_total,
        full_offload=unified or p.n_gpu_layers == m.n_layer + 1, fits=fits, reason=reason,
        repo_id=m.repo_id if m.origin == "hub" else None, repack_ram=p.ram_repack, no_mmap=no_mmap,
        python_scores_ram=python_scores_bytes(m, run), tensor_split=split,
        per_gpu=tuple(x + overhead for x in p.per_gpu) if overhead else ())


def _recommend(rows: tuple[GGUFRow, ...]) -> GGUFRow | None:
    def rank(r: GGUFRow):
        return quality_rank(r.type), -r.file_bytes

    for pool in ([r for r in rows if r.fits and r.full_offload], [r for r in rows if r.fits]):
        if pool:
            return min(pool, key=rank)
    return None
