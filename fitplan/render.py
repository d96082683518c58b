"""Everything fitplan shows people, in one place: a plan (hardware, one row per precision, the
recommendation and its arguments), a load report (`print(model.fitplan)`) and a verify report.

Every line fits in `WIDTH` columns: longer ones wrap with an indent under their label.
"""
from __future__ import annotations

import re
import textwrap

from .vocab.units import fmt_bytes, gib
from .vocab.classes import AUTO_CLASSES

WIDTH = 100
#: A module name ending in a layer index (`model.layers.12`): runs of them render as a range.
_INDEXED = re.compile(r"^(.*\.)(\d+)$")
#: A line's label: leading spaces, a word (or `-`, or `NO FIT`), and the spaces after it.
_LABEL = re.compile(r"^ *(?:NO FIT|\S+) +")


def _gib(n: int) -> str:
    return f"{gib(n, 2):>8}"


def _wrap(line: str) -> list[str]:
    """`line` in lines of at most WIDTH columns; continuations start under the text that follows the
    line's label (`plan      `, `  fp32     `, `note: `), or 4 columns in."""
    if len(line) <= WIDTH:
        return [line]
    label = _LABEL.match(line)
    lead = len(line) - len(line.lstrip(" "))
    indent = len(label.group(0)) if label and len(label.group(0)) <= 14 else lead + 4
    return textwrap.wrap(line, WIDTH, subsequent_indent=" " * indent, break_on_hyphens=False) or [line]


def _tokens_per_s(d) -> str:
    tps = d.speed.tokens_per_s if d.speed else None
    return f"{tps:8.1f}" if tps is not None else f"{'-':>8}"


def _workload_text(plan) -> str:
    o, inv = plan.options, plan.inventory
    images = (f" + {o.images} image{'s' if o.images > 1 else ''} x {inv.image_tokens_per_image} tokens"
              if o.images else "")
    return f"context {o.context} tokens{images} x batch {o.batch}"


def render_text(plan) -> str:
    n = plan.inventory.parameters
    count = f"{n / 1e9:.2f}B" if n >= 1e8 else f"{n / 1e6:.2f}M"
    lines = [f"model     {plan.model_id}  ({plan.inventory.architecture} via "
             f"{AUTO_CLASSES[plan.inventory.auto_class]}, {count} parameters, from {plan.origin})",
             f"hardware  {plan.hardware.describe()}  [{plan.hardware.source}]",
             f"workload  {_workload_text(plan)}"]
    if plan.hub_kernels is not None:
        lines.append(f"kernels   {plan.hub_kernels.summary()}")
    lines.append("")
    head = (f"{'precision':10} {'weights':>8} {'kv cache':>8} {'activ.':>8} {'overhead':>8} {'total':>8} "
            f"{'tok/s':>8}  fits")
    lines += [head, "-" * len(head)]
    chosen = plan.decision.precision if plan.decision else None
    for d in plan.choice.decisions:
        e = d.estimate
        fits = "YES <- plan" if d.precision == chosen else ("yes" if d.fits else "no")
        lines.append(f"{d.precision:10} {_gib(e.weights_bytes)} {_gib(e.kv_cache_bytes)} {_gib(e.activation_bytes)} "
                     f"{_gib(e.overhead_bytes)} {_gib(e.total_bytes)} {_tokens_per_s(d)}  {fits}")
    lines.append("GiB; tok/s: decode estimate for the whole batch at the full context; fits: in memory here")
    lines.append("")
    if plan.fits:
        d = plan.decision
        lines.append(f"plan      {d.precision} weights, {plan.compute_dtype} compute: {d.reason}")
        for s in d.placement:
            where = f"GPU {s.device}" if s.device != "cpu" else "CPU RAM"
            span = f", layers {min(s.layers)}-{max(s.layers)}" if s.layers and len(d.placement) > 1 else ""
            staged = f" (with {fmt_bytes(s.staging_bytes)} staged for offloaded layers)" if s.staging_bytes else ""
            lines.append(f"          {where}: {gib(s.total_bytes, 2)} GiB of {gib(s.budget_bytes, 2)} GiB "
                         f"usable{span}{staged}")
        if d.speed is not None:
            lines.append(f"speed     {_speed_words(d.speed)}")
        if d.generation is not None:
            lines.append(f"generate  {_generation_words(d.generation)}")
        others = [x for x in plan.choice.decisions if x.precision != d.precision]
        if others:  # a pre-quantized checkpoint may have no other row
            lines.append("rejected")
        lines += [f"  {x.precision:8} {x.rejected_because}" for x in others]
        lines.append("")
        lines.append("from_pretrained arguments:")
        lines += _kwargs_code(plan)
    else:
        lines.append(f"NO FIT    {plan.summary_line()}")
        for x in plan.choice.decisions:
            lines.append(f"  {x.precision:8} {x.rejected_because}")
        suggestions = plan.suggestions("cli")
        if suggestions:  # none where nothing fitplan can change would fit (a CPU machine without the RAM)
            lines.append("what would make it fit:")
            lines += [f"  - {s}" for s in suggestions]
    if plan.engine is not None:
        lines = lines[:4] + engine_lines(plan.engine)
    if plan.tp_hint is not None:
        lines += hint_lines(plan.tp_hint)
    if plan.gguf is not None:
        lines.append("")
        lines.append("llama.cpp (GGUF) options for this workload:")
        lines += plan.gguf.render_lines()
    notes = plan.notes
    if notes:
        lines.append("")
        lines += [f"note: {n}" for n in notes]
    return "\n".join(w for line in lines for w in _wrap(line))


def _speed_words(speed) -> str:
    parts = []
    if speed.tokens_per_s is not None:
        parts.append(f"about {speed.tokens_per_s:.1f} tokens/s decoding {speed.batch} sequence"
                     f"{'s' if speed.batch > 1 else ''}, bound by {speed.bound}")
    if speed.tokens_per_s is None and speed.no_estimate:
        parts.append(f"no decode estimate: {speed.no_estimate}")
    if speed.pcie_bytes:
        parts.append(f"{fmt_bytes(speed.pcie_bytes)} of offloaded weights cross PCIe every step, which alone "
                     f"allows at most {speed.pcie_ceiling:.1f} tokens/s")
    return "; ".join(parts) or "no estimate (a GPU's memory bandwidth is unknown)"


def _device_map_code(dm) -> str:
    """A device_map as Python: runs of layers on one device as `**{f'model.layers.{i}': dev for i in range(a, b)}`."""
    if not isinstance(dm, dict):
        return repr(dm)
    parts, items, i = [], list(dm.items()), 0
    while i < len(items):
        key, dev = items[i]
        m = _INDEXED.match(key) if isinstance(key, str) else None
        j = i + 1
        if m:
            while (j < len(items) and items[j][1] == dev and isinstance(items[j][0], str)
                   and items[j][0] == f"{m.group(1)}{int(m.group(2)) + (j - i)}"):
                j += 1
        if m and j - i >= 3:
            start = int(m.group(2))
            parts.append(f"**{{f'{m.group(1)}{{i}}': {dev!r} for i in range({start}, {start + j - i})}}")
            i = j
        else:
            parts.append(f"{key!r}: {dev!r}")
            i += 1
    return "{" + ", ".join(parts) + "}"


def _kwargs_code(plan) -> list[str]:
    """The from_pretrained call as Python, one argument a line, long arguments wrapped inside their
    brackets (valid Python as printed)."""
    kw = plan.kwargs_as_data()
    args = [repr(plan.model_id), f"dtype=torch.{kw['dtype']}", f"device_map={_device_map_code(kw['device_map'])}"]
    q = kw.get("quantization_config")
    if q and q.get("dequantize"):  # a pre-quantized row loaded dequantized
        from .model.prequant import DEQUANTIZED_CONFIGS

        args.append(f"quantization_config={DEQUANTIZED_CONFIGS[q['quant_method']]}(dequantize=True)")
    elif q:
        inner = ", ".join(f"{k}=torch.{v}" if k == "bnb_4bit_compute_dtype" else f"{k}={v!r}" for k, v in q.items())
        args.append(f"quantization_config=BitsAndBytesConfig({inner})")
    if kw.get("max_memory"):
        mm = ", ".join(f"{k if k == 'cpu' else int(k)!r}: {v}" for k, v in kw["max_memory"].items())
        args.append(f"max_memory={{{mm}}}")
    if kw.get("revision"):
        args.append(f"revision={kw['revision']!r}")
    out = []
    if plan.hardware.gpus and plan.hardware.allocator == "expandable":  # the reserve was planned for it
        out += ["  # the plan budgets the allocator fitplan.load() sets up; before torch first touches CUDA:",
                "  os.environ.setdefault('PYTORCH_CUDA_ALLOC_CONF', 'expandable_segments:True')"]
    out += [f"  {AUTO_CLASSES[plan.inventory.auto_class]}.from_pretrained("]  # the class load() loads with
    for a in args:
        out += textwrap.wrap(f"{a},", WIDTH, initial_indent=" " * 6, subsequent_indent=" " * 10,
                             break_long_words=False, break_on_hyphens=False)
    return out + ["  )"]


def _generation_words(gen) -> str:
    """One plan's generation setup in words: cache, compile, attention, and why."""
    cache = (f"static cache for {gen.max_cache_len} tokens x {gen.batch}" if gen.static else "dynamic cache")
    compiled = f", decode compiled by {gen.compile['by']}() ({gen.compile['mode']})" if gen.compile else ""
    return f"{cache}{compiled}, {gen.attn_implementation} attention: {gen.why}"


def render_load_report(report) -> str:
    """`model.fitplan` after `fitplan.load()`: the plan followed, the generation setup applied,
    predicted vs measured weights."""
    rows = [f"fitplan: {report.plan.summary_line()}"]
    if report.tensor_parallel is not None:
        tp = report.tensor_parallel
        rows.append(f"  tensor parallel: rank {report.rank} of {tp.world_size} (transformers {tp.transformers}), "
                    f"{len(tp.sharded)} tensors sharded, {fmt_bytes(tp.replicated_parameter_bytes)} replicated")
    if report.generation is not None:
        rows.append(f"  generation: {_generation_words(report.generation)}")
    if report.warmup_s is not None:
        rows.append(f"  warm-up (first generate, compile included): {report.warmup_s:.1f} s")
    for dev in sorted(set(report.predicted_weights) | set(report.measured_weights), key=str):
        p, m = report.predicted_weights.get(dev), report.measured_weights.get(dev)
        rows.append(f"  {dev}: weights predicted {fmt_bytes(p or 0)}, measured {fmt_bytes(m or 0)}")
    rows += [f"  user override: {o}" for o in report.overrides]
    if report.allocator:
        rows.append(f"  {report.allocator}")
    rows += [f"  note: {n}" for n in report.notes]
    return "\n".join(rows)


def render_verify(report) -> str:
    """`fitplan verify`: per device, predicted and measured weights and peak."""
    rows = [report.summary, f"{'device':8} {'weights pred':>14} {'weights meas':>14} {'peak pred':>12} {'peak meas':>12}"]
    for d in report.devices:
        rows.append(f"{d.device:8} {fmt_bytes(d.predicted_weights):>14} {fmt_bytes(d.measured_weights):>14} "
                    f"{fmt_bytes(d.predicted_peak):>12} {fmt_bytes(d.measured_peak):>12}  {'ok' if d.ok else 'OVER'}")
    if report.tokens_per_s is not None:
        est = "no estimate" if report.estimated_tokens_per_s is None else f"estimated {report.estimated_tokens_per_s:.1f}"
        rows.append(f"decode: {report.tokens_per_s:.1f} tokens/s measured, {est} ({report.setup})")
    rows.append(f"generation took {report.generate_s:.1f} s; "
                + ("measured peaks within the prediction" if report.ok else "a measured peak exceeded its prediction"))
    return "\n".join(rows)


# -- serving-engine plans (fitplan.engines): per rank, what the engine will log, the command ----------------

_GiB = 1 << 30


def _g(n: int) -> str:
    return f"{n / _GiB:.2f} GiB"


def engine_lines(choice) -> list[str]:
    p = choice.plan
    head = "FITS" if p.fits else "NO FIT"
    nodes = f" on {p.nodes} nodes" if p.nodes > 1 else ""
    lines = [f"{head:9} {p.name} {p.version}: TP {p.tensor_parallel_size} x PP {p.pipeline_parallel_size} "
             f"({p.world_size} x {p.gpu_name}{nodes}), {p.precision} weights, KV cache {p.kv_cache_dtype}",
             "", f"{'rank':>4} {'stage':>5} {'layers':>6} {'weights':>11} {'activation':>11} {'non-torch':>10} "
                 f"{'KV budget':>11}"]
    seen = set()
    for r in p.per_rank:
        if r.stage in seen:
            continue
        seen.add(r.stage)
        ranks = f"{r.rank}" if p.tensor_parallel_size == 1 else f"{r.rank}-{r.rank + p.tensor_parallel_size - 1}"
        lines.append(f"{ranks:>4} {r.stage:>5} {r.layers:>6} {_g(r.weights_bytes):>11} {_g(r.activation_bytes):>11} "
                     f"{_g(r.non_torch_bytes):>10} {_g(r.available_kv_cache_bytes):>11}")
    lines += ["", "the engine will log:",
              f"  Available KV cache memory: {p.available_kv_cache_bytes / _GiB:.2f} GiB",
              f"  GPU KV cache size: {p.kv_cache_tokens:,} tokens",
              f"  Maximum concurrency for {p.max_model_len:,} tokens per request: {p.max_concurrency:.2f}x"]
    if p.max_model_len_fit < p.max_model_len:
        lines.append(f"  the engine refuses --max-model-len {p.max_model_len:,}: the largest that fits is "
                     f"{p.max_model_len_fit:,}")
    if choice.rejected:
        lines += ["", "rejected:"] + [f"  {r.what}: {r.reason}" for r in choice.rejected]
    lines += ["", "command:"] + [f"  {c}" for c in p.command]
    lines += [f"note: {n}" for n in p.notes]
    return lines


def hint_lines(choice) -> list[str]:
    p = choice.plan
    head = (f"tensor parallel: vLLM {p.version} with TP {p.tensor_parallel_size} on {p.world_size} of these GPUs, "
            f"{p.precision} weights")
    if not p.fits:
        return ["", f"{head}: does not fit either ({choice.rejected[-1].reason if choice.rejected else ''})"]
    return ["", f"{head}, every GPU computing at once: {p.kv_cache_tokens:,} KV tokens, {p.max_concurrency:.2f} "
                f"sequences of {p.max_model_len:,} tokens (more: fitplan check --engine vllm):",
            f"  {p.command[-1]}"]
