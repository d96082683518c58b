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
    m = load(model, tokenizer=False, **options)
    plan = m.fitplan.plan
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
    checks = []
    for s in plan.decision.placement:
        if s.device == "cpu":
            continue
        i = s.device
        context_bytes = base[i][1] - base[i][0]  # used before loading: other processes and our context
        measured_peak = context_bytes + torch.cuda.max_memory_reserved(i)
        checks.append(DeviceCheck(f"cuda:{i}", s.weights_bytes, m.fitplan.measured_weights.get(f"cuda:{i}", 0),
                                  s.total_bytes, measured_peak))
    return VerifyReport(plan.summary_line(), tuple(checks), dt)
