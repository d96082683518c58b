"""Free memory is re-read just before loading: if another process took it, re-plan or stop."""
from __future__ import annotations

import dataclasses

import pytest

from fitplan.runtime import load as loader
from fitplan.options import PlanOptions
from fitplan.errors import DoesNotFitError
from fitplan.hardware.machine import GPU, Hardware
from fitplan.model.build import build_inventory
from fitplan.planning.plan import Plan
from fitplan.planning.policy import choose
from fitplan.planning.workload import workload_of
from tiny_models import config_dict

G = 1 << 30


@pytest.fixture(scope="module")
def inv():
    return build_inventory(config_dict("llama-gqa"), model_id="tiny")


def _plan(inv, free):
    hw = Hardware((GPU(0, "A", 24 * G, int(free), (8, 9)),), 64 * G, "probe")
    opts = PlanOptions.from_values(context=1024)
    work = workload_of(opts, inv)
    return Plan("tiny", None, "local", inv, hw, opts, work, choose(inv, hw, opts, work))


def test_unchanged_memory_keeps_the_plan(inv, monkeypatch):
    plan = _plan(inv, 20 * G)
    monkeypatch.setattr("fitplan.hardware.probe.probe", lambda: plan.hardware)
    assert loader._recheck(plan, replan=lambda hw: pytest.fail("must not re-plan")) is plan


def test_memory_taken_since_planning_re_plans(inv, monkeypatch):
    plan = _plan(inv, 20 * G)
    need = plan.decision.placement[0].total_bytes
    now = dataclasses.replace(plan.hardware, gpus=(dataclasses.replace(plan.hardware.gpus[0], free_bytes=need - 1),))
    monkeypatch.setattr("fitplan.hardware.probe.probe", lambda: now)
    seen = []

    def replan(hw):
        seen.append(hw)
        return _plan(inv, hw.gpus[0].free_bytes + 4 * G)

    new = loader._recheck(plan, replan)
    assert seen == [now] and new is not plan and new.fits


def test_memory_gone_stops_before_loading(inv, monkeypatch):
    plan = _plan(inv, 20 * G)
    now = dataclasses.replace(plan.hardware, gpus=(dataclasses.replace(plan.hardware.gpus[0], free_bytes=1),))
    monkeypatch.setattr("fitplan.hardware.probe.probe", lambda: now)
    with pytest.raises(DoesNotFitError, match="free GPU memory dropped since planning"):
        loader._recheck(plan, lambda hw: _plan(inv, 1))


def test_what_if_hardware_is_not_rechecked(inv):
    plan = _plan(inv, 20 * G)
    plan = dataclasses.replace(plan, hardware=dataclasses.replace(plan.hardware, source="catalogue"))
    assert loader._recheck(plan, replan=lambda hw: pytest.fail("must not re-plan")) is plan
