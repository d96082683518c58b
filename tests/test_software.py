"""Plans for the target: packages that matter only where the model loads (triton and `kernels` for mxfp4)
come from the target's declared software (`software:`, hardware/software.py), with documented defaults
for a catalogue GPU, never from the machine the plan is typed on; a plan for this machine (the probe)
reads them here. A `--gpu` plan equals the plan made on that GPU with the same software."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner

import fitplan
from fitplan.cli.main import main
from fitplan.hardware import software
from fitplan.hardware.catalogue import find_gpu, hardware_from_file, hardware_from_gpu_flag
from fitplan.hardware.machine import Hardware
from fitplan.model import hf
from fitplan.versions import installed

ROOT = Path(__file__).resolve().parents[1]
G = 1 << 30
GPT_OSS = "openai/gpt-oss-20b"


def _rows(plan):
    return (plan.precision, plan.fits, [(d.precision, d.fits, d.estimate.total_bytes, d.rejected_because)
                                        for d in plan.choice.decisions])


def _on_the_gpu(card: str, monkeypatch, *, triton: bool, kernels: bool):
    """The plan made on that card itself: the probe's Hardware (software None: read here), with this
    environment made to have `triton`/`kernels` as the target would."""
    monkeypatch.setattr(hf, "mxfp4_kernels", lambda: (triton, kernels))
    probed = Hardware(gpus=(find_gpu(card).to_gpu(0),), cpu_ram_bytes=64 * G, source="probe")
    return fitplan.plan(GPT_OSS, hardware=probed)


@pytest.mark.parametrize("card", ["rtx4090", "h100"])
def test_a_gpu_plan_made_here_equals_the_plan_made_on_that_gpu(card, monkeypatch, tmp_path):
    # the planning box lacks triton and kernels: that must not matter for a plan for another machine
    monkeypatch.setattr(hf, "mxfp4_kernels", lambda: (False, False))
    f = tmp_path / "hw.yaml"
    f.write_text(f"gpus: [{card}]\ncpu_ram: 64GiB\nsoftware: {{triton: true, kernels: true}}\n")
    declared = fitplan.plan(GPT_OSS, hardware=str(f))
    assert declared.hardware.software.declared == ("triton", "kernels")
    catalogue = fitplan.plan(GPT_OSS, hardware=replace(hardware_from_gpu_flag(card, 64 * G)))
    defaults = software.default_software()

    there = _on_the_gpu(card, monkeypatch, triton=True, kernels=True)
    assert _rows(declared) == _rows(there)
    assert declared.choice.decisions[0].precision == "mxfp4"
    assert "missing" not in (declared.choice.decisions[0].rejected_because or "")
    there_default = _on_the_gpu(card, monkeypatch, triton=defaults.triton, kernels=defaults.kernels)
    assert _rows(catalogue) == _rows(there_default)
    if card == "h100":  # 80 GB: mxfp4 is the plan wherever the kernels are there
        assert declared.precision == "mxfp4"


def test_without_kernels_declared_mxfp4_is_dequantized_and_the_reason_names_the_target(monkeypatch, tmp_path):
    monkeypatch.setattr(hf, "mxfp4_kernels", lambda: (True, True))  # here: all present; not asked
    f = tmp_path / "hw.yaml"
    f.write_text("gpus: [h100]\ncpu_ram: 64GiB\nsoftware: {kernels: false}\n")
    p = fitplan.plan(GPT_OSS, hardware=str(f))
    stored = p.choice.decisions[0]
    assert stored.precision == "mxfp4" and "missing on the target: a kernels release" in stored.rejected_because
    assert p.precision == "bf16"
    assert p.hardware.software.triton is software.default_software().triton  # not declared: the default


def test_defaults_follow_the_transformers_the_plan_is_made_with():
    v = installed("transformers")
    from packaging.version import Version

    d = software.default_software()
    assert d.triton is True and d.declared == ()
    assert d.kernels is (Version(v).release[:2] >= software.KERNELS_DEPENDENCY_SINCE)


def test_the_plan_states_what_it_assumes(tmp_path):
    hw = hardware_from_gpu_flag("rtx4090", 64 * G)
    note = hw.notes[-1]
    assert note.startswith("target software, not looked up on this machine: triton installed (default)")
    assert "kernels" in note and "software:" in note
    f = tmp_path / "hw.yaml"
    f.write_text("gpus: [rtx4090]\nsoftware: {triton: false}\n")
    assert "triton not installed (declared)" in hardware_from_file(f, cpu_ram_bytes=G).notes[-1]
    data = json.loads(CliRunner().invoke(main, ["check", GPT_OSS, "--hardware", str(f), "--json"]).output)
    assert data["hardware"]["software"]["triton"] is False and data["hardware"]["software"]["declared"] == ["triton"]
    assert any(n.startswith("target software") for n in data["notes"])


@pytest.mark.parametrize("body, words", [
    ("software: {tritn: true}", "did you mean 'triton'"),
    ("software: {triton: 3.4}", "software.triton must be true or false"),
    ("software: [triton]", "software"),
])
def test_bad_software_is_one_line_exit_2(tmp_path, body, words):
    f = tmp_path / "hw.yaml"
    f.write_text(f"gpus: [rtx4090]\n{body}\n")
    r = CliRunner().invoke(main, ["check", GPT_OSS, "--hardware", str(f)])
    assert r.exit_code == 2, r.output
    assert words in r.output and "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1


def test_a_profile_declares_the_target_software_too(tmp_path):
    from fitplan.profiles.schema import json_schema
    from fitplan.profiles.settings import load_profile

    schema = json_schema()["properties"]["hardware"]["anyOf"][1]["properties"]["software"]
    assert set(schema["properties"]) == set(software.KEYS)
    p = tmp_path / "p.yaml"
    p.write_text(f"model: {GPT_OSS}\nhardware:\n  gpus: [h100]\n  software: {{kernels: false}}\n")
    hw = load_profile(p).hardware.resolve(str(p))
    assert hw.software.kernels is False and hw.software.declared == ("kernels",)


def test_docs_hold_the_table_the_fields_make():
    assert software.docs_table() in (ROOT / "docs" / "hardware.md").read_text()
