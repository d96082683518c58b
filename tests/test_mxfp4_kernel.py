"""gpt-oss's mxfp4 kernel: to keep mxfp4 packed on a GPU, `from_pretrained` fetches a Hub kernel inside
`replace_with_mxfp4_linear` (every version from 5.0, with or without `use_kernels`). Offline and not cached, that
is a ValueError after the model was built; `fitplan.load()` finds it first and loads the kernel-less path
(mxfp4 dequantized to bf16, planned at that size) with one note, or refuses in one line when that does not fit.

The CPU cannot keep mxfp4, so the plan is made for a probed H100 whose software has triton and `kernels`
(`hf.mxfp4_kernels`, as tests/test_software.py does), and the kernel cache is pointed at a fake."""
from __future__ import annotations

import pytest

import fitplan
from fitplan.errors import DoesNotFitError
from fitplan.hardware.catalogue import find_gpu
from fitplan.hardware.machine import Hardware
from fitplan.model import hf
from fitplan.runtime.load import mxfp4_kernel_fallback

G = 1 << 30
GPT_OSS = "openai/gpt-oss-20b"  # shipped config and headers: answers offline


def _probed(card: str) -> Hardware:
    """This machine as the probe would see it with `card` in it (the kernel cache is this machine's)."""
    return Hardware(gpus=(find_gpu(card).to_gpu(0),), cpu_ram_bytes=64 * G, source="probe")


def _replan(hw):
    return fitplan.plan(GPT_OSS, hardware=hw, offline=True)


@pytest.fixture
def target_keeps_mxfp4(monkeypatch):
    """triton and `kernels` present (what transformers checks before it keeps mxfp4), the Hub offline, and a
    fake kernel cache that holds what `cached` lists."""
    from huggingface_hub import constants

    monkeypatch.setattr(hf, "mxfp4_kernels", lambda: (True, True))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    cached: set = set()
    monkeypatch.setattr(hf, "kernel_cached", lambda repo_id, ref: (repo_id, ref) in cached)
    return cached


def test_the_kernel_is_the_one_the_installed_transformers_fetches():
    # read by calling replace_with_mxfp4_linear with get_kernel replaced: each version's own repo
    expected = (("kernels-community/triton_kernels", "main") if hf.version_tuple() < (5, 17) else
                ("kernels-community/gpt-oss-triton-kernels", "v1"))
    assert hf.mxfp4_kernel_repo() == expected


def test_offline_and_not_cached_loads_dequantized_planned_at_that_size(target_keeps_mxfp4):
    plan = _replan(_probed("h100"))
    assert plan.precision == "mxfp4"
    new, note = mxfp4_kernel_fallback(plan, _replan)
    repo_id, ref = hf.mxfp4_kernel_repo()
    assert new.precision == "bf16" and new.fits
    assert new.decision.estimate.weights_bytes > 2 * plan.decision.estimate.weights_bytes  # 4-bit experts -> bf16
    assert note.startswith(f"loaded mxfp4 dequantized to bf16 (Mxfp4Config(dequantize=True)), planned at that "
                           f"size: the Hub kernel {repo_id} {ref} is not in the local kernel cache and the Hub is "
                           "offline (HF_HUB_OFFLINE)")
    assert f"install_kernel('{repo_id}'," in note


def test_a_cached_kernel_keeps_mxfp4(target_keeps_mxfp4):
    target_keeps_mxfp4.add(hf.mxfp4_kernel_repo())
    plan = _replan(_probed("h100"))
    assert mxfp4_kernel_fallback(plan, _replan) == (plan, None)


def test_when_dequantized_does_not_fit_it_refuses_in_one_line_naming_the_kernel(target_keeps_mxfp4):
    plan = _replan(_probed("a100-40gb"))  # 40 GB: mxfp4 fits, ~39 GiB of bf16 weights do not
    assert plan.precision == "mxfp4"
    with pytest.raises(DoesNotFitError) as err:
        mxfp4_kernel_fallback(plan, _replan)
    repo_id, ref = hf.mxfp4_kernel_repo()
    text = str(err.value)
    assert "\n" not in text and f"mxfp4 needs the Hub kernel {repo_id} {ref}" in text
    assert "dequantized (the path without it) it does not fit" in text and "install_kernel(" in text


def test_a_load_refuses_before_any_weight_is_read(target_keeps_mxfp4, monkeypatch):
    """Through `fitplan.load()`: the refusal comes before from_pretrained is called."""
    import transformers

    def never(*args, **kwargs):
        raise AssertionError("from_pretrained was called")

    from fitplan.hardware import probe

    card = _probed("a100-40gb")
    monkeypatch.setattr(probe, "probe", lambda: card)  # load() reads free memory again just before loading
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", never)
    with pytest.raises(DoesNotFitError, match="mxfp4 needs the Hub kernel"):
        fitplan.load(GPT_OSS, hardware=card, tokenizer=False, offline=True)


def test_unreachable_hub_is_found_before_loading(target_keeps_mxfp4, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hf, "fetch_kernel", lambda repo_id, ref: "Cannot reach the Hub")
    new, note = mxfp4_kernel_fallback(_replan(_probed("h100")), _replan)
    assert new.precision == "bf16" and "fetching it failed (Cannot reach the Hub)" in note
    monkeypatch.setattr(hf, "fetch_kernel", lambda repo_id, ref: None)  # fetched now: mxfp4 stays
    plan = _replan(_probed("h100"))
    assert mxfp4_kernel_fallback(plan, _replan) == (plan, None)


def test_the_dequantize_config_is_a_loading_attribute_transformers_merges():
    """What load() passes: transformers merges `dequantize` into the checkpoint's own mxfp4 config."""
    from transformers.quantizers.auto import AutoHfQuantizer

    merged = AutoHfQuantizer.merge_quantization_configs({"quant_method": "mxfp4"}, hf.dequantized_config("mxfp4"))
    assert type(merged).__name__ == "Mxfp4Config" and merged.dequantize is True


def test_plans_that_do_not_keep_mxfp4_are_left_alone(target_keeps_mxfp4):
    monkeypatch_free = _replan(Hardware((), 256 * G, "probe"))  # the CPU dequantizes mxfp4 anyway
    assert mxfp4_kernel_fallback(monkeypatch_free, _replan) == (monkeypatch_free, None)
    dense = fitplan.plan("Qwen/Qwen3-8B", hardware=_probed("h100"), offline=True)
    assert mxfp4_kernel_fallback(dense, _replan) == (dense, None)


def test_the_plan_names_the_mxfp4_kernel_where_it_keeps_mxfp4(tmp_path):
    """In the check table and --json (`hub_kernels.mxfp4`), like the layer kernels: for a target that keeps mxfp4
    (its declared software), with the cache state unseen from here; none where mxfp4 is dequantized."""
    import json

    from click.testing import CliRunner

    from fitplan.cli.main import main

    repo_id, ref = hf.mxfp4_kernel_repo()
    keeps = tmp_path / "keeps.yaml"
    keeps.write_text("gpus: [h100]\ncpu_ram: 64GiB\nsoftware: {triton: true, kernels: true}\n")
    lacks = tmp_path / "lacks.yaml"
    lacks.write_text("gpus: [h100]\ncpu_ram: 64GiB\nsoftware: {triton: true, kernels: false}\n")
    data = json.loads(CliRunner().invoke(main, ["check", GPT_OSS, "--hardware", str(keeps), "--json"]).output)
    assert data["plan"]["precision"] == "mxfp4"
    assert data["hub_kernels"]["mxfp4"] == {"repo_id": repo_id, "ref": ref, "layers": ["Mxfp4GptOssExperts"],
                                            "cached": None}
    text = " ".join(CliRunner().invoke(main, ["check", GPT_OSS, "--hardware", str(keeps)]).output.split())
    assert f"mxfp4 experts: {repo_id} {ref} (cache not seen from here)" in text
    data = json.loads(CliRunner().invoke(main, ["check", GPT_OSS, "--hardware", str(lacks), "--json"]).output)
    assert data["plan"]["precision"] == "bf16" and data["hub_kernels"]["mxfp4"] is None
    # the printed call is what load() passes for a dequantized row
    text = CliRunner().invoke(main, ["check", GPT_OSS, "--hardware", str(lacks)]).output
    assert "quantization_config=Mxfp4Config(dequantize=True)," in text


def test_a_lock_that_pins_mxfp4_is_refused_in_one_line_not_loaded_otherwise(target_keeps_mxfp4, monkeypatch,
                                                                             tmp_path):
    """A locked deployment is not silently changed to bf16: without the kernel, load(profile=) says what to do."""
    import transformers
    from click.testing import CliRunner

    from fitplan.cli.main import main
    from fitplan.hardware import probe

    prof = tmp_path / "p.yaml"
    prof.write_text(f"model: {GPT_OSS}\nhardware: {{gpus: [h100], cpu_ram: 64GiB, software: {{triton: true, "
                    "kernels: true}}\n")
    res = CliRunner().invoke(main, ["lock", str(prof)])
    assert res.exit_code == 0 and "mxfp4" in res.output, res.output
    card = _probed("h100")
    monkeypatch.setattr(probe, "probe", lambda: card)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained",
                        lambda *a, **k: (_ for _ in ()).throw(AssertionError("from_pretrained was called")))
    with pytest.raises(DoesNotFitError) as err:
        fitplan.load(profile=str(prof), hardware=card, tokenizer=False)
    repo_id, ref = hf.mxfp4_kernel_repo()
    assert f"mxfp4 needs the Hub kernel {repo_id} {ref}" in str(err.value)
    assert f"the lock {tmp_path / 'p.lock.yaml'} pins mxfp4" in str(err.value) and "\n" not in str(err.value)


def _tiny_mxfp4(path) -> str:
    """A random-weight gpt-oss checkpoint whose experts are stored in mxfp4 (blocks and scales), as gpt-oss ships."""
    import json

    import torch
    from safetensors.torch import load_file, save_file
    from transformers import CONFIG_MAPPING, AutoModelForCausalLM

    torch.manual_seed(0)
    hidden, inter, experts = 256, 256, 4
    cfg = CONFIG_MAPPING["gpt_oss"](hidden_size=hidden, intermediate_size=inter, num_hidden_layers=2,
                                    num_attention_heads=4, num_key_value_heads=2, head_dim=64,
                                    num_local_experts=experts, num_experts_per_tok=2, vocab_size=512,
                                    sliding_window=128, layer_types=["sliding_attention", "full_attention"],
                                    tie_word_embeddings=False)
    AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16).save_pretrained(path)
    tensors = load_file(path / "model.safetensors")
    g = torch.Generator().manual_seed(1)
    for name in [n for n in tensors if n.endswith(("mlp.experts.gate_up_proj", "mlp.experts.down_proj"))]:
        out, inp = (2 * inter, hidden) if name.endswith("gate_up_proj") else (hidden, inter)
        del tensors[name]
        tensors[f"{name}_blocks"] = torch.randint(0, 256, (experts, out, inp // 32, 16), dtype=torch.uint8, generator=g)
        tensors[f"{name}_scales"] = torch.full((experts, out, inp // 32), 124, dtype=torch.uint8)  # 2**-3
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((path / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "mxfp4", "modules_to_not_convert": [
        "model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"]}
    (path / "config.json").write_text(json.dumps(config))
    return str(path)


def test_a_dequantized_plan_loads_dequantized_whatever_is_installed(tmp_path, monkeypatch):
    """A real CPU load: the plan dequantizes mxfp4 there, and load() passes Mxfp4Config(dequantize=True), so
    transformers takes that path even where it would keep mxfp4 and fetch its kernel (5.25 on a CPU with
    triton >= 3.5 and `kernels`: emulated here, with the kernel fetch failing as it does offline)."""
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.integrations import hub_kernels
    from transformers.quantizers import quantizer_mxfp4

    path = _tiny_mxfp4(tmp_path / "gpt-oss")
    monkeypatch.setattr(quantizer_mxfp4, "is_triton_available", lambda *a, **k: True)
    monkeypatch.setattr(quantizer_mxfp4, "is_kernels_available", lambda *a, **k: True)
    fetched = []

    def offline(repo_id, *args, **kwargs):
        fetched.append(repo_id)
        raise ValueError(f"{repo_id} is not available in the local cache and Hugging Face Hub is in offline mode")

    monkeypatch.setattr(hub_kernels, "get_kernel", offline)
    if hf.version_tuple() >= (5, 25):  # what a user without fitplan gets there
        with pytest.raises(ValueError, match="offline mode"):
            AutoModelForCausalLM.from_pretrained(path)
        fetched.clear()
    model = fitplan.load(path, tokenizer=False, context=64, hardware=Hardware((), 64 * G, "probe"))
    plan = model.fitplan.plan
    assert plan.precision == "bf16" and fetched == []
    assert type(model.model.layers[0].mlp.experts).__name__ == "GptOssExperts"  # dense, not Mxfp4GptOssExperts
    assert model.model.layers[0].mlp.experts.gate_up_proj.dtype == torch.bfloat16
    assert model.fitplan.measured_weights == model.fitplan.predicted_weights  # the path it sized
    ids = torch.randint(5, 500, (1, 8))
    assert model.generate(ids, max_new_tokens=4, min_new_tokens=4, do_sample=False, pad_token_id=0).shape == (1, 12)


#: What each release needs to keep mxfp4 packed on the CPU, from its quantizer_mxfp4.py (validate_environment and
#: _process_model_before_weight_loading): 5.0 never (no GPU seen: dequantize); 5.17 .. 5.24 triton >= 3.5.0,
#: `kernels` and use_kernels=True; 5.25 triton >= 3.5.0 and `kernels` (use_kernels is no longer consulted).
CPU_NEEDS = {(5, 0): None, (5, 17): "triton>=3.5.0, the kernels package and use_kernels=True",
             (5, 25): "triton>=3.5.0 and the kernels package,"}


def test_the_cpu_reason_is_the_installed_transformers_own_requirement():
    """The mxfp4 row of a CPU plan is ruled out with what the installed release needs to keep mxfp4 packed there,
    and says that fitplan loads it dequantized, not an older release's words ("unless use_kernels=True")."""
    plan = fitplan.plan(GPT_OSS, hardware=Hardware((), 256 * G, "probe"), offline=True)
    why = plan.choice.decisions[0].rejected_because
    assert plan.choice.decisions[0].precision == "mxfp4" and plan.choice.decisions[1].rejected_because != why
    needs = CPU_NEEDS[max(v for v in CPU_NEEDS if v <= hf.version_tuple()[:2])]
    if needs is None:
        assert why == (f"transformers {hf.version()} keeps mxfp4 packed only on a GPU (compute capability 7.5 or "
                       "newer) and dequantizes it on the CPU")
        return
    assert why.startswith(f"transformers {hf.version()} keeps mxfp4 packed on the CPU only with {needs}")
    assert why.endswith("on the CPU fitplan loads it dequantized (Mxfp4Config(dequantize=True))")
    assert ("use_kernels" in why) == ("use_kernels" in needs)


def test_what_the_cpu_reason_reads_is_what_from_pretrained_does(tmp_path, monkeypatch):
    """`hf.mxfp4_on_cpu()` against transformers itself: a tiny mxfp4 checkpoint loaded on this CPU with triton and
    `kernels` reported present (the kernel fetch recorded and refused, as offline), and use_kernels left off
    (the default before 5.25): it keeps mxfp4, asking for its kernel, exactly where the reading says no
    use_kernels=True is needed; otherwise it dequantizes and asks for nothing."""
    from transformers import AutoModelForCausalLM
    from transformers.integrations import hub_kernels
    from transformers.quantizers import quantizer_mxfp4

    path = _tiny_mxfp4(tmp_path / "gpt-oss")
    needs = hf.mxfp4_on_cpu()
    monkeypatch.setattr(quantizer_mxfp4, "is_triton_available", lambda *a, **k: True)
    monkeypatch.setattr(quantizer_mxfp4, "is_kernels_available", lambda *a, **k: True)
    fetched = []

    def offline(repo_id, *args, **kwargs):
        fetched.append(repo_id)
        raise ValueError("offline")

    monkeypatch.setattr(hub_kernels, "get_kernel", offline)
    kwargs = {} if hf.version_tuple() >= (5, 25) else {"use_kernels": False}  # 5.25 defaults to True
    if needs is not None and not needs[2]:
        with pytest.raises(ValueError, match="offline"):
            AutoModelForCausalLM.from_pretrained(path, **kwargs)
        assert fetched
        return
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    assert type(model.model.layers[0].mlp.experts).__name__ == "GptOssExperts" and fetched == []
