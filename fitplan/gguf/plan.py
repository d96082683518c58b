"""The GGUF plan: for each file (or each common type of a what-if), what sits where, whether it fits,
and the llama.cpp command that realises the recommended one.

`plan_gguf(model, hardware, ...)` is pure: `model` is a `GGUFModel` (a real file: one row, as
stored), a sequence of them (a folder or repo holding several quantizations: one row each), or a
transformers `Inventory` (one row per `types.COMMON` file type, estimated). Policy:

* no GPU (or `unified=True`): everything in one pool, host RAM or the unified memory, `-ngl 0`
  on a CPU host and everything offloaded on a unified-memory host (Metal);
* a GPU: the largest `-ngl` whose GPU share fits the first GPU's free memory minus headroom and
  the CUDA context, the rest in RAM; fits when the RAM share fits too;
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
from ..vocab.units import fmt_bytes, parse_fraction_or_bytes
from .estimate import estimate_gguf
from .model import GGUFModel
from .runtime import Placement, RunConfig, kv_type_id, needs_flash_attention, placement
from .ggml_types import COMMON, quality_rank

#: Headroom when none is given: the share of each memory pool left free (fitplan's CLI default).
DEFAULT_HEADROOM = 0.10


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
        if run.kv_type != "f16":
            flags += ["-ctk", run.kv_type, "-ctv", run.kv_type]
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
        if run.kv_type != "f16":
            kw["type_k"] = kw["type_v"] = kv_type_id(run.kv_type)
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


def _headroom(value, pool: int) -> tuple[int, str]:
    frac, absolute = parse_fraction_or_bytes(DEFAULT_HEADROOM if value is None else value, what="headroom")
    if frac is not None:
        return int(pool * frac), f"{frac:.0%}"
    return absolute, fmt_bytes(absolute)


def _models(model) -> tuple[tuple[GGUFModel, ...], str, tuple[str, ...]]:
    if isinstance(model, Inventory):
        est = tuple(estimate_gguf(model, t) for t in COMMON)
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
    the commands turn on); `headroom`: the share (`0.1`, `"10%"`) or size (`"1GiB"`) of each pool
    left free; `unified`: the GPU and CPU share one memory (Apple silicon), `hardware.cpu_ram_bytes`.
    """
    run = RunConfig(context=context, n_parallel=n_parallel, kv_type=kv_type)
    models, name, notes = _models(model)
    notes = list(dict.fromkeys(notes))
    gpu = hardware.gpus[0] if hardware.gpus and not unified else None
    if gpu is not None and len(hardware.gpus) > 1:
        notes.append(f"planned on GPU {gpu.index} ({gpu.name}) only; llama.cpp can split layers over "
                     "several GPUs (--tensor-split), which fitplan does not plan yet")
    if needs_flash_attention(run):
        notes.append(f"a {kv_type} V cache needs flash attention: the commands turn it on (-fa on)")
    ram_room, room_text = _headroom(headroom, hardware.cpu_ram_bytes)
    ram_budget = hardware.cpu_ram_bytes - ram_room
    if gpu is not None:
        gpu_room, _ = _headroom(headroom, gpu.free_bytes)
        gpu_budget = gpu.free_bytes - gpu_room - C.CUDA_CONTEXT_BYTES
        device = "gpu"
    else:
        gpu_budget = 0
        device = "unified" if unified else "cpu"
    rows = tuple(_row(m, run, device, gpu_budget, ram_budget) for m in models)
    best = _recommend(rows)
    hw = hardware.describe() + (" (unified memory)" if unified else "")
    return GGUFChoice(model=name, hardware=hw, device=device, context=context, n_parallel=n_parallel,
                      kv_type=kv_type, headroom=room_text, rows=rows, recommended=best, notes=tuple(notes))


def _row(m: GGUFModel, run: RunConfig, device: str, gpu_budget: int, ram_budget: int) -> GGUFRow:
    full = m.n_layer + 1
    if device == "cpu":
        p = placement(m, run, 0, gpu=False)
        fits = p.ram_total <= ram_budget
        reason = (f"fits in RAM ({fmt_bytes(p.ram_total)} of {fmt_bytes(ram_budget)} usable)" if fits else
                  f"needs {fmt_bytes(p.ram_total)} of RAM, {fmt_bytes(ram_budget)} usable")
        return _make(m, p, 0, fits, reason)
    if device == "unified":
        p = placement(m, run, full)
        total = p.gpu_total + p.ram_total  # one pool: the GPU's share and the host's add up
        fits = total <= ram_budget
        reason = (f"fits in unified memory ({fmt_bytes(total)} of {fmt_bytes(ram_budget)} usable)" if fits else
                  f"needs {fmt_bytes(total)} of unified memory, {fmt_bytes(ram_budget)} usable")
        return _make(m, p, 0, fits, reason, unified=True)
    best = None
    for ngl in range(full, -1, -1):  # the largest -ngl whose GPU share fits
        p = placement(m, run, ngl)
        if p.gpu_total <= gpu_budget:
            best = p
            break
    if best is None:
        p = placement(m, run, 0)
        return _make(m, p, C.CUDA_CONTEXT_BYTES, False,
                     f"even with no layer on the GPU it needs {fmt_bytes(p.gpu_total)} there "
                     f"(compute buffer), {fmt_bytes(max(gpu_budget, 0))} usable")
    fits = best.ram_total <= ram_budget
    where = ("every layer on the GPU" if best.n_gpu_layers == full else
             f"{best.n_gpu_layers} of {full} layers on the GPU, the rest in RAM")
    reason = (f"{where}" if fits else f"{where}, but the RAM share {fmt_bytes(best.ram_total)} exceeds the "
              f"{fmt_bytes(ram_budget)} usable")
    return _make(m, best, C.CUDA_CONTEXT_BYTES, fits, reason)


def _make(m: GGUFModel, p: Placement, overhead: int, fits: bool, reason: str, *, unified: bool = False) -> GGUFRow:
    file = m.path or (m.files[0] if m.files else m.name)
    return GGUFRow(
        type=m.file_type or "?", file=file, file_bytes=m.file_bytes, origin=m.origin,
        n_gpu_layers=m.n_layer + 1 if unified else p.n_gpu_layers, n_layers=m.n_layer,
        weights_gpu=p.gpu_weights, weights_ram=p.ram_weights, kv_gpu=p.gpu_kv, kv_ram=p.ram_kv,
        compute_gpu=p.gpu_compute, compute_ram=p.ram_compute, output_ram=p.ram_output, overhead_gpu=overhead,
        gpu_total=p.gpu_total + overhead, ram_total=p.ram_total,
        full_offload=unified or p.n_gpu_layers == m.n_layer + 1, fits=fits, reason=reason,
        repo_id=m.repo_id if m.origin == "hub" else None)


def _recommend(rows: tuple[GGUFRow, ...]) -> GGUFRow | None:
    def rank(r: GGUFRow):
        return quality_rank(r.type), -r.file_bytes

    for pool in ([r for r in rows if r.fits and r.full_offload], [r for r in rows if r.fits]):
        if pool:
            return min(pool, key=rank)
    return None
