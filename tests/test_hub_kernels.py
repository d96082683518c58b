"""Hub kernels (transformers 5.25+ defaults `from_pretrained(use_kernels=True)`): the plan says which kernel
repositories the installed transformers fetches for the model on the target and whether each is in the
local kernel cache; `fitplan.load()` never fails late on one it cannot have.

On the CPU transformers' mapping names no kernel, so the failure a GPU server sees offline is made here
by pointing transformers' own mapping at a fake one that names a kernel for the CPU, and the kernel
cache (`KERNELS_CACHE`) at a folder of our own. On transformers before 5.25 the fields say "not
applicable", and the tests check that."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

import fitplan
from fitplan.cli.main import main
from fitplan.hardware.catalogue import find_gpu
from fitplan.hardware.machine import Hardware
from fitplan.model import hf
from tiny_models import save_tiny

G = 1 << 30
NEW = hf.kernelizes_by_default()
needs_525 = pytest.mark.skipif(not NEW, reason=f"transformers {hf.version()} kernelizes nothing by default")
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return str(save_tiny("llama-gqa", tmp_path_factory.mktemp("llama")))


@pytest.fixture(autouse=True)
def own_caches(monkeypatch, tmp_path):
    monkeypatch.setenv("FITPLAN_CACHE", str(tmp_path / "fitplan-cache"))
    monkeypatch.setenv("KERNELS_CACHE", str(tmp_path / "kernels"))
    monkeypatch.delenv("USE_HUB_KERNELS", raising=False)


def _cache_kernel(tmp_path, repo_id: str, ref: str):
    """Put `repo_id` at `ref` into the fake kernel cache, laid out as `kernels` finds it offline."""
    folder = tmp_path / "kernels" / ("kernels--" + repo_id.replace("/", "--"))
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "refs" / ref).write_text(COMMIT)
    (folder / "snapshots" / COMMIT).mkdir(parents=True, exist_ok=True)


def _probed(card: str) -> Hardware:
    """This machine as the probe would see it with `card` in it (the kernel cache is this machine's)."""
    return Hardware(gpus=(find_gpu(card).to_gpu(0),), cpu_ram_bytes=64 * G, source="probe")


def test_before_525_the_kernel_fields_say_not_applicable(llama):
    plan = fitplan.plan(llama, gpu="h100")
    use = plan.hub_kernels
    data = json.loads(CliRunner().invoke(main, ["check", llama, "--gpu", "h100", "--json"]).output)
    text = CliRunner().invoke(main, ["check", llama, "--gpu", "h100"]).output
    if NEW:
        assert use.applicable and data["hub_kernels"]["applicable"] is True
        return
    assert not use.applicable and not use.used and use.repos == ()
    assert data["hub_kernels"] == {"applicable": False, "transformers": hf.version(), "device": "cuda",
                                   "disabled": False, "used": False, "repos": [], "mxfp4": None, "fp8": None}
    assert f"kernels   not applicable (transformers {hf.version()} loads no Hub kernels by default)" in text
    assert plan.inventory.hub_kernels is None


@needs_525
def test_a_cuda_target_lists_transformers_own_kernel_repos_and_the_cache(llama, tmp_path):
    # transformers 5.25's mapping (integrations/hub_kernels.py): rotary embeddings -> kernels-community/rotary v2
    catalogue = fitplan.plan(llama, gpu="h100").hub_kernels
    repos = {(r.repo_id, r.ref): r for r in catalogue.repos}
    assert ("kernels-community/rotary", "v2") in repos and catalogue.used
    assert all(r.cached is None for r in catalogue.repos)  # another machine's cache is not seen from here
    assert "cache not seen from here" in catalogue.summary()

    _cache_kernel(tmp_path, "kernels-community/rotary", "v2")
    here = fitplan.plan(llama, hardware=_probed("h100")).hub_kernels
    cached = {(r.repo_id, r.ref): r.cached for r in here.repos}
    assert cached[("kernels-community/rotary", "v2")] is True
    assert [k for k, v in cached.items() if k != ("kernels-community/rotary", "v2")]
    assert all(v is False for k, v in cached.items() if k != ("kernels-community/rotary", "v2"))
    text = CliRunner().invoke(main, ["check", llama, "--gpu", "h100"]).output
    assert "kernels   kernels-community/rotary v2 (cache not seen from here)" in text.replace("\n          ", " ")

    cpu = fitplan.plan(llama, hardware=Hardware((), 64 * G, "probe")).hub_kernels
    assert cpu.applicable and cpu.repos == () and not cpu.used  # the real mapping names none for the CPU


@needs_525
def test_use_hub_kernels_no_turns_them_off(llama, monkeypatch):
    monkeypatch.setenv("USE_HUB_KERNELS", "NO")
    use = fitplan.plan(llama, gpu="h100").hub_kernels
    assert use.disabled and not use.used and "USE_HUB_KERNELS" in use.summary()


@pytest.fixture
def fake_cpu_kernel(monkeypatch):
    """transformers' own kernel mapping, pointed at a fake that fetches an RMSNorm kernel on the CPU too:
    on the CPU, kernelize then does what it does on a GPU server."""
    from kernels import LayerRepository, Mode, use_kernel_mapping
    from transformers.integrations import hub_kernels

    fake = {"RMSNorm": {"cpu": {Mode.INFERENCE: LayerRepository(
        repo_id="fitplan-test/rmsnorm", layer_name="RMSNorm", version=1)}}}
    monkeypatch.setattr(hub_kernels, "_KERNEL_MAPPING_CACHE", fake)
    # from_pretrained registers the mapping into kernels' global one (`register_kernel_mapping` merges in
    # place): inside this context that global is a copy, restored after the test, so no later load sees the fake
    with use_kernel_mapping({}, inherit_mapping=True):
        yield fake


@needs_525
def test_offline_without_the_kernel_cached_load_leaves_kernels_out_in_one_note(llama, fake_cpu_kernel, monkeypatch,
                                                                                 tmp_path):
    from huggingface_hub import constants
    from transformers import AutoModelForCausalLM

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    # what a user without fitplan gets: the load fails inside from_pretrained, after the weights were read
    with pytest.raises(ValueError, match="not available in the local cache"):
        AutoModelForCausalLM.from_pretrained(llama)

    cpu = Hardware((), 64 * G, "probe")
    plan = fitplan.plan(llama, hardware=cpu)
    assert [(r.repo_id, r.ref, r.cached) for r in plan.hub_kernels.repos] == [("fitplan-test/rmsnorm", "v1", False)]
    assert "fitplan-test/rmsnorm v1 (NOT cached)" in plan.hub_kernels.summary()
    model = fitplan.load(llama, tokenizer=False, hardware=cpu, context=128)
    (note,) = model.fitplan.notes
    assert note.startswith("loaded without Hub kernels (use_kernels=False): fitplan-test/rmsnorm v1 not in the "
                           "local kernel cache and the Hub is offline")
    assert not model.use_kernels
    assert f"note: {note}" in str(model.fitplan)
    assert model.fitplan.plan.precision == plan.precision  # the plan it sized is the path it loaded


@needs_525
def test_a_cached_kernel_is_left_to_transformers(llama, fake_cpu_kernel, monkeypatch, tmp_path):
    from huggingface_hub import constants

    from fitplan.runtime.load import hub_kernels_fallback

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    cpu = Hardware((), 64 * G, "probe")
    assert "Hub is offline" in hub_kernels_fallback(fitplan.plan(llama, hardware=cpu).hub_kernels)
    _cache_kernel(tmp_path, "fitplan-test/rmsnorm", "v1")
    use = fitplan.plan(llama, hardware=cpu).hub_kernels
    assert use.repos[0].cached is True and hub_kernels_fallback(use) is None


@needs_525
def test_an_unreachable_hub_is_found_before_the_weights_are_read(llama, fake_cpu_kernel, monkeypatch):
    """Online, but the Hub cannot be reached: fetching the kernel first fails, so load() leaves kernels out."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # discard port: nothing listens
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    cpu = Hardware((), 64 * G, "probe")
    model = fitplan.load(llama, tokenizer=False, hardware=cpu, context=128)
    (note,) = model.fitplan.notes
    assert "fitplan-test/rmsnorm v1 not in the local kernel cache and fetching failed" in note
