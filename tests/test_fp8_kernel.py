"""fp8's Hub kernel: from transformers 5.17, an fp8 checkpoint kept as fp8 on a GPU (compute capability 8.9 or newer)
runs its FP8Linear / FP8Experts through `kernels-community/finegrained-fp8`, fetched with the `kernels` package at
the first forward, after the load: without `kernels` that forward raises ImportError, and offline with the kernel
not cached a ValueError. 5.0 runs fp8 on its own triton kernels and fetches nothing, and its fp8 integration imports
triton at its top: without triton no row of an fp8 checkpoint loads, which the plan and load() say with one reason.

The plan keeps fp8 only where that path can run (the target's `kernels`), else it plans the dequantized row;
`fitplan.load()` looks the kernel up before any weight is read and, without it, loads with
`FineGrainedFP8Config(dequantize=True)` and one note, or refuses in one line. The CPU cannot keep fp8, so plans are
made for a probed H100 whose software is set (`hf.mxfp4_kernels`, as tests/test_mxfp4_kernel.py does), with the
kernel cache pointed at a fake; the load path itself is a real CPU load of a tiny fp8 checkpoint built here."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import fitplan
from fitplan.errors import DependencyError, DoesNotFitError
from fitplan.hardware.catalogue import find_gpu
from fitplan.hardware.machine import GPU, Hardware
from fitplan.model import hf
from fitplan.runtime.load import fp8_kernel_fallback
from tiny_models import save_tiny_fp8

G = 1 << 30
HUB_KERNEL = hf.fp8_kernel_repo()  # None where the installed transformers runs fp8 without one (5.0)
needs_kernel = pytest.mark.skipif(HUB_KERNEL is None, reason=f"transformers {hf.version()} fetches no fp8 kernel")
CATALOGUE = Path(fitplan.__file__).parent / "data" / "models"


def _probed(card: str = "h100", free_gib: float | None = None) -> Hardware:
    """This machine as the probe would see it with `card` in it (the kernel cache is this machine's)."""
    gpu = find_gpu(card).to_gpu(0)
    if free_gib is not None:
        gpu = GPU(0, gpu.name, int(free_gib * G), int(free_gib * G), gpu.compute_capability)
    return Hardware(gpus=(gpu,), cpu_ram_bytes=64 * G, source="probe")


@pytest.fixture(scope="module")
def fp8_8b(tmp_path_factory) -> str:
    """Qwen3-8B's config stored as fp8 (128x128 blocks): a folder without weights plans from the config alone."""
    cfg = json.loads((CATALOGUE / "Qwen--Qwen3-8B.json").read_text())
    cfg["quantization_config"] = {"quant_method": "fp8", "activation_scheme": "dynamic", "weight_block_size": [128, 128]}
    path = tmp_path_factory.mktemp("qwen3-8b-fp8")
    (path / "config.json").write_text(json.dumps(cfg))
    return str(path)


def _plan(model, hw):
    return fitplan.plan(model, hardware=hw, offline=True, context=1024)


@pytest.fixture
def offline_cache(monkeypatch):
    """`kernels` and triton present where the plan looks (this machine, the probe), the Hub offline, and a fake
    kernel cache that holds what `cached` lists."""
    from huggingface_hub import constants

    needs_triton = hf.fp8_needs_triton()[0]
    monkeypatch.setattr(hf, "mxfp4_kernels", lambda: (True, True))
    monkeypatch.setattr(hf, "fp8_needs_triton", lambda: (needs_triton, True))  # and triton imports here
    monkeypatch.delenv("USE_HUB_KERNELS", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    cached: set = set()
    monkeypatch.setattr(hf, "kernel_cached", lambda repo_id, ref: (repo_id, ref) in cached)
    return cached


def test_the_kernel_is_the_one_the_installed_transformers_fetches():
    """Read by running a tiny FP8Linear forward with get_kernel replaced: each version's own answer."""
    expected = None if hf.version_tuple() < (5, 17) else ("kernels-community/finegrained-fp8", "v4")
    assert HUB_KERNEL == expected


@needs_kernel
def test_without_kernels_the_target_plans_the_dequantized_row(fp8_8b, monkeypatch):
    monkeypatch.setattr(hf, "mxfp4_kernels", lambda: (True, False))
    plan = _plan(fp8_8b, _probed())
    stored, dense = plan.choice.decisions
    assert plan.precision == "bf16" and dense.rejected_because is None
    assert f"through the Hub kernel {HUB_KERNEL[0]} {HUB_KERNEL[1]}" in stored.rejected_because
    assert "missing on the target" in stored.rejected_because
    assert dense.estimate.weights_bytes > 1.5 * stored.estimate.weights_bytes  # bf16 where fp8 was (embeddings are bf16 in both)
    assert plan.hub_kernels.fp8 is None


@needs_kernel
def test_use_hub_kernels_off_here_counts_as_no_kernels(fp8_8b, monkeypatch):
    """transformers' lazy_load_kernel fetches nothing with USE_HUB_KERNELS off: the fp8 forward would fail."""
    monkeypatch.setattr(hf, "mxfp4_kernels", lambda: (True, True))
    monkeypatch.setenv("USE_HUB_KERNELS", "NO")
    assert _plan(fp8_8b, _probed()).precision == "bf16"


def test_with_kernels_fp8_is_kept_and_its_kernel_named(fp8_8b, offline_cache):
    plan = _plan(fp8_8b, _probed())
    assert plan.precision == "fp8"
    if HUB_KERNEL is None:  # 5.0: its own triton kernels, nothing to fetch
        assert plan.hub_kernels.fp8 is None
        return
    assert plan.hub_kernels.fp8.to_dict() == {"repo_id": HUB_KERNEL[0], "ref": HUB_KERNEL[1],
                                              "layers": ["FP8Linear", "FP8Experts"], "cached": False}
    assert f"fp8 layers: {HUB_KERNEL[0]} {HUB_KERNEL[1]} (NOT cached)" in plan.hub_kernels.summary()
    offline_cache.add(HUB_KERNEL)
    assert _plan(fp8_8b, _probed()).hub_kernels.fp8.cached is True


def test_below_compute_capability_8_9_no_kernel_is_named(fp8_8b, offline_cache):
    plan = _plan(fp8_8b, _probed("a100-80gb"))
    assert plan.precision == "bf16" and plan.hub_kernels.fp8 is None
    assert "compute capability 8.9" in plan.choice.decisions[0].rejected_because


def test_the_declared_software_decides_not_this_machine(fp8_8b, tmp_path):
    """`--hardware` with `software:`: in the check table and --json (`hub_kernels.fp8`), cache unseen from here."""
    from click.testing import CliRunner

    from fitplan.cli.main import main

    def check(kernels: str, *extra):
        f = tmp_path / f"{kernels}.yaml"
        f.write_text(f"gpus: [h100]\ncpu_ram: 64GiB\nsoftware: {{triton: true, kernels: {kernels}}}\n")
        return CliRunner().invoke(main, ["check", fp8_8b, "--hardware", str(f), "--context", "1024", *extra])

    data = json.loads(check("true", "--json").output)
    assert data["plan"]["precision"] == "fp8"
    if HUB_KERNEL is None:
        assert data["hub_kernels"]["fp8"] is None
    else:
        assert data["hub_kernels"]["fp8"] == {"repo_id": HUB_KERNEL[0], "ref": HUB_KERNEL[1],
                                              "layers": ["FP8Linear", "FP8Experts"], "cached": None}
        text = " ".join(check("true").output.split())
        assert f"fp8 layers: {HUB_KERNEL[0]} {HUB_KERNEL[1]} (cache not seen from here)" in text
    data = json.loads(check("false", "--json").output)
    assert data["plan"]["precision"] == ("fp8" if HUB_KERNEL is None else "bf16")
    assert data["hub_kernels"]["fp8"] is None
    if HUB_KERNEL is not None:  # the printed call is what load() passes: copied, it runs on that target
        assert "quantization_config=FineGrainedFP8Config(dequantize=True)," in check("false").output
    assert "FineGrainedFP8Config" not in check("true").output


@needs_kernel
def test_offline_and_not_cached_loads_dequantized_planned_at_that_size(fp8_8b, offline_cache):
    plan = _plan(fp8_8b, _probed())
    new, note = fp8_kernel_fallback(plan, lambda hw: _plan(fp8_8b, hw))
    repo_id, ref = HUB_KERNEL
    assert new.precision == "bf16" and new.fits
    assert new.decision.estimate.weights_bytes > 1.5 * plan.decision.estimate.weights_bytes
    assert note.startswith(f"loaded fp8 dequantized to bf16 (FineGrainedFP8Config(dequantize=True)), planned at "
                           f"that size: the Hub kernel {repo_id} {ref} is not in the local kernel cache and the Hub "
                           "is offline (HF_HUB_OFFLINE)")
    assert f"install_kernel('{repo_id}', version={ref[1:]})" in note


@needs_kernel
def test_a_cached_or_fetched_kernel_keeps_fp8(fp8_8b, offline_cache, monkeypatch):
    from huggingface_hub import constants

    replan = lambda hw: _plan(fp8_8b, hw)  # noqa: E731
    offline_cache.add(HUB_KERNEL)
    plan = _plan(fp8_8b, _probed())
    assert fp8_kernel_fallback(plan, replan) == (plan, None)
    offline_cache.clear()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hf, "fetch_kernel", lambda repo_id, ref: "Cannot reach the Hub")
    new, note = fp8_kernel_fallback(_plan(fp8_8b, _probed()), replan)
    assert new.precision == "bf16" and "fetching it failed (Cannot reach the Hub)" in note
    monkeypatch.setattr(hf, "fetch_kernel", lambda repo_id, ref: None)  # fetched now: fp8 stays
    plan = _plan(fp8_8b, _probed())
    assert fp8_kernel_fallback(plan, replan) == (plan, None)


@needs_kernel
def test_when_dequantized_does_not_fit_it_refuses_in_one_line_naming_the_kernel(fp8_8b, offline_cache):
    card = _probed(free_gib=12)  # ~10 GiB planned in fp8, ~16 GiB in bf16
    plan = _plan(fp8_8b, card)
    assert plan.precision == "fp8"
    with pytest.raises(DoesNotFitError) as err:
        fp8_kernel_fallback(plan, lambda hw: _plan(fp8_8b, hw))
    text = str(err.value)
    assert "\n" not in text and f"fp8 needs the Hub kernel {HUB_KERNEL[0]} {HUB_KERNEL[1]}" in text
    assert "dequantized (the path without it) it does not fit" in text and "install_kernel(" in text


def _never(*args, **kwargs):
    raise AssertionError("from_pretrained was called")


@needs_kernel
def test_a_load_refuses_before_any_weight_is_read(fp8_8b, offline_cache, monkeypatch):
    import transformers

    from fitplan.hardware import probe

    card = _probed(free_gib=12)
    monkeypatch.setattr(probe, "probe", lambda: card)  # load() reads free memory again just before loading
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", _never)
    with pytest.raises(DoesNotFitError, match="fp8 needs the Hub kernel"):
        fitplan.load(fp8_8b, hardware=card, tokenizer=False, offline=True, context=1024)


@needs_kernel
def test_a_lock_that_pins_fp8_is_refused_in_one_line(fp8_8b, offline_cache, monkeypatch, tmp_path):
    """A locked deployment is not silently changed to bf16: without the kernel, load(profile=) says what to do."""
    import transformers
    from click.testing import CliRunner

    from fitplan.cli.main import main
    from fitplan.hardware import probe

    prof = tmp_path / "p.yaml"
    prof.write_text(f"model: {fp8_8b}\nworkload: {{context: 1024}}\nhardware: {{gpus: [h100], cpu_ram: 64GiB, software: "
                    "{triton: true, kernels: true}}\n")
    res = CliRunner().invoke(main, ["lock", str(prof)])
    assert res.exit_code == 0 and "fp8" in res.output, res.output
    card = _probed()
    monkeypatch.setattr(probe, "probe", lambda: card)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", _never)
    with pytest.raises(DoesNotFitError) as err:
        fitplan.load(profile=str(prof), hardware=card, tokenizer=False)
    assert f"fp8 needs the Hub kernel {HUB_KERNEL[0]} {HUB_KERNEL[1]}" in str(err.value)
    assert f"the lock {tmp_path / 'p.lock.yaml'} pins fp8" in str(err.value) and "\n" not in str(err.value)


@needs_kernel
def test_the_fallback_loads_with_dequantize(fp8_8b, offline_cache, monkeypatch, caplog):
    """After the fallback, from_pretrained gets FineGrainedFP8Config(dequantize=True) (transformers would keep fp8
    on the GPU and fail at the first forward) and the model carries the one note."""
    import transformers

    from fitplan.hardware import probe

    class Called(Exception):
        pass

    seen = {}

    def record(model, **kwargs):
        seen.update(kwargs)
        raise Called

    from fitplan.runtime import localcheck

    card = _probed()
    monkeypatch.setattr(probe, "probe", lambda: card)
    monkeypatch.setattr(localcheck, "require_weights", lambda *a, **k: None)  # the folder holds a config only
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", record)
    with pytest.raises(Called):
        fitplan.load(fp8_8b, hardware=card, tokenizer=False, offline=True, context=1024)
    q = seen["quantization_config"]
    assert type(q).__name__ == "FineGrainedFP8Config" and q.dequantize is True
    assert str(seen["dtype"]) == "torch.bfloat16" and "device_map" in seen  # the GPU plan, dequantized
    assert [r.getMessage() for r in caplog.records if "dequantized" in r.getMessage()] == [
        f"fitplan: loaded fp8 dequantized to bf16 (FineGrainedFP8Config(dequantize=True)), planned at that size: the "
        f"Hub kernel {HUB_KERNEL[0]} {HUB_KERNEL[1]} is not in the local kernel cache and the Hub is offline "
        f"(HF_HUB_OFFLINE); to keep fp8, fetch it once with the Hub reachable: python -c \"from kernels import "
        f"install_kernel; install_kernel('{HUB_KERNEL[0]}', version={HUB_KERNEL[1][1:]})\""]


def test_the_dequantize_config_is_a_loading_attribute_transformers_merges():
    """What load() passes: transformers merges `dequantize` into the checkpoint's own fp8 config (its blocks stay)."""
    from transformers.quantizers.auto import AutoHfQuantizer

    merged = AutoHfQuantizer.merge_quantization_configs(
        {"quant_method": "fp8", "activation_scheme": "dynamic", "weight_block_size": [64, 64]}, hf.dequantized_config("fp8"))
    assert type(merged).__name__ == "FineGrainedFP8Config" and merged.dequantize is True
    assert list(merged.weight_block_size) == [64, 64]


def test_a_dequantized_plan_loads_for_real_on_the_cpu(tmp_path, monkeypatch):
    """A real CPU load of a tiny fp8 checkpoint: the plan dequantizes it (the CPU cannot run fp8), load() passes
    FineGrainedFP8Config(dequantize=True), the weights come back dense and close to what was quantized, and the
    weights measured are those planned. Where the installed transformers' fp8 integration does not even import
    (5.0 without triton), the plan and load() refuse it: test_without_triton_no_row_is_planned_that_load_refuses."""
    import torch
    import transformers

    original = save_tiny_fp8(tmp_path / "m")
    cpu = Hardware((), 64 * G, "probe")
    if hf.fp8_needs_triton() == (True, False):  # 5.0 without triton: test_without_triton_... below
        pytest.skip(f"transformers {hf.version()} loads no fp8 checkpoint without triton, which is not installed")
    model = fitplan.load(str(tmp_path / "m"), tokenizer=False, context=64, hardware=cpu)
    assert model.fitplan.plan.precision == "bf16" and model.fitplan.notes == ()
    q = model.model.layers[0].self_attn.q_proj
    assert type(q) is torch.nn.Linear and q.weight.dtype == torch.bfloat16  # not FP8Linear
    want = original["model.layers.0.self_attn.q_proj.weight"]
    assert torch.allclose(q.weight.float(), want, rtol=0.07, atol=1e-3)  # e4m3: 3 mantissa bits
    assert model.fitplan.measured_weights == model.fitplan.predicted_weights  # the path it sized
    ids = torch.randint(5, 500, (1, 8))
    assert model.generate(ids, max_new_tokens=4, min_new_tokens=4, do_sample=False, pad_token_id=0).shape == (1, 12)


@needs_kernel
def test_a_target_without_kernels_is_told_that_kernels_make_fp8_fit(fp8_8b):
    """On a described card where only the fp8 row fits, the missing `kernels` is the suggestion (re-checked)."""
    from fitplan.hardware.software import Software

    small = _probed(free_gib=12)
    lacks = Hardware(small.gpus, small.cpu_ram_bytes, "file", software=Software(triton=True, kernels=False,
                                                                               declared=("kernels",)))
    plan = _plan(fp8_8b, lacks)
    assert not plan.fits  # bf16 needs ~16 GiB
    texts = plan.suggestions()
    assert any(t.startswith("the kernels package on the target, declared in its hardware file (software: "
                            "{kernels: true}, docs/hardware.md): fp8 then fits") for t in texts), texts
    has = _plan(fp8_8b, Hardware(small.gpus, small.cpu_ram_bytes, "file", software=Software(
        triton=True, kernels=True, declared=("kernels",))))
    assert has.fits and has.precision == "fp8"



NEEDS_TRITON, TRITON_HERE = hf.fp8_needs_triton()  # 5.0: its fp8 integration runs `import triton` at its top


@pytest.mark.skipif(not NEEDS_TRITON or TRITON_HERE, reason=f"transformers {hf.version()} loads fp8 here without "
                    "triton" if not NEEDS_TRITON else "triton is installed here")
def test_without_triton_no_row_is_planned_that_load_refuses(tmp_path, monkeypatch):
    """5.0 without triton loads no fp8 checkpoint, dequantized or not: the plan for this machine rules out every row
    with the reason load() gives (one rule, `prequant.refusal`), the check names what to install, and load()
    refuses in that line, naming the package, before any weight (a real tiny fp8 checkpoint)."""
    import transformers
    from click.testing import CliRunner

    from fitplan.cli.main import main

    save_tiny_fp8(tmp_path / "m")
    model = str(tmp_path / "m")
    cpu = Hardware((), 64 * G, "probe")
    plan = fitplan.plan(model, hardware=cpu, offline=True, context=64)
    reasons = {d.precision: d.rejected_because for d in plan.choice.decisions}
    assert not plan.fits and set(reasons) == {"fp8", "bf16"}
    why = reasons["bf16"]
    assert reasons["fp8"] == why and "imports triton at the top of its fp8 integration" in why
    assert "pip install triton" in why
    assert plan.suggestions() == ["triton installed here (pip install triton): bf16 then fits"]
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", _never)
    with pytest.raises(DependencyError) as err:
        fitplan.load(model, tokenizer=False, context=64, hardware=cpu)
    assert str(err.value) == f"{model}: {why}" and err.value.package == "triton"
    res = CliRunner().invoke(main, ["check", model, "--context", "64", "--json"])
    data = json.loads(res.output)
    assert data["plan"] is None and {r["reason"] for r in data["rejected"]} == {why}
    assert data["suggestions"] == ["triton installed here (pip install triton): bf16 then fits"]


def test_a_described_target_is_planned_with_its_declared_triton(fp8_8b, tmp_path):
    """Whether the fp8 integration needs triton is the installed transformers' (5.0 does); whether the target has
    it is its declaration (`software: {triton: ...}`, default true for a catalogue GPU), not this machine's."""
    from click.testing import CliRunner

    from fitplan.cli.main import main

    def check(*args):
        res = CliRunner().invoke(main, ["check", fp8_8b, "--context", "1024", "--json", *args])
        return json.loads(res.output)

    for card, kept in (("h100", "fp8"), ("a100-80gb", "bf16")):
        f = tmp_path / f"{card}.yaml"
        f.write_text(f"gpus: [{card}]\ncpu_ram: 64GiB\nsoftware: {{triton: true, kernels: true}}\n")
        assert check("--hardware", str(f))["plan"]["precision"] == kept
        f.write_text(f"gpus: [{card}]\ncpu_ram: 64GiB\nsoftware: {{triton: false, kernels: true}}\n")
        data = check("--hardware", str(f))
        if not NEEDS_TRITON:  # 5.17+: its fp8 integration imports no triton; the plan does not depend on it
            assert data["plan"]["precision"] == kept
            assert not any("triton" in r["reason"] for r in data["rejected"])
            continue
        assert data["plan"] is None
        assert {r["precision"] for r in data["rejected"]} == {"fp8", "bf16"}
        assert all("triton is missing on the target" in r["reason"] for r in data["rejected"])
        assert data["suggestions"] == [
            f"triton on the target, declared in its hardware file (software: {{triton: true}}, docs/hardware.md): "
            f"{kept} then fits"]
    if NEEDS_TRITON:  # a catalogue GPU: the documented default, triton installed, whatever this machine has
        assert check("--gpu", "h100")["plan"]["precision"] == "fp8"
