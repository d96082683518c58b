"""Deployment profiles, locks and atomic writes, through the real CLI where users meet them.

Everything plans for catalogue models on described GPUs: no GPU, NVML or Hub needed. The model
inventory cache is shared by the whole session (building one costs seconds, reading it milliseconds).
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from fitplan.hardware.catalogue import hardware_from_file, hardware_from_gpu_flag
from fitplan.cli.main import main
from fitplan.errors import DoesNotFitError, HardwareError, InputError
from fitplan.hardware.machine import GPU, Hardware
from fitplan.pipeline import plan_for_load, plan_profile
from fitplan.profiles.lock import lock_path_for, read_lock
from fitplan.profiles.settings import load_profile, merge_settings, profile_from_text
from fitplan.profiles.schema import ENV_VARS, SCHEMA, schema_text

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "profiles" / "examples").glob("*.yaml"))
BAD = sorted((ROOT / "tests" / "profiles_bad").glob("*.yaml"))
G = 1 << 30
SMALL = "meta-llama/Llama-3.2-1B"  # catalogue model, quick to inventory

PROFILE_8B = """\
# deploy/fitplan.yaml
model: meta-llama/Llama-3.1-8B-Instruct
revision: main
workload: {context: 8192, batch: 1}
hardware: {gpus: [rtx4090]}
constraints:
  min_precision: nf4    # never go below this
  prefer: quality
  headroom: 10%
  offload: false
"""

PROFILE_SPLIT = f"""\
model: {SMALL}
workload: {{context: 2048, batch: 1}}
hardware:
  gpus:
    - {{name: Test GPU, memory: 3GiB, compute_capability: "8.6", count: 2}}
  cpu_ram: 32GiB
constraints: {{precision: bf16}}
"""


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("fitplan-cache")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, cache_dir):
    for key in list(os.environ):
        if key.startswith("FITPLAN_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("FITPLAN_CACHE", str(cache_dir))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def cli(*args, env=None):
    result = CliRunner().invoke(main, [str(a) for a in args], env=env)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


def one_error_line(result) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("fitplan: error: ")
    return lines[0]


def write(tmp_path, text, name="fitplan.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def rtx4090() -> Hardware:
    return hardware_from_gpu_flag("rtx4090", 64 * G)


# -- validation: the corpus of bad profiles ----------------------------------------------------------

def _expectation(path: Path) -> tuple[str | None, str]:
    first = path.read_bytes().split(b"\n", 1)[0].decode()
    m = re.match(r"# expect: (\d+|-) \| (.+)$", first)
    assert m, f"{path.name}: first line must be '# expect: LINE | text'"
    return (None if m.group(1) == "-" else m.group(1)), m.group(2)


@pytest.mark.parametrize("path", BAD, ids=[p.stem for p in BAD])
def test_bad_profile_is_one_line_with_file_line_and_reason(path):
    line, text = _expectation(path)
    where = f"{path}:{line}: " if line else f"{path}: "
    for args in (["check", "--profile", path], ["profile", "validate", path]):
        msg = one_error_line(cli(*args))
        assert msg.startswith(f"fitplan: error: {where}"), msg
        assert text in msg, msg


def test_python_tags_never_run(tmp_path):
    marker = tmp_path / "owned"
    path = write(tmp_path, f'model: !!python/object/apply:os.system ["touch {marker}"]\n')
    assert "unsupported YAML tag" in one_error_line(cli("check", "--profile", path))
    assert not marker.exists()


def test_model_may_come_from_flag_or_environment_but_must_come(tmp_path):
    path = write(tmp_path, "workload: {context: 2048}\nhardware: {gpus: [rtx4090]}\n")
    assert cli("profile", "validate", path).exit_code == 0
    msg = one_error_line(cli("check", "--profile", path))
    assert f"{path}: no model" in msg and "FITPLAN_MODEL" in msg
    by_env = cli("check", "--profile", path, "--json", env={"FITPLAN_MODEL": SMALL})
    by_flag = cli("check", SMALL, "--profile", path, "--json")
    assert by_env.exit_code == by_flag.exit_code == 0
    assert json.loads(by_env.stdout)["model"]["id"] == json.loads(by_flag.stdout)["model"]["id"] == SMALL


# -- what a valid profile means --------------------------------------------------------------------

def test_profile_values_units_and_hardware_forms(tmp_path):
    path = write(tmp_path, """\
model: Qwen/Qwen2.5-14B
revision: v1.0
workload: {context: 16384, batch: 2}
hardware:
  gpus:
    - 2x rtx3060
    - {gpu: rtx4090, free: 20000MiB}
    - {name: Acme 24, memory: 24GB, compute_capability: "8.6"}
    - {name: Acme 24k, memory: 24000MiB, compute_capability: 8.9, count: 2}
  cpu_ram: 64GiB
constraints: {min_precision: nf4, prefer: memory, headroom: 1.5GiB, offload: true}
""")
    p = load_profile(path)
    assert (p.model, p.revision, p.workload.context, p.workload.batch) == ("Qwen/Qwen2.5-14B", "v1.0", 16384, 2)
    c = p.constraints
    assert (c.precision, c.min_precision, c.prefer, c.headroom, c.offload) == (None, "nf4", "memory", 3 * G // 2, True)
    gpus = p.hardware.gpus
    assert [g.index for g in gpus] == [0, 1, 2, 3, 4, 5]
    assert [g.name for g in gpus[:2]] == ["NVIDIA GeForce RTX 3060"] * 2
    assert gpus[2].free_bytes == 20000 << 20 and gpus[2].total_bytes > gpus[2].free_bytes
    assert gpus[3].total_bytes == 24 * 10**9 and gpus[3].compute_capability == (8, 6)
    assert gpus[4].total_bytes == gpus[5].total_bytes == 24000 << 20 and gpus[5].compute_capability == (8, 9)
    assert p.hardware.cpu_ram_bytes == 64 * G and not p.hardware.auto
    for text, share in (("10%", 0.10), ("0.25", 0.25), ("0", 0.0)):
        assert profile_from_text(f"constraints: {{headroom: {text}}}\n").constraints.headroom == share
    assert profile_from_text("hardware: auto\n").hardware.auto


def test_profile_hardware_reads_like_a_hardware_file(tmp_path):
    """One schema: the same `gpus:`/`cpu_ram:` mapping means the same GPUs in a profile and in --hardware."""
    section = ("gpus:\n  - 2x a100-80gb\n  - {gpu: l4, free: 20GiB}\n"
               "  - {name: Acme X, memory: 48GiB, compute_capability: \"9.0\", bandwidth_gbs: 3000}\ncpu_ram: 256GiB\n"
               "nodes: 2\n")
    hw_file = write(tmp_path, section, "hw.yaml")
    profile = write(tmp_path, "hardware:\n" + "".join("  " + line + "\n" for line in section.splitlines()))
    from_file = hardware_from_file(hw_file)
    from_profile = load_profile(profile).hardware.resolve(str(profile))
    assert from_profile.gpus == from_file.gpus and from_profile.cpu_ram_bytes == from_file.cpu_ram_bytes
    assert from_profile.gpus_per_node == from_file.gpus_per_node == 2 and "2 nodes of 2 GPUs" in from_profile.notes


@pytest.mark.parametrize("nodes", [3, 0, True, "two"])
def test_bad_nodes_is_the_same_line_in_a_profile_and_a_hardware_file(tmp_path, nodes):
    """`nodes:` is read by the hardware file's reader in both places; the profile names it `hardware.nodes`."""
    hw_file = write(tmp_path, f"gpus: [4x h100]\nnodes: {nodes}\n", "hw.yaml")
    profile = write(tmp_path, f"hardware:\n  gpus: [4x h100]\n  nodes: {nodes}\n")
    with pytest.raises(InputError) as in_file:
        hardware_from_file(hw_file)
    with pytest.raises(InputError) as in_profile:
        load_profile(profile)
    assert f"{hw_file}:2: nodes must be a whole number of machines that divides the 4 GPUs" in str(in_file.value)
    assert f"{profile}:3: hardware.nodes must be a whole number of machines that divides the 4 GPUs" in \
        str(in_profile.value)


def test_digest_ignores_comments_and_layout_but_not_values():
    a = profile_from_text(PROFILE_8B)
    b = profile_from_text("# reformatted\n" + PROFILE_8B.replace("workload: {context: 8192, batch: 1}",
                                                                   "workload:\n  batch: 1\n  context: 8192  # 8k"))
    c = profile_from_text(PROFILE_8B.replace("batch: 1", "batch: 2"))
    assert a.digest == b.digest != c.digest


# -- the JSON Schema --------------------------------------------------------------------------------

def test_shipped_schema_is_the_generated_one():
    shipped = (ROOT / "profiles" / "fitplan-profile.schema.json").read_text()
    assert shipped == schema_text(), "run: fitplan profile schema --output profiles/fitplan-profile.schema.json --force"
    jsonschema = pytest.importorskip("jsonschema")  # a CPU-test extra; GPU images may lack it
    jsonschema.Draft202012Validator.check_schema(json.loads(shipped))
    assert cli("profile", "schema").stdout == shipped


@pytest.mark.parametrize("key, value", [
    *[("headroom", v) for v in ("10%", "0%", "99.5%", "100%", "150%", "-5%", "1.5GiB", "2048MiB", "1GB",
                                "0.1", "0.", "1073741824", "lots", 0, 0.1, 0.99, 1, 2, 1.5, True)],
    *[("context", v) for v in (1, 8192, 1 << 24, (1 << 24) + 1, 0, -1, "8k", 1.5, True)],
    *[("prefer", v) for v in ("quality", "memory", "speed", "Speed", "fast", 1)],
    *[("min_precision", v) for v in ("nf4-dq", "int8", "INT8", "int4", 8)],
    *[("offload", v) for v in (True, False, "no", 0)],
])
def test_schema_and_validator_agree(key, value):
    section = "workload" if key == "context" else "constraints"
    by_schema, by_fitplan = _both_judge({"model": SMALL, section: {key: value}})
    assert by_schema == by_fitplan


def _both_judge(doc: dict) -> tuple[bool, bool]:
    """(the shipped JSON Schema accepts `doc`, fitplan's own validator accepts it)."""
    jsonschema = pytest.importorskip("jsonschema")
    by_schema = jsonschema.Draft202012Validator(json.loads(schema_text())).is_valid(doc)
    try:
        profile_from_text(yaml.safe_dump(doc))
    except InputError:
        return by_schema, False
    return by_schema, True


def test_schema_hardware_keys_are_the_hardware_file_keys():
    from fitplan.hardware.catalogue import HARDWARE_FILE_KEYS

    hardware = json.loads(schema_text())["properties"]["hardware"]["anyOf"][1]
    assert tuple(hardware["properties"]) == HARDWARE_FILE_KEYS and "nodes" in HARDWARE_FILE_KEYS


@pytest.mark.parametrize("nodes", [1, 2, 4, 0, -1, 1.5, "2", True])
def test_schema_and_validator_agree_on_nodes(nodes):
    by_schema, by_fitplan = _both_judge({"model": SMALL, "hardware": {"gpus": ["4x h100"], "nodes": nodes}})
    assert by_schema == by_fitplan == (nodes in (1, 2, 4) and nodes is not True)


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_shipped_example_validates_and_fits(path):
    pytest.importorskip("jsonschema").validate(yaml.safe_load(path.read_text()), json.loads(schema_text()))
    assert cli("profile", "validate", path).exit_code == 0
    result = cli("check", "--profile", path)
    assert result.exit_code == 0, result.output
    assert "YES <-" in result.stdout


def test_examples_cover_the_promised_deployments():
    by_name = {p.name: load_profile(p) for p in EXAMPLES}
    totals = {n: [g.total_bytes / G for g in p.hardware.gpus] for n, p in by_name.items()}
    assert any(len(t) == 1 and 11 <= t[0] <= 13 for t in totals.values())  # 7-8B on 12 GB
    assert any(len(t) == 1 and 22 <= t[0] <= 25 and "8B" in by_name[n].model for n, t in totals.items())
    assert any("14B" in p.model or "13b" in p.model for p in by_name.values())
    assert any(len(t) == 2 and all(x >= 79 for x in t) and "70B" in by_name[n].model for n, t in totals.items())
    assert any(t == [] for t in totals.values())  # CPU only


# -- precedence: flags > environment > profile > defaults ------------------------------------------

def plan_json(*args, env=None) -> dict:
    result = cli("check", *args, "--json", env=env)
    assert result.exit_code in (0, 1), result.output
    return json.loads(result.stdout)


def test_precedence_flags_over_environment_over_profile(tmp_path):
    path = write(tmp_path, f"model: {SMALL}\nworkload: {{context: 8192, batch: 2}}\nhardware: {{gpus: [rtx4090]}}\n"
                           "constraints: {prefer: quality, headroom: 20%}\n")
    d = plan_json("--profile", path)
    assert (d["workload"], d["options"]["prefer"], d["options"]["headroom"]) == (
        {"context": 8192, "batch": 2, "images": 0, "tokens": 8192}, "quality", 0.2)
    assert d["options"]["offload"] is False and d["hardware"]["gpus"][0]["name"] == "NVIDIA GeForce RTX 4090"
    env = {"FITPLAN_CONTEXT": "2048", "FITPLAN_PREFER": "memory", "FITPLAN_GPU": "a10g", "FITPLAN_OFFLOAD": "yes"}
    d = plan_json("--profile", path, env=env)
    assert (d["workload"], d["options"]["prefer"], d["options"]["offload"]) == (
        {"context": 2048, "batch": 2, "images": 0, "tokens": 2048}, "memory", True)
    assert d["hardware"]["gpus"][0]["name"] == "NVIDIA A10G"
    d = plan_json("--profile", path, "--context", "1024", "--prefer", "speed", "--gpu", "t4", "--no-offload", env=env)
    assert (d["workload"]["context"], d["options"]["prefer"], d["options"]["offload"]) == (1024, "speed", False)
    assert d["hardware"]["gpus"][0]["name"] == "Tesla T4"
    d = plan_json("--profile", path, env={"FITPLAN_CONTEXT": "", "FITPLAN_HEADROOM": "1GiB"})
    assert d["workload"]["context"] == 8192 and d["options"]["headroom"] == G  # empty variable counts as unset


def test_every_setting_follows_the_precedence():
    prof = profile_from_text(f"model: {SMALL}\nrevision: main\nworkload: {{context: 100, batch: 3}}\n"
                             "constraints: {min_precision: int8, prefer: memory, headroom: 5%, offload: true, "
                             "precision: bf16}\n", "p.yaml")

    def resolved(s):
        o = s.options
        return (s.model, s.revision, o.context, o.batch, o.precision, o.min_precision, o.prefer, o.headroom, o.offload)

    from_profile = merge_settings(prof, model=None, overrides={}, env={})
    assert resolved(from_profile) == (SMALL, "main", 100, 3, "bf16", "int8", "memory", 0.05, True)
    env = {"model": "x/env", "revision": "dev", "context": 200, "batch": 4, "precision": "int8",
           "min_precision": "nf4", "prefer": "speed", "headroom": 0.2, "offload": False}
    from_env = merge_settings(prof, model=None, overrides={}, env=env)
    assert resolved(from_env) == ("x/env", "dev", 200, 4, "int8", "nf4", "speed", 0.2, False)
    flags = {"revision": "v2", "context": 300, "batch": 5, "precision": "nf4", "min_precision": "fp4",
             "prefer": "quality", "headroom": "1GiB", "offload": True}
    from_flags = merge_settings(prof, model="x/flag", overrides=flags, env=env)
    assert resolved(from_flags) == ("x/flag", "v2", 300, 5, "nf4", "fp4", "quality", G, True)
    defaults = merge_settings(profile_from_text("{}"), model=SMALL, overrides={}, env={})
    assert resolved(defaults)[2:] == (4096, 1, None, None, "quality", 0.1, False)
    assert [s.source_of("context") for s in (from_profile, from_env, from_flags, defaults)] == [
        "p.yaml", "FITPLAN_CONTEXT", "flag or keyword argument", "default"]


@pytest.mark.parametrize("var, value, text", [
    ("FITPLAN_CONTEXT", "8k", "must be a whole number"),
    ("FITPLAN_CONTEXT", "-1", "must be at least 1"),
    ("FITPLAN_BATCH", "0", "must be at least 1"),
    ("FITPLAN_PRECISION", "int3", "unknown precision 'int3'"),
    ("FITPLAN_MIN_PRECISION", "half", "unknown precision 'half'"),
    ("FITPLAN_PREFER", "fast", "unknown value 'fast'"),
    ("FITPLAN_HEADROOM", "150%", "between 0% and 100%"),
    ("FITPLAN_OFFLOAD", "maybe", "must be one of"),
    ("FITPLAN_GPU", "rtx9999", "unknown GPU 'rtx9999'"),
])
def test_invalid_environment_value_names_the_variable(tmp_path, var, value, text):
    path = write(tmp_path, PROFILE_8B)
    msg = one_error_line(cli("check", "--profile", path, env={var: value}))
    assert var in msg and text in msg


# -- the lock ---------------------------------------------------------------------------------------

def lock_data(path: Path) -> dict:
    return yaml.safe_load(lock_path_for(path).read_text())


def test_lock_round_trip_load_follows_the_lock(tmp_path):
    path = write(tmp_path, PROFILE_8B)
    result = cli("lock", path)
    assert result.exit_code == 0, result.output
    lock_file = tmp_path / "fitplan.lock.yaml"
    assert lock_path_for(path) == lock_file and lock_file.is_file()
    data = lock_data(path)
    checked = plan_json("--profile", path)
    precision = checked["plan"]["precision"]
    assert data["plan"]["precision"] == precision and data["plan"]["compute_dtype"] == "bfloat16"
    assert data["from_pretrained_kwargs"] == checked["plan"]["from_pretrained_kwargs"]
    chosen = next(e for e in checked["estimates"] if e["precision"] == precision)
    assert {k: chosen[k] for k in data["estimate"]} == data["estimate"]
    assert data["revision"] == "main" and data["workload"] == {"context": 8192, "batch": 1, "images": 0,
                                                                   "kv_type": "f16"}
    assert data["auto_class"] == "causal-lm"
    assert [g["name"] for g in data["hardware"]["gpus"]] == ["NVIDIA GeForce RTX 4090"]
    assert {"fitplan", "transformers", "bitsandbytes"} <= set(data["versions"])
    assert data["profile_sha256"] == load_profile(path).digest
    lock = read_lock(lock_file)
    assert (lock.precision, lock.device_map, lock.max_memory) == (precision, (("", 0),), None)
    loaded = plan_for_load(profile=path, hardware=rtx4090())
    assert loaded.pin is not None and loaded.precision == precision
    assert loaded.kwargs_as_data() == data["from_pretrained_kwargs"]
    assert "is stale" not in cli("check", "--profile", path).stdout


def test_locked_offload_limits_turn_on_fp32_cpu_offload(tmp_path):
    path = write(tmp_path, f"model: {SMALL}\nhardware: {{gpus: [rtx4090]}}\nconstraints: {{precision: int8}}\n")
    assert cli("lock", path).exit_code == 0
    loaded = plan_for_load(profile=path, hardware=rtx4090())
    assert loaded.quantization_kwargs() == {"load_in_8bit": True}
    offloading = replace(loaded, pin=replace(loaded.pin, device_map="auto", max_memory=((0, 20 * G), ("cpu", 30 * G))))
    assert offloading.kwargs_as_data()["max_memory"] == {"0": 20 * G, "cpu": 30 * G}
    assert offloading.quantization_kwargs() == {"load_in_8bit": True, "llm_int8_enable_fp32_cpu_offload": True}


def test_locked_split_keeps_the_locked_max_memory(tmp_path):
    path = write(tmp_path, PROFILE_SPLIT)
    assert cli("lock", path).exit_code == 0
    locked = lock_data(path)["plan"]["max_memory"]
    assert set(locked) == {0, 1}
    hw = load_profile(path).hardware.resolve(str(path))
    plan = plan_for_load(profile=path, hardware=hw)
    assert plan.device_map() == "auto" and plan.max_memory() == locked
    # Another headroom at load time would split differently; the lock keeps its split.
    unlocked = plan_profile(path, overrides={"hardware": hw}, environ={"FITPLAN_HEADROOM": "2%"})
    assert unlocked.max_memory() != locked
    held = plan_for_load(profile=path, hardware=hw, environ={"FITPLAN_HEADROOM": "2%"})
    assert held.max_memory() == locked
    # GPU 1 busy with something else: the locked placement no longer has room.
    need1 = next(d["total_bytes"] for d in lock_data(path)["plan"]["devices"] if d["device"] == 1)
    busy = Hardware((hw.gpus[0], GPU(1, "Test GPU", 3 * G, need1 - 1, (8, 6))), hw.cpu_ram_bytes, "probe")
    assert not plan_for_load(profile=path, hardware=busy).fits
    # Even where a plan without headroom would squeeze in, the locked split itself would not.
    with pytest.raises(DoesNotFitError, match="GPU 1 has .* free, the locked plan"):
        plan_for_load(profile=path, hardware=busy, environ={"FITPLAN_HEADROOM": "0%"})


@pytest.mark.parametrize("hw, text", [
    (hardware_from_gpu_flag("a10g", 64 * G), "GPU 0 is NVIDIA A10G, the lock has NVIDIA GeForce RTX 4090"),
    (hardware_from_gpu_flag("2xrtx4090", 64 * G), "the lock was made for 1 GPU, this machine has 2 GPUs"),
    (Hardware((), 64 * G, "probe"), "the lock was made for 1 GPU, this machine has no GPU"),
    (Hardware((GPU(0, "NVIDIA GeForce RTX 4090", 48 * G, 48 * G, (8, 9)),), 64 * G, "probe"),
     "has 48.00 GiB in total, the lock has 23.99 GiB"),
])
def test_load_refuses_gpus_that_left_the_lock(tmp_path, hw, text):
    path = write(tmp_path, PROFILE_8B)
    assert cli("lock", path).exit_code == 0
    with pytest.raises(HardwareError) as err:
        plan_for_load(profile=path, hardware=hw)
    assert text in str(err.value) and "fitplan lock --force" in str(err.value)


def test_same_card_without_vendor_prefix_still_matches(tmp_path):
    path = write(tmp_path, PROFILE_8B)
    assert cli("lock", path).exit_code == 0
    g = rtx4090().gpus[0]
    card = GPU(0, "GeForce RTX 4090", g.total_bytes, g.total_bytes - (200 << 20), (8, 9))
    old_driver = Hardware((card,), 64 * G, "probe")
    followed = plan_for_load(profile=path, hardware=old_driver)
    assert followed.pin is not None and followed.precision == read_lock(lock_path_for(path)).precision


def test_stale_lock_is_a_note_for_check_and_a_refusal_for_load(tmp_path):
    path = write(tmp_path, PROFILE_8B)
    assert cli("lock", path).exit_code == 0
    path.write_text("# a new comment changes nothing\n" + PROFILE_8B)
    assert "is stale" not in cli("check", "--profile", path).stdout
    plan_for_load(profile=path, hardware=rtx4090())
    path.write_text(PROFILE_8B.replace("batch: 1", "batch: 2"))
    result = cli("check", "--profile", path)
    assert result.exit_code == 0
    text = " ".join(result.stdout.split())  # notes wrap at 100 columns
    assert re.search(r"note: lock .*fitplan\.lock\.yaml is stale: .* changed since it was locked", text)
    with pytest.raises(InputError, match=r"changed since it was locked .*fitplan lock --force"):
        plan_for_load(profile=path, hardware=rtx4090())


def test_load_refuses_a_workload_or_precision_the_lock_did_not_plan(tmp_path):
    path = write(tmp_path, PROFILE_8B)
    assert cli("lock", path).exit_code == 0
    with pytest.raises(InputError, match="context 4096 \\(from FITPLAN_CONTEXT\\) differs from the locked 8192"):
        plan_for_load(profile=path, hardware=rtx4090(), environ={"FITPLAN_CONTEXT": "4096"})
    other = "fp4-dq" if read_lock(lock_path_for(path)).precision != "fp4-dq" else "nf4"
    with pytest.raises(InputError, match=rf"precision {other} \(from flag or keyword argument\) differs from"):
        plan_for_load(profile=path, hardware=rtx4090(), precision=other)


def test_fitplan_load_follows_the_lock_on_this_machine(tmp_path):
    """The real loader, end to end: lock on this machine (probed), load as locked, refuse once stale."""
    import fitplan
    from tiny_models import save_tiny

    model_dir = save_tiny("llama-gqa", tmp_path / "tiny")
    path = write(tmp_path, f"model: {model_dir}\nworkload: {{context: 256, batch: 1}}\nhardware: auto\n")
    assert cli("lock", path).exit_code == 0
    locked = lock_data(path)
    model = fitplan.load(profile=str(path), tokenizer=False)
    followed = model.fitplan.plan
    assert followed.pin is not None and followed.precision == locked["plan"]["precision"]
    assert followed.kwargs_as_data() == locked["from_pretrained_kwargs"]
    path.write_text(path.read_text().replace("256", "512"))
    with pytest.raises(InputError, match="changed since it was locked"):
        fitplan.load(profile=str(path), tokenizer=False)


def test_load_without_lock_plans_for_this_machine(tmp_path):
    path = write(tmp_path, PROFILE_8B)
    plan = plan_for_load(profile=path, hardware=hardware_from_gpu_flag("a100-80gb", 64 * G))
    assert plan.pin is None
    assert plan.hardware.gpus[0].name == "NVIDIA A100-SXM4-80GB" and plan.precision == "bf16"


def test_lock_needs_force_to_replace_and_is_not_written_when_nothing_fits(tmp_path):
    path = write(tmp_path, PROFILE_8B)
    assert cli("lock", path).exit_code == 0
    lock_file = lock_path_for(path)
    before = lock_file.read_text()
    path.write_text(PROFILE_8B.replace("batch: 1", "batch: 2"))
    msg = one_error_line(cli("lock", path))
    assert f"{lock_file} exists; use --force to overwrite" in msg
    assert lock_file.read_text() == before
    assert cli("lock", path, "--force").exit_code == 0
    assert lock_data(path)["workload"]["batch"] == 2
    other = tmp_path / "pinned.yaml"
    assert cli("lock", path, "--output", other).exit_code == 0 and read_lock(other).context == 8192

    too_big = PROFILE_8B.replace("rtx4090", "rtx3060").replace("min_precision: nf4", "min_precision: bf16")
    tight = write(tmp_path, too_big, "tight.yaml")
    result = cli("lock", tight)
    assert result.exit_code == 1 and "no lock written" in result.stderr
    assert not lock_path_for(tight).exists()
    # `lock` takes no option flags: what would fit is said in the profile's own keys
    assert "try: " in result.stderr and " --" not in result.stderr.split("try: ")[1]
    assert "'context: " in result.stderr or "'offload: true'" in result.stderr or "'min_precision:'" in result.stderr


def test_damaged_lock_is_refused_for_load_and_noted_by_check(tmp_path):
    path = write(tmp_path, PROFILE_8B)
    assert cli("lock", path).exit_code == 0
    lock_file = lock_path_for(path)
    text = lock_file.read_text()
    locked = yaml.safe_load(text)["plan"]["precision"]
    lock_file.write_text(text.replace(f"  precision: {locked}\n", "  precision: int9\n"))
    with pytest.raises(InputError, match=r"fitplan\.lock\.yaml:\d+: .*unknown precision 'int9'.*cannot be used"):
        plan_for_load(profile=path, hardware=rtx4090())
    assert "cannot be read" in " ".join(cli("check", "--profile", path).stdout.split())  # notes wrap


# -- profile init ----------------------------------------------------------------------------------

def test_init_prints_a_commented_profile_that_plans_the_same(tmp_path):
    result = cli("profile", "init", "meta-llama/Llama-3.1-8B-Instruct", "--gpu", "rtx4090", "--context", "8192",
                 "--min-precision", "int8")
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert text.startswith("#") and "the plan chose" not in text  # min_precision was given: written as given
    prof = profile_from_text(text)
    assert (prof.model, prof.workload.context, prof.workload.batch, prof.constraints.min_precision) == (
        "meta-llama/Llama-3.1-8B-Instruct", 8192, 1, "int8")
    assert [g.name for g in prof.hardware.gpus] == ["NVIDIA GeForce RTX 4090"]
    path = write(tmp_path, text)
    direct = plan_json("meta-llama/Llama-3.1-8B-Instruct", "--gpu", "rtx4090", "--context", "8192")
    via_profile = plan_json("--profile", path)
    assert via_profile["plan"]["from_pretrained_kwargs"] == direct["plan"]["from_pretrained_kwargs"]


def test_init_writes_files_atomically_and_only_with_force(tmp_path):
    out = tmp_path / "deploy" / "fitplan.yaml"
    out.parent.mkdir()
    args = ["profile", "init", SMALL, "--gpu", "2xa100-80gb", "--output", out]
    assert cli(*args).exit_code == 0
    prof = load_profile(out)
    assert len(prof.hardware.gpus) == 2 and "- 2x a100-80gb" in out.read_text()
    out.write_text("mine\n")
    assert f"{out} exists; use --force" in one_error_line(cli(*args))
    assert out.read_text() == "mine\n"
    assert cli(*args, "--force").exit_code == 0 and load_profile(out).model == SMALL
    assert sorted(p.name for p in out.parent.iterdir()) == ["fitplan.yaml"]  # no temp files left


def test_init_describes_cards_the_catalogue_does_not_know(tmp_path):
    hw = write(tmp_path, 'gpus: [{name: Acme X, memory: 40GiB, compute_capability: "9.0", free: 30GiB}]\n'
                         "cpu_ram: 128GiB\n", "hw.yaml")
    result = cli("profile", "init", SMALL, "--hardware", hw, "--offload")
    assert result.exit_code == 0, result.output
    prof = profile_from_text(result.stdout)
    assert prof.hardware.gpus == hardware_from_file(hw).gpus
    assert prof.hardware.cpu_ram_bytes == 128 * G and prof.constraints.offload is True


def test_init_of_a_plan_that_does_not_fit_still_writes_but_exits_1(tmp_path):
    result = cli("profile", "init", "meta-llama/Llama-3.1-70B-Instruct", "--gpu", "rtx3060")
    assert result.exit_code == 1 and "does not fit" in result.stderr
    assert profile_from_text(result.stdout).model == "meta-llama/Llama-3.1-70B-Instruct"


# -- atomic writes ----------------------------------------------------------------------------------

def test_write_atomic_never_overwrites_without_force(tmp_path):
    from fitplan.atomic import write_atomic

    target = tmp_path / "f.yaml"
    write_atomic(target, "one\n")
    with pytest.raises(InputError, match="exists; use force=True to overwrite") as err:
        write_atomic(target, "two\n")
    assert err.value.render("cli").endswith("exists; use --force to overwrite")  # what the CLI says
    assert target.read_text() == "one\n"
    write_atomic(target, "three\n", force=True)
    assert target.read_text() == "three\n"
    with pytest.raises(InputError, match="does not exist"):
        write_atomic(tmp_path / "missing" / "f.yaml", "x")
    assert [p.name for p in tmp_path.iterdir()] == ["f.yaml"]


def test_racing_writers_without_force_one_wins_whole(tmp_path):
    from fitplan.atomic import write_atomic

    target = tmp_path / "lock.yaml"
    texts = [f"writer: {i}\n" + f"{i}" * 200_000 + "\n" for i in range(8)]
    start, won, lost = threading.Barrier(len(texts)), [], []

    def go(text):
        start.wait()
        try:
            write_atomic(target, text)
            won.append(text)
        except InputError as err:
            lost.append(str(err))

    threads = [threading.Thread(target=go, args=(t,)) for t in texts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1 and len(lost) == len(texts) - 1
    assert all("exists; use force=True" in m for m in lost)
    assert target.read_text() == won[0]
    assert [p.name for p in tmp_path.iterdir()] == ["lock.yaml"]


def test_racing_processes_with_force_leave_one_whole_file(tmp_path):
    target = tmp_path / "lock.yaml"
    code = ("import sys; from fitplan.atomic import write_atomic\n"
            "i = int(sys.argv[1])\n"
            "for _ in range(20): write_atomic(sys.argv[2], f'writer: {i}\\n' + str(i) * 300000 + '\\n', force=True)\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-c", code, str(i), str(target)], env=env) for i in range(4)]
    assert all(p.wait(timeout=60) == 0 for p in procs)
    text = target.read_text()
    i = text.split("\n", 1)[0].removeprefix("writer: ")
    assert text == f"writer: {i}\n" + i * 300000 + "\n"
    assert [p.name for p in tmp_path.iterdir()] == ["lock.yaml"]


def test_without_hard_links_still_no_overwrite(tmp_path, monkeypatch):
    import errno

    from fitplan.atomic import write_atomic

    def no_links(*_):
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    target = tmp_path / "f.yaml"
    write_atomic(target, "first\n")
    with pytest.raises(InputError, match="exists; use force=True"):
        write_atomic(target, "second\n")
    assert target.read_text() == "first\n" and [p.name for p in tmp_path.iterdir()] == ["f.yaml"]


# -- documentation ----------------------------------------------------------------------------------

def test_reference_documents_every_field_and_variable():
    doc = (ROOT / "docs" / "profiles.md").read_text()
    for f in SCHEMA:
        keys = [f"{f.key}.{g.key}" for g in f.fields] or [f.key]
        for key in keys:
            assert f"`{key}`" in doc, key
    for var in ENV_VARS.values():
        assert var in doc, var
    assert "fitplan check --profile deploy/fitplan.yaml" in doc


def test_validate_lists_every_problem_not_only_the_first(tmp_path):
    path = write(tmp_path, "model: 5\nworkload: {context: -1, batch: x}\nconstraints: {prefer: fast, bogus: 1}\n"
                           "extra: 1\n")
    result = cli("profile", "validate", path)
    lines = [line for line in result.stderr.splitlines() if line.startswith("fitplan: error: ")]
    assert result.exit_code == 2 and len(lines) == 6
    for words in ("unknown key 'extra'", "model must be", "context must be at least 1", "batch must be a whole",
                  "unknown key 'bogus'", "unknown value 'fast'"):
        assert sum(words in line for line in lines) == 1, words
    # loading still stops at the first, with the same words
    with pytest.raises(InputError, match="unknown key 'extra'"):
        load_profile(path)


def test_a_lock_of_an_offloaded_plan_reads_back(tmp_path):
    """An offloaded plan names every module in its device_map; its lock must read back and pin it."""
    path = write(tmp_path, "model: meta-llama/Llama-3.1-8B-Instruct\nworkload: {context: 2048}\n"
                           "hardware: {gpus: [rtx3060], cpu_ram: 64GiB}\nconstraints: {precision: bf16, offload: true}\n")
    assert cli("lock", path).exit_code == 0
    lock = read_lock(lock_path_for(path))
    assert isinstance(lock.device_map, tuple) and len(lock.device_map) > 2
    assert any(dev == "cpu" for _, dev in lock.device_map) and any(dev == 0 for _, dev in lock.device_map)
