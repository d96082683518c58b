"""probe(): which GPUs torch will see, numbered as torch numbers them, through recorded NVML tables.

Every machine shape and every NVML fault runs through `TableNvml`, replaying device tables in
tests/fixtures/nvml (one of them recorded on a real H100). No GPU or driver is needed.
"""
from __future__ import annotations

import copy
import ctypes
import json
import sys
from pathlib import Path

import pytest

from fitplan.hardware.machine import Hardware
from fitplan.hardware.nvml import NVML_ERRORS, NvmlError, PynvmlBackend, TableNvml, record_table
from fitplan.hardware.probe import CpuRam, probe, read_cpu_ram

FIXTURES = Path(__file__).parent / "fixtures" / "nvml"
RAM = CpuRam(total_bytes=64 << 30, available_bytes=40 << 30)
PCI = {"CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
UUID_3090 = "GPU-5f4d8c2e-91a7-3b60-0e1d-7c2a9b4f8e13"
UUID_4090 = "GPU-b2a0e7d1-4c3f-5e8a-9d21-60f3c7a1e5b4"


def table(name: str) -> dict:
    return json.loads((FIXTURES / f"{name}.json").read_text())


def run(tbl: dict | TableNvml, env: dict | None = None) -> Hardware:
    nvml = tbl if isinstance(tbl, TableNvml) else TableNvml(tbl)
    return probe(nvml, env={} if env is None else env, cpu_ram=RAM)


def names(hw: Hardware) -> list[str]:
    return [g.name.replace("NVIDIA GeForce ", "") for g in hw.gpus]


def fault(tbl: dict, device: int, key: str, error: str) -> dict:
    out = copy.deepcopy(tbl)
    out["devices"][device][key] = {"error": error}
    return out


# ---------------------------------------------------------------------------------------------
# Fixtures are real-looking tables and replay faithfully


@pytest.mark.parametrize("path", sorted(FIXTURES.glob("*.json")), ids=lambda p: p.stem)
def test_every_fixture_replays_and_records_back_identically(path):
    tbl = json.loads(path.read_text())
    hw = run(tbl)
    assert len(hw.gpus) == tbl["device_count"]
    assert [g.index for g in hw.gpus] == list(range(len(hw.gpus)))
    assert all(0 < g.free_bytes <= g.total_bytes for g in hw.gpus)
    recorded = record_table(TableNvml(tbl), description=tbl["description"])
    assert _strip_text(recorded) == _strip_text(tbl)
    json.dumps(hw.to_dict())


def _strip_text(tbl):
    """Recorded errors carry NVML's text; fixtures may leave it out."""
    if isinstance(tbl, dict):
        return {k: _strip_text(v) for k, v in tbl.items() if k != "text"}
    if isinstance(tbl, list):
        return [_strip_text(v) for v in tbl]
    return tbl


def test_recorded_h100_gives_nvml_totals_and_catalogue_bandwidth():
    hw = run(table("h100_sxm_recorded"))
    (gpu,) = hw.gpus
    assert gpu.name == "NVIDIA H100 80GB HBM3"
    assert gpu.total_bytes == 81559 << 20  # nvidia-smi: 81559MiB
    assert gpu.free_bytes == 85017493504
    assert gpu.compute_capability == (9, 0) and gpu.supports_bf16
    assert gpu.uuid == "GPU-a1e3684a-e00b-f52d-f006-8362f283e837"
    assert gpu.bandwidth_gbs == 3350  # matched to the catalogue's h100-sxm by NVML name
    assert not gpu.mig
    assert hw.source == "probe" and hw.cpu_ram_bytes == 64 << 30


def test_catalogue_h100_budgets_what_a_probed_idle_h100_gives():
    """A `--gpu h100` card must not pretend to have the 480 MiB its driver reserves: its free memory,
    and the plan made for it, agree with the recorded idle H100 within 1%."""
    from fitplan.hardware.catalogue import hardware_from_gpu_flag
    from fitplan.model.build import build_inventory
    from fitplan.options import PlanOptions
    from fitplan.planning.policy import choose
    from fitplan.planning.workload import Workload
    from tiny_models import config_dict

    probed = run(table("h100_sxm_recorded"))
    named = hardware_from_gpu_flag("h100", probed.cpu_ram_bytes)
    assert named.gpus[0].total_bytes == probed.gpus[0].total_bytes
    assert abs(named.gpus[0].free_bytes - probed.gpus[0].free_bytes) <= 0.01 * probed.gpus[0].free_bytes
    assert named.gpus[0].free_bytes < named.gpus[0].total_bytes
    inv = build_inventory(config_dict("llama-gqa"), model_id="llama")
    a, b = (choose(inv, hw, PlanOptions(context=4096, headroom=0.0), Workload(4096, 1)).chosen for hw in (probed, named))
    assert a.precision == b.precision
    (sa,), (sb,) = a.placement, b.placement
    assert abs(sa.budget_bytes - sb.budget_bytes) <= 0.01 * sa.budget_bytes


def test_unknown_card_has_no_bandwidth():
    (gpu,) = run(table("laptop_rtx4060")).gpus
    assert gpu.name == "NVIDIA GeForce RTX 4060 Laptop GPU" and gpu.bandwidth_gbs is None
    assert gpu.total_bytes == 8188 << 20 and gpu.free_bytes == (8188 - 612) << 20


# ---------------------------------------------------------------------------------------------
# CUDA_DEVICE_ORDER


def test_default_order_puts_the_faster_4090_first_and_says_so():
    hw = run(table("rtx3090_rtx4090"))
    assert names(hw) == ["RTX 4090", "RTX 3090"]
    assert [g.bandwidth_gbs for g in hw.gpus] == [1008, 936]
    (note,) = [n for n in hw.notes if "CUDA_DEVICE_ORDER" in n]
    assert "order as 0 = NVIDIA GeForce RTX 4090 (nvidia-smi GPU 1, PCI 00000000:41:00.0), 1 = " in note
    assert "CUDA_DEVICE_ORDER=PCI_BUS_ID" in note


def test_no_order_note_when_gpus_are_picked_by_uuid():
    hw = run(table("rtx3090_rtx4090"), {"CUDA_VISIBLE_DEVICES": f"{UUID_3090},{UUID_4090}"})
    assert names(hw) == ["RTX 3090", "RTX 4090"]
    assert not [n for n in hw.notes if "CUDA_DEVICE_ORDER" in n]


@pytest.mark.parametrize("order", [None, "FASTEST_FIRST"])
def test_fastest_first_is_the_default(order):
    env = {} if order is None else {"CUDA_DEVICE_ORDER": order}
    assert names(run(table("rtx3090_rtx4090"), env)) == ["RTX 4090", "RTX 3090"]


def test_pci_bus_id_order_matches_nvidia_smi_and_needs_no_note():
    hw = run(table("rtx3090_rtx4090"), PCI)
    assert names(hw) == ["RTX 3090", "RTX 4090"]
    assert not [n for n in hw.notes if "CUDA_DEVICE_ORDER" in n]


def test_unknown_order_value_is_treated_as_the_default_with_a_note():
    hw = run(table("rtx3090_rtx4090"), {"CUDA_DEVICE_ORDER": "pci_bus_id"})
    assert names(hw) == ["RTX 4090", "RTX 3090"]
    assert any("'pci_bus_id' is neither" in n for n in hw.notes)


def test_pci_order_is_numeric_not_nvml_order():
    tbl = table("rtx3090_rtx4090")
    tbl["devices"].reverse()  # NVML's own order carries no guarantee: sort by bus id
    tbl["devices"][0]["pci_bus_id"] = "00000000:A1:00.0"  # the 4090, now at bus 0xA1 > 0x01
    assert names(run(tbl, PCI)) == ["RTX 3090", "RTX 4090"]


def test_same_compute_capability_ranks_by_cores_times_clock():
    tbl = table("rtx3090_rtx4090")
    slow = tbl["devices"][1]
    slow.update(name="NVIDIA GeForce RTX 3060", compute_capability=[8, 6], speed=[3584, 1777])
    tbl["devices"].reverse()  # 3060 on the lower bus
    slow["pci_bus_id"] = "00000000:01:00.0"
    tbl["devices"][1]["pci_bus_id"] = "00000000:02:00.0"
    assert names(run(tbl, PCI)) == ["RTX 3060", "RTX 3090"]
    assert names(run(tbl)) == ["RTX 3090", "RTX 3060"]


def test_unknown_speed_keeps_pci_order_within_a_compute_capability():
    tbl = table("rtx3090_rtx4090")
    tbl["devices"][1].update(compute_capability=[8, 6], speed={"error": "NOT_SUPPORTED"})
    assert names(run(tbl)) == ["RTX 3090", "RTX 4090"]


def test_identical_gpus_stay_in_pci_order_without_a_note():
    hw = run(table("h100_sxm_x8"))
    assert [g.uuid for g in hw.gpus] == [d["uuid"] for d in table("h100_sxm_x8")["devices"]]
    assert [g.index for g in hw.gpus] == list(range(8))
    assert not [n for n in hw.notes if "CUDA_DEVICE_ORDER" in n]


# ---------------------------------------------------------------------------------------------
# CUDA_VISIBLE_DEVICES

@pytest.mark.parametrize(
    ("cvd", "order", "expected"),
    [
        ("1", None, ["RTX 3090"]),  # indices count in CUDA's (fastest-first) order...
        ("1", "PCI_BUS_ID", ["RTX 4090"]),  # ...not nvidia-smi's, unless PCI_BUS_ID
        ("1,0", None, ["RTX 3090", "RTX 4090"]),
        ("0,1", "PCI_BUS_ID", ["RTX 3090", "RTX 4090"]),
        (" 1 , 0 ", "PCI_BUS_ID", ["RTX 4090", "RTX 3090"]),
        ("1gpu", "PCI_BUS_ID", ["RTX 4090"]),  # read like strtoul: leading digits count
        ("+1", "PCI_BUS_ID", ["RTX 4090"]),
        ("0,-1,1", "PCI_BUS_ID", ["RTX 3090"]),  # stops at the first invalid entry
        ("0,7,1", "PCI_BUS_ID", ["RTX 3090"]),
        ("0,x,1", "PCI_BUS_ID", ["RTX 3090"]),
        ("-1", None, []),
        ("", None, []),
        ("  ", None, []),
        ("0,0", None, []),  # a repeated device hides every GPU
        (UUID_3090, None, ["RTX 3090"]),
        (f"{UUID_4090},{UUID_3090}", "PCI_BUS_ID", ["RTX 4090", "RTX 3090"]),
        ("GPU-b2a0", None, ["RTX 4090"]),  # unique prefixes are allowed
        ("GPU-5f4d8c2e", "PCI_BUS_ID", ["RTX 3090"]),
        ("GPU-", None, []),  # ambiguous prefix: invalid, nothing before it
        ("GPU-ffff", None, []),
        (f"{UUID_3090},GPU-ffff,{UUID_4090}", None, ["RTX 3090"]),
        (f"{UUID_3090},1", "PCI_BUS_ID", ["RTX 3090"]),  # UUIDs and indices do not mix
        (f"1,{UUID_3090}", "PCI_BUS_ID", ["RTX 4090"]),
        (f"{UUID_3090},{UUID_3090[:12]}", None, []),  # the same GPU twice, by UUID and prefix
        ("5f4d8c2e-91a7-3b60-0e1d-7c2a9b4f8e13", None, []),  # a UUID needs its GPU- prefix...
        ("gpu-5f4d8c2e", None, []),  # ...spelt in capitals...
        ("GPU-5F4D8C2E", None, ["RTX 3090"]),  # ...but its digits match in any case
        (f" {UUID_3090}", None, []),  # spaces count in a UUID (unlike in an index)
        (f"{UUID_3090} ", None, []),
        (f"MIG-{UUID_4090[4:]}", None, ["RTX 4090"]),  # CUDA takes MIG-<a whole GPU's digits> as that GPU
    ],
)
def test_cuda_visible_devices(cvd, order, expected):
    env = {"CUDA_VISIBLE_DEVICES": cvd}
    if order:
        env["CUDA_DEVICE_ORDER"] = order
    hw = run(table("rtx3090_rtx4090"), env)
    assert names(hw) == expected
    assert [g.index for g in hw.gpus] == list(range(len(expected)))
    uuids = {"RTX 3090": UUID_3090, "RTX 4090": UUID_4090}
    assert [g.uuid for g in hw.gpus] == [uuids[n] for n in expected]


def test_visible_devices_notes_say_what_was_cut_and_why():
    notes = run(table("rtx3090_rtx4090"), {"CUDA_VISIBLE_DEVICES": "0,7,1", **PCI}).notes
    assert any("entry '7' is past the last GPU (there are 2)" in n and "1 GPU(s) visible" in n for n in notes)
    notes = run(table("rtx3090_rtx4090"), {"CUDA_VISIBLE_DEVICES": ""}).notes
    assert any("set but empty" in n and "CPU only" in n for n in notes)
    notes = run(table("rtx3090_rtx4090"), {"CUDA_VISIBLE_DEVICES": "1,1"}).notes
    assert any("names the same GPU twice" in n for n in notes)
    notes = run(table("rtx3090_rtx4090"), {"CUDA_VISIBLE_DEVICES": "GPU-b2a0,GPU-9,GPU-"}).notes
    assert any("'GPU-9' matches no GPU" in n for n in notes)
    tbl = table("h100_sxm_x8")
    tbl["devices"][1]["uuid"] = tbl["devices"][0]["uuid"][:12] + "ffff-ffff-ffff-ffffffffffff"
    notes = run(tbl, {"CUDA_VISIBLE_DEVICES": tbl["devices"][0]["uuid"][:12]}).notes
    assert any("matches more than one GPU (give more of the UUID)" in n for n in notes)


@pytest.mark.parametrize("cvd", ["GPU-", "MIG-"])
def test_a_bare_uuid_prefix_is_invalid_even_with_one_gpu(cvd):
    # Checked on an H100: CUDA showed no device for CUDA_VISIBLE_DEVICES=GPU- (torch's parser says 1).
    hw = run(table("laptop_rtx4060"), {"CUDA_VISIBLE_DEVICES": cvd})
    assert hw.gpus == ()
    assert any("has no UUID digits after the prefix" in n for n in hw.notes)


def test_eight_gpu_node_with_a_subset_renumbers_from_zero():
    tbl = table("h100_sxm_x8")
    hw = run(tbl, {"CUDA_VISIBLE_DEVICES": "6,7,2"})
    assert [g.uuid for g in hw.gpus] == [tbl["devices"][i]["uuid"] for i in (6, 7, 2)]
    assert [g.index for g in hw.gpus] == [0, 1, 2]


# ---------------------------------------------------------------------------------------------
# MIG

MIG_3G = "MIG-c7384736-a75d-5afc-978f-d2f1294409fd"
MIG_1G = "MIG-5a51d436-9ec7-5a2f-a6c0-8f2ef2b5f4bd"


def test_mig_gpu_without_mig_uuid_counts_the_whole_gpu_and_explains():
    hw = run(table("a100_mig"))
    assert [g.mig for g in hw.gpus] == [True, False]
    assert hw.gpus[0].total_bytes == 40960 << 20
    (note,) = [n for n in hw.notes if "MIG enabled" in n]
    assert note.startswith("cuda:0 (NVIDIA A100-SXM4-40GB")
    assert "counted the whole GPU (40.00 GiB)" in note and "CUDA_VISIBLE_DEVICES" in note
    assert f"{MIG_3G} 19.50 GiB" in note and f"{MIG_1G} 4.75 GiB" in note


@pytest.mark.parametrize("entry", [MIG_3G, MIG_3G[:13], "MIG-GPU-8932f937-d72c-4106-c12f-20bd9faed9f6/1/0"])
def test_mig_uuid_plans_for_that_instance_s_memory(entry):
    hw = run(table("a100_mig"), {"CUDA_VISIBLE_DEVICES": entry})
    (gpu,) = hw.gpus
    assert gpu.name == "NVIDIA A100-SXM4-40GB MIG 3g.20gb"
    assert gpu.uuid == MIG_3G and gpu.mig and gpu.index == 0
    assert gpu.total_bytes == 19968 << 20 and gpu.free_bytes == (19968 - 13) << 20
    assert gpu.compute_capability == (8, 0) and gpu.bandwidth_gbs is None
    assert not [n for n in hw.notes if "MIG enabled" in n]


def test_several_mig_uuids_keep_their_order_and_stop_at_an_unknown_one():
    hw = run(table("a100_mig"), {"CUDA_VISIBLE_DEVICES": f"{MIG_1G},{MIG_3G},MIG-0000,{MIG_3G}"})
    assert [g.uuid for g in hw.gpus] == [MIG_1G, MIG_3G]
    assert any("'MIG-0000' matches no MIG instance" in n for n in hw.notes)


def test_index_of_a_mig_gpu_gives_the_whole_gpu_with_the_note():
    hw = run(table("a100_mig"), {"CUDA_VISIBLE_DEVICES": "1,0", **PCI})
    assert [g.mig for g in hw.gpus] == [False, True]
    assert any(n.startswith("cuda:1 (NVIDIA A100-SXM4-40GB") and "MIG enabled" in n for n in hw.notes)


def test_mig_instances_unreadable_keeps_the_gpu_with_a_note():
    tbl = table("a100_mig")
    tbl["devices"][0]["mig_devices"] = {"error": "NO_PERMISSION"}
    hw = run(tbl)
    assert len(hw.gpus) == 2 and hw.gpus[0].mig
    assert any("MIG instances could not be read" in n for n in hw.notes)


# ---------------------------------------------------------------------------------------------
# Faults: every one is a plan with fewer GPUs and a note, never an exception


@pytest.mark.parametrize(
    ("error", "words"),
    [
        ("LIBRARY_NOT_FOUND", "libnvidia-ml.so.1) was not found"),
        ("DRIVER_NOT_LOADED", "driver is not loaded"),
        ("LIB_RM_VERSION_MISMATCH", "different versions"),
        ("NO_PERMISSION", "/dev/nvidia*"),
        ("UNKNOWN", "NVML failed to start (NVML error 999"),
    ],
)
def test_init_failure_means_cpu_only_with_a_specific_note(error, words):
    nvml = TableNvml({"init": {"error": error}})
    hw = run(nvml)
    assert hw.gpus == () and hw.cpu_ram_bytes == RAM.total_bytes
    assert any(words in n and "CPU only" in n for n in hw.notes), hw.notes
    assert nvml.shutdowns == 0  # nothing to shut down after a failed init


def test_pynvml_missing_means_cpu_only(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # makes `import pynvml` raise ImportError
    hw = probe(env={}, cpu_ram=RAM)
    assert hw.gpus == ()
    assert any("nvidia-ml-py (module pynvml) is not installed" in n for n in hw.notes)


def _driver_present() -> bool:
    try:
        ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        return False
    return True


@pytest.mark.skipif(_driver_present(), reason="an NVIDIA driver is installed here")
def test_real_pynvml_without_a_driver_reports_library_not_found():
    pytest.importorskip("pynvml")
    hw = probe(env={}, cpu_ram=RAM)
    assert hw.gpus == ()
    assert any("libnvidia-ml.so.1) was not found" in n for n in hw.notes), hw.notes


def test_device_count_failure_is_cpu_only_and_shuts_nvml_down():
    tbl = table("rtx3090_rtx4090")
    tbl["device_count"] = {"error": "UNKNOWN"}
    nvml = TableNvml(tbl)
    hw = run(nvml)
    assert hw.gpus == () and any("could not count the GPUs" in n for n in hw.notes)
    assert (nvml.inits, nvml.shutdowns) == (1, 1)


@pytest.mark.parametrize("key", ["handle", "memory", "compute_capability"])
def test_one_failing_device_is_left_out_and_named(key):
    nvml = TableNvml(fault(table("rtx3090_rtx4090"), 0, key, "UNKNOWN"))
    hw = run(nvml, PCI)
    assert names(hw) == ["RTX 4090"] and hw.gpus[0].index == 0
    (note,) = [n for n in hw.notes if "could not be read" in n]
    assert note.startswith("nvidia-smi GPU 0 could not be read (NVML error 999")
    assert "CUDA_VISIBLE_DEVICES" in note
    assert nvml.shutdowns == 1


@pytest.mark.parametrize("key", ["memory", "uuid", "name", "mig_enabled", "speed", "pci_bus_id"])
def test_gpu_lost_mid_probe_drops_that_gpu_only(key):
    nvml = TableNvml(fault(table("h100_sxm_x8"), 3, key, "GPU_IS_LOST"))
    hw = run(nvml)
    lost = table("h100_sxm_x8")["devices"][3]["uuid"]
    assert len(hw.gpus) == 7 and lost not in [g.uuid for g in hw.gpus]
    assert [g.index for g in hw.gpus] == list(range(7))
    (note,) = [n for n in hw.notes if "fell off the bus" in n]
    assert note.startswith("nvidia-smi GPU 3 fell off the bus")
    assert nvml.shutdowns == 1


def test_optional_fields_failing_keep_the_gpu():
    tbl = table("rtx3090_rtx4090")
    for key in ("uuid", "pci_bus_id", "speed", "name"):
        tbl = fault(tbl, 1, key, "NOT_SUPPORTED")
    hw = run(tbl, PCI)
    assert len(hw.gpus) == 2
    kept = [g for g in hw.gpus if g.uuid is None]
    assert len(kept) == 1 and kept[0].name == "NVIDIA GPU 1" and kept[0].total_bytes == 24564 << 20
    assert not [n for n in hw.notes if "could not be read" in n]


@pytest.mark.parametrize("error", ["GPU_IS_LOST", "UNKNOWN", "NOT_SUPPORTED", "NO_PERMISSION", "TIMEOUT"])
@pytest.mark.parametrize("key", ["handle", "name", "uuid", "pci_bus_id", "memory", "compute_capability",
                                 "speed", "mig_enabled", "mig_devices"])
def test_no_single_fault_escapes_probe(key, error):
    nvml = TableNvml(fault(table("a100_mig"), 0, key, error))
    hw = probe(nvml, env={"CUDA_VISIBLE_DEVICES": "0,1"}, cpu_ram=RAM)
    assert 1 <= len(hw.gpus) <= 2
    assert nvml.shutdowns == 1


def test_shutdown_failure_does_not_escape():
    class BadShutdown(TableNvml):
        def shutdown(self):
            super().shutdown()
            raise NvmlError(NVML_ERRORS["UNINITIALIZED"])

    nvml = BadShutdown(table("laptop_rtx4060"))
    assert len(run(nvml).gpus) == 1 and nvml.shutdowns == 1


def test_shutdown_runs_even_when_the_probe_itself_breaks():
    class Exploding(TableNvml):
        def handle(self, index):
            raise RuntimeError("a bug, not an NVML error")

    nvml = Exploding(table("laptop_rtx4060"))
    with pytest.raises(RuntimeError):  # bugs are not swallowed...
        run(nvml)
    assert nvml.shutdowns == 1  # ...but NVML is still shut down


# ---------------------------------------------------------------------------------------------
# The real backend translates pynvml's errors into NvmlError


class _FakePynvml:
    """Just enough of pynvml's surface to check PynvmlBackend's translation."""

    class NVMLError(Exception):
        def __init__(self, value):
            self.value = value

        def __str__(self):
            return "GPU is lost"

    class NVMLLibraryMismatchError(Exception):
        pass

    def __init__(self, raises=None):
        self.raises = raises

    def nvmlDeviceGetMemoryInfo(self, h):
        if self.raises:
            raise self.raises

        class Info:
            total, free, used = 100, 60, 40

        return Info()

    def nvmlDeviceGetPciInfo(self, h):
        class Info:
            busId = b"00000000:41:00.0"

        return Info()


def _backend(fake) -> PynvmlBackend:
    b = PynvmlBackend.__new__(PynvmlBackend)
    b._nv = fake
    return b


def test_pynvml_backend_translates_errors_and_missing_functions():
    assert _backend(_FakePynvml()).memory(0) == (100, 60)
    assert _backend(_FakePynvml()).pci_bus_id(0) == "00000000:41:00.0"
    with pytest.raises(NvmlError) as err:
        _backend(_FakePynvml(raises=_FakePynvml.NVMLError(15))).memory(0)
    assert (err.value.code, err.value.name) == (15, "GPU_IS_LOST")
    with pytest.raises(NvmlError) as err:
        _backend(_FakePynvml(raises=_FakePynvml.NVMLLibraryMismatchError("old"))).memory(0)
    assert err.value.name == "FUNCTION_NOT_FOUND"
    with pytest.raises(NvmlError) as err:
        _backend(_FakePynvml()).speed(0)  # nvmlDeviceGetNumGpuCores absent from this "pynvml"
    assert err.value.name == "FUNCTION_NOT_FOUND"


# ---------------------------------------------------------------------------------------------
# CPU RAM


def _meminfo(tmp_path, total_kb=65_000_000, avail_kb=30_000_000):
    p = tmp_path / "meminfo"
    p.write_text(f"MemTotal:       {total_kb} kB\nMemFree:         1000 kB\nMemAvailable:   {avail_kb} kB\n")
    return p


def test_cpu_ram_from_meminfo(tmp_path):
    ram = read_cpu_ram(_meminfo(tmp_path), cgroup_limits=())
    assert ram == CpuRam(65_000_000 * 1024, 30_000_000 * 1024, None)
    assert ram.usable_bytes == 65_000_000 * 1024


def test_container_limit_below_total_is_what_a_plan_may_use(tmp_path):
    limit = tmp_path / "memory.max"
    limit.write_text(f"{16 << 30}\n")
    ram = read_cpu_ram(_meminfo(tmp_path), cgroup_limits=(limit,))
    assert ram.usable_bytes == 16 << 30
    hw = probe(TableNvml(table("laptop_rtx4060")), env={}, cpu_ram=ram)
    assert hw.cpu_ram_bytes == 16 << 30
    assert any("container memory limit (cgroup) of 16.00 GiB" in n for n in hw.notes)


@pytest.mark.parametrize("text", ["max\n", f"{1 << 62}\n", "garbage"])
def test_unlimited_cgroup_is_ignored(tmp_path, text):
    limit = tmp_path / "memory.max"
    limit.write_text(text)
    assert read_cpu_ram(_meminfo(tmp_path), cgroup_limits=(limit,)).limit_bytes is None


def test_missing_meminfo_falls_back_to_sysconf(tmp_path):
    ram = read_cpu_ram(tmp_path / "nope", cgroup_limits=())
    assert ram.total_bytes > 0 and ram.available_bytes is None


def test_available_ram_is_noted_and_total_is_stored():
    hw = run(table("laptop_rtx4060"))
    assert hw.cpu_ram_bytes == 64 << 30
    assert "CPU RAM: 64.00 GiB total, 40.00 GiB available now" in hw.notes


def test_probe_module_does_not_import_torch():
    import subprocess

    code = "import sys, fitplan.hardware.probe, fitplan.hardware.catalogue; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=Path(__file__).parent.parent, timeout=60)
    assert out.stdout.strip() == "False", out.stderr
