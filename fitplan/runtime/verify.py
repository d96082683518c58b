"""`fitplan verify`: load per plan on this GPU, generate at the planned workload, compare.

The user-facing form of docs/accuracy.md's measurement: predicted vs measured weights and peak,
per device. Exit 1 if a measured peak exceeded its prediction; 2 on a machine without a GPU.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import NoGpuError, OptionError, ref
from ..options import PlanOptions


@dataclass(frozen=True)
class DeviceCheck:
    device: str
    predicted_weights: int
    measured_weights: int
    predicted_peak: int
    measured_peak: int

    @property
    def ok(self) -> bool:
        return self.measured_peak <= self.predicted_peak


@dataclass(frozen=True)
class VerifyReport:
    summary: str
    devices: tuple[DeviceCheck, ...]
    generate_s: float
    tokens_per_s: float | None = None  # measured decode: batch x new tokens / (generate - prompt's prefill)
    estimated_tokens_per_s: float | None = None  # the plan's estimate for the setup applied (None: none)
    setup: str = ""  # the generation setup applied, in words
    warmup_s: float | None = None

    @property
    def ok(self) -> bool:
        return all(d.ok for d in self.devices)


def verify(model: str, *, max_new_tokens: int = 32, **options) -> VerifyReport:
    import time

    import torch

    if not torch.cuda.is_available():
        raise NoGpuError("fitplan verify needs a CUDA GPU and this machine has none (use `fitplan check` to plan)")
    from .load import load

    defaults = PlanOptions()
    context = options.get("context") or defaults.context
    batch = options.get("batch") or defaults.batch
    if max_new_tokens >= context:
        raise OptionError(f"{ref('max_new_tokens')} ({max_new_tokens}) must be below {ref('context')} ({context})",
                          option="max_new_tokens")
    base = {i: torch.cuda.mem_get_info(i) for i in range(torch.cuda.device_count())}
    m = load(model, tokenizer=False, warmup=True, **options)  # the first compile is not decode time
    plan = m.fitplan.plan
    context = plan.options.context  # the default may have been capped at the model's positions (planning.workload.planned)
    batch = plan.options.batch  # the planned shape, which the static cache was allocated for
    for i in range(torch.cuda.device_count()):
        torch.cuda.reset_peak_memory_stats(i)
    ids = torch.randint(10, min(plan.inventory.vocab_size, 30000), (batch, context - max_new_tokens))
    first = next(m.parameters()).device
    t0 = time.perf_counter()
    with torch.inference_mode():
        m.generate(input_ids=ids.to(first), attention_mask=torch.ones_like(ids).to(first),
                   max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens, do_sample=False, pad_token_id=0)
    torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    peaks = {i: torch.cuda.max_memory_reserved(i) for i in range(torch.cuda.device_count())}
    t1 = time.perf_counter()
    with torch.inference_mode():  # the prompt's prefill alone, to leave the decode time
        m(input_ids=ids.to(first), attention_mask=torch.ones_like(ids).to(first), logits_to_keep=1, use_cache=False)
    torch.cuda.synchronize()
    decode_s = dt - (time.perf_counter() - t1)
    checks = []
    for s in plan.decision.placement:
        if s.device == "cpu":
            continue
        i = s.device
        context_bytes = base[i][1] - base[i][0]  # used before loading: other processes and our context
        measured_peak = context_bytes + peaks[i]
        checks.append(DeviceCheck(f"cuda:{i}", s.weights_bytes, m.fitplan.measured_weights.get(f"cuda:{i}", 0),
                                  s.total_bytes, measured_peak))
    gen = plan.generation
    setup = "plain generate()" if gen is None or not gen.static else (
        f"static cache {gen.max_cache_len} x {gen.batch}" + (", compiled decode" if gen.compile else ""))
    speed = plan.decision.speed
    return VerifyReport(plan.summary_line(), tuple(checks), dt,
                        batch * max_new_tokens / decode_s if decode_s > 0 else None,
                        speed.tokens_per_s if speed else None, setup, m.fitplan.warmup_s)
