"""The CUDA allocator a plan budgets (issue 19, item 4): fitplan.load() turns on expandable segments
before the weights are allocated, respects a user's own allocator settings, and the estimator plans
the reserve of the allocator the load runs under."""
from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

from fitplan.hardware.machine import GPU, Hardware, allocator_planned
from fitplan.model.build import build_inventory
from fitplan.options import PlanOptions
from fitplan import calibration as C
from fitplan.planning.estimate import Workload, estimate, overhead_bytes
from fitplan.planning.plan import Plan
from fitplan.planning.policy import choose
from fitplan.planning.workload import workload_of
from fitplan.runtime import load as loader
from tiny_models import config_dict

G = 1 << 30
RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"


@pytest.mark.parametrize("environ,planned", [
    ({}, "expandable"),  # nothing of the user's: load() sets expandable segments up
    ({"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"}, "expandable"),
    ({"PYTORCH_CUDA_ALLOC_CONF": "max_split_size_mb:512, expandable_segments:true"}, "expandable"),
    ({"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:False"}, "caching"),
    ({"PYTORCH_CUDA_ALLOC_CONF": "max_split_size_mb:512"}, "caching"),  # the user's own, default segments
    ({"PYTORCH_CUDA_ALLOC_CONF": "backend:cudaMallocAsync"}, "caching"),
    ({"PYTORCH_ALLOC_CONF": "expandable_segments:False", "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"},
     "caching"),  # torch reads PYTORCH_ALLOC_CONF first
    ({"PYTORCH_CUDA_ALLOC_CONF": "  "}, "expandable"),
])
def test_the_allocator_planned_follows_the_user_s_settings(environ, planned):
    assert allocator_planned(environ) == planned


def test_the_expandable_reserve_is_the_measured_one_and_smaller_than_the_default():
    dyn = 10 * G
    exp = overhead_bytes(dyn, "cuda", allocator="expandable")
    assert exp == C.CUDA_CONTEXT_BYTES + C.EXPANDABLE_RESERVE_FIXED_BYTES + int(C.EXPANDABLE_RESERVE_FRACTION * dyn)
    # the load's fragmentation stays reserved with default segments only
    caching = overhead_bytes(dyn, "cuda", fragmentation=5 * G, allocator="caching")
    assert caching == C.CUDA_CONTEXT_BYTES + 5 * G + C.ALLOCATOR_RESERVE_FIXED_BYTES
    assert overhead_bytes(dyn, "cuda", fragmentation=5 * G, allocator="expandable") == exp < caching
    assert overhead_bytes(dyn, "cpu", allocator="expandable") == 0
    with pytest.raises(ValueError):
        overhead_bytes(dyn, "cuda", allocator="cudaMallocAsync")


@pytest.mark.slow
def test_plans_cover_every_measured_h200_peak_within_the_goals(tmp_path, monkeypatch):
    """Each H200 row ran through fitplan.load() with expandable segments at headroom 0 (free memory
    held at the plan's own total + 1%), on transformers 5.17 and 5.25; from the third run on with the
    generation setup load() applies (a static cache and a compiled decode for bf16). Re-planned with
    today's estimator on the transformers that measured them (a model can build otherwise on another
    release: Gemma 2 runs eager attention on 5.25), every plan must stay at or above the row's NVML
    peak (never under), at most +8% above it, and +4% above it at the median: the goals of issue 19.
    A reserve or activation term that drifts either way fails here."""
    import sys

    from fitplan.model import hf

    major, minor = (int(x) for x in hf.version().split(".")[:2])
    if (major, minor) not in ((5, 17), (5, 25)):
        pytest.skip(f"the H200 rows were measured with transformers 5.17 and 5.25, not {hf.version()}")
    monkeypatch.setenv("FITPLAN_CACHE", str(tmp_path))
    sys.path.insert(0, str(RESULTS.parent))
    from replan import read_rows, replan

    rows = read_rows(sorted(RESULTS.glob("tight-h200*.jsonl")))
    out = [o for o in replan(rows) if o["ran_with"] == "expandable"]
    assert len(out) >= 10, "the measured H200 rows of this transformers are missing"
    margins = [(o["plan"] - o["peak"]) / o["peak"] for o in out]
    assert min(margins) >= 0, f"a plan fell below its measured peak: {min(margins):+.1%}"
    assert max(margins) <= 0.08, f"worst margin {max(margins):+.1%} is above +8%"
    assert statistics.median(margins) <= 0.04, f"median margin {statistics.median(margins):+.1%} is above +4%"


@pytest.fixture(scope="module")
def inv():
    return build_inventory(config_dict("llama-gqa"), model_id="tiny")


def _plan(inv, allocator="expandable"):
    hw = Hardware((GPU(0, "A", 24 * G, 20 * G, (8, 9)),), 64 * G, "probe", allocator=allocator)
    opts = PlanOptions.from_values(context=1024)
    work = workload_of(opts, inv)
    return Plan("tiny", None, "local", inv, hw, opts, work, choose(inv, hw, opts, work))


def test_plans_budget_the_reserve_of_their_allocator(inv):
    exp, caching = _plan(inv), _plan(inv, "caching")
    e, c = exp.decision.estimate, caching.decision.estimate
    assert e.weights_bytes == c.weights_bytes and e.overhead_bytes < c.overhead_bytes
    from fitplan.planning.estimate import sizes

    assert e == sizes(inv, _get(exp.precision), Workload(1024, 1), e.compute_dtype, allocator="expandable",
                      generation=exp.decision.generation).estimate()


def _get(name):
    from fitplan.vocab.precision import get

    return get(name)


@pytest.fixture
def restore_allocator():
    import torch

    yield torch
    torch._C._accelerator_setAllocatorSettings("expandable_segments:False")  # torch's default


def test_load_turns_expandable_segments_on_through_torch(inv, restore_allocator):
    torch = restore_allocator
    torch._C._accelerator_setAllocatorSettings("expandable_segments:False")
    said = loader.configure_allocator(_plan(inv), environ={})
    assert "expandable_segments:True" in torch._C._accelerator_getAllocatorSettings()
    assert said.startswith("allocator: expandable segments turned on")


def test_a_user_s_own_allocator_settings_are_left_alone(inv, restore_allocator):
    torch = restore_allocator
    torch._C._accelerator_setAllocatorSettings("expandable_segments:False")
    env = {"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:False"}
    said = loader.configure_allocator(_plan(inv, allocator_planned(env)), environ=env)
    assert "expandable_segments:True" not in torch._C._accelerator_getAllocatorSettings()
    assert "PYTORCH_CUDA_ALLOC_CONF='expandable_segments:False' is kept" in said
    assert "torch default segments" in said


def test_a_cpu_plan_leaves_the_allocator_alone(inv, restore_allocator):
    torch = restore_allocator
    torch._C._accelerator_setAllocatorSettings("expandable_segments:False")
    hw = Hardware((), 64 * G, "probe")
    opts = PlanOptions.from_values(context=1024)
    work = workload_of(opts, inv)
    plan = Plan("tiny", None, "local", inv, hw, opts, work, choose(inv, hw, opts, work))
    assert loader.configure_allocator(plan, environ={}) == ""
    assert "expandable_segments:True" not in torch._C._accelerator_getAllocatorSettings()


def test_load_sets_the_allocator_before_from_pretrained(tmp_path, monkeypatch, restore_allocator):
    """load() for an emulated GPU: the allocator settings torch holds when from_pretrained is called
    (the first weight allocation) already say expandable segments; the load itself cannot run here."""
    import transformers

    import fitplan
    from tiny_models import save_tiny

    torch = restore_allocator
    torch._C._accelerator_setAllocatorSettings("expandable_segments:False")
    monkeypatch.delenv("PYTORCH_CUDA_ALLOC_CONF", raising=False)
    monkeypatch.delenv("PYTORCH_ALLOC_CONF", raising=False)
    monkeypatch.setenv("FITPLAN_CACHE", str(tmp_path / "cache"))
    path = str(save_tiny("llama-gqa", tmp_path / "m"))
    seen = {}

    def at_load(*args, **kwargs):
        seen["settings"] = torch._C._accelerator_getAllocatorSettings()
        raise RuntimeError("stop before allocating")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", at_load)
    hw = Hardware((GPU(0, "A", 24 * G, 20 * G, (8, 9)),), 64 * G, "catalogue")
    with pytest.raises(RuntimeError, match="stop before allocating"):
        fitplan.load(path, hardware=hw, tokenizer=False, context=256)
    assert "expandable_segments:True" in seen["settings"]


def test_the_printed_snippet_sets_the_allocator_the_plan_budgets(inv):
    from fitplan.render import _kwargs_code

    assert any("expandable_segments:True" in line for line in _kwargs_code(_plan(inv)))
    assert not any("expandable_segments" in line for line in _kwargs_code(_plan(inv, "caching")))


def test_an_unknown_allocator_is_refused_in_one_line(inv):
    with pytest.raises(ValueError, match="allocator must be one of"):
        estimate(inv, _get("bf16"), Workload(64, 1), "bfloat16", allocator="async")
