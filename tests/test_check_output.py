"""What `fitplan check` prints is what the user then runs (issue 19, item 5): the from_pretrained class,
contexts past a model's positions, llama.cpp over several GPUs, llama.cpp's own buffers, the KV type,
and a no-fit answer that does not redo the work of a fit."""
from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
from gguf import GGMLQuantizationType as T

from fitplan.gguf import plan_gguf
from fitplan.gguf.runtime import RunConfig, layer_devices, output_bytes, placement, repack_bytes
from fitplan.hardware.machine import GPU, Hardware
from fitplan import calibration as C
from test_gguf_plan import WIDE, wide_model
from tiny_models import FAMILIES

GiB, MiB = 1 << 30, 1 << 20


@pytest.fixture
def env(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


def run(env, *args) -> Result:
    """`fitplan ARGS` through the real command, in this process (the CLI's own tests run subprocesses)."""
    from click.testing import CliRunner

    from fitplan.cli.main import main

    r = CliRunner().invoke(main, list(args))
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        raise r.exception
    return Result(r.exit_code, r.stdout, r.stderr)


@pytest.fixture(autouse=True)
def private_cache(monkeypatch, tmp_path_factory):
    monkeypatch.setenv("FITPLAN_CACHE", str(tmp_path_factory.getbasetemp() / "fitplan-cache"))


# -- the from_pretrained class --------------------------------------------------------------------

def _snippet(stdout: str) -> str:
    """The printed call, from its first line of code (after any lines that set the environment up)."""
    body = stdout.split("from_pretrained arguments:\n", 1)[1]
    return body[body.index("  Auto"):]


def test_a_vision_language_plan_prints_the_class_it_loads_with(llava, env):
    r = run(env, "check", llava, "--gpu", "rtx4090", "--images", "1", "--context", "256")
    assert r.returncode == 0, r.stderr
    assert _snippet(r.stdout).startswith("  AutoModelForImageTextToText.from_pretrained(\n")
    assert "AutoModelForCausalLM.from_pretrained" not in r.stdout


def test_magistral_from_the_catalogue_prints_image_text_to_text(env):
    r = run(env, "check", "mistralai/Magistral-Small-2509", "--gpu", "a100-80gb", "--images", "1")
    assert r.returncode == 0, r.stderr
    assert "  AutoModelForImageTextToText.from_pretrained(\n      'mistralai/Magistral-Small-2509'," in r.stdout


# -- positions ------------------------------------------------------------------------------------

def _save(family: str, path, **override) -> str:
    import torch
    from transformers import AutoModelForCausalLM, CONFIG_MAPPING

    torch.manual_seed(0)
    model_type, kwargs = FAMILIES[family]
    AutoModelForCausalLM.from_config(CONFIG_MAPPING[model_type](**{**kwargs, **override}),
                                     dtype=torch.bfloat16).save_pretrained(path)
    return str(path)


def test_a_learned_position_table_cannot_run_past_its_rows(tmp_path):
    """The premise of the refusal, on the installed transformers: GPT-2 with 64 positions fails to
    generate a 65th token (IndexError), where a rotary model only degrades."""
    import torch
    from transformers import AutoModelForCausalLM

    path = _save("gpt2-conv1d", tmp_path / "gpt2", n_positions=64)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    with pytest.raises(IndexError):
        model.generate(torch.ones((1, 60), dtype=torch.long), max_new_tokens=8, min_new_tokens=8, do_sample=False)


def test_the_model_load_returns_refuses_a_generate_past_its_positions_in_one_line(tmp_path):
    """Plain transformers fails with an IndexError deep in the embedding (above); the model `fitplan.load()`
    returns says the limit first, with any cache, and still generates up to it."""
    import torch

    import fitplan
    from fitplan.errors import PlannedShapeError

    path = _save("gpt2-conv1d", tmp_path / "gpt2", n_positions=64)
    model = fitplan.load(str(path), tokenizer=False, context=64, fast=False)
    ids = torch.ones((1, 60), dtype=torch.long)
    with pytest.raises(PlannedShapeError) as err:
        model.generate(ids, max_new_tokens=8, min_new_tokens=8, do_sample=False)
    assert err.value.tokens == 68 and err.value.context == 64 and "\n" not in str(err.value)
    assert "past the 64 learned absolute positions of" in str(err.value)
    with pytest.raises(PlannedShapeError, match="runs to 70 tokens"):
        model.generate(inputs=ids, max_length=70, do_sample=False)
    out = model.generate(ids, max_new_tokens=4, min_new_tokens=4, do_sample=False, pad_token_id=0)
    assert out.shape == (1, 64)


@pytest.mark.parametrize("family, limit", [("gpt2-conv1d", 256), ("opt", 256)])
def test_absolute_positions_are_read_off_the_built_model(tmp_path, family, limit):
    import fitplan

    path = _save(family, tmp_path / family)
    p = fitplan.plan(path, gpu="rtx4090", context=limit)
    assert p.inventory.position_limit == limit and p.workload.context == limit
    with pytest.raises(fitplan.InputError) as err:
        fitplan.plan(path, gpu="rtx4090", context=limit + 1)
    assert err.value.option == "context" and f"context={limit} or less" in str(err.value)


def test_rotary_models_keep_the_context_and_the_quality_note(tmp_path):
    import fitplan

    path = _save("llama-gqa", tmp_path / "llama", max_position_embeddings=256)
    p = fitplan.plan(path, gpu="rtx4090", context=1024)
    assert p.inventory.position_limit is None and p.workload.context == 1024
    assert any("longer than the 256 positions" in n for n in p.notes)


def test_gpt2_default_context_is_capped_and_a_longer_one_refused(env):
    r = run(env, "check", "gpt2", "--gpu", "rtx4090", "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["workload"]["context"] == 1024
    assert any("context 1024 (not the default 4096)" in n for n in d["notes"])
    r = run(env, "check", "gpt2", "--gpu", "rtx4090", "--context", "4096")
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.strip().count("\n") == 0 and "Traceback" not in r.stderr
    assert "past the 1024 positions" in r.stderr and "--context 1024 or less" in r.stderr
    r = run(env, "check", "gpt2", "--gpu", "rtx4090", "--context", "1024")
    assert r.returncode == 0, r.stderr


def test_a_profile_that_sets_the_context_is_refused_too(env, tmp_path):
    prof = tmp_path / "p.yaml"
    prof.write_text("model: gpt2\nworkload:\n  context: 2048\nhardware:\n  gpus: [rtx4090]\n")
    r = run(env, "check", "--profile", str(prof))
    assert r.returncode == 2 and "past the 1024 positions" in r.stderr
    prof.write_text("model: gpt2\nhardware:\n  gpus: [rtx4090]\n")
    r = run(env, "check", "--profile", str(prof), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["workload"]["context"] == 1024


# -- llama.cpp over several GPUs ------------------------------------------------------------------

def test_layer_split_is_llama_cpps():
    """llama.cpp (src/llama-model.cpp, load_tensors): layer il of the act = ngl offloaded ones goes to
    the first GPU whose cumulative share exceeds (il - i_gpu_start) / act; the output layer is the last."""
    devs = layer_devices(32, 33, (1.0, 1.0))
    assert devs[:17] == (0,) * 17 and devs[17:] == (1,) * 16  # 16/33 < 0.5 <= 17/33; output on GPU 1
    devs = layer_devices(32, 33, (1.0, 3.0))
    assert devs.count(0) == 9 and devs.count(1) == 24  # 8/33 < 0.25 <= 9/33
    devs = layer_devices(32, 20, (1.0, 1.0))
    assert devs[:12] == (None,) * 12 and devs[12:22] == (0,) * 10 and devs[22:32] == (1,) * 10 and devs[32] is None
    assert layer_devices(4, 5, (1.0,)) == (0,) * 5 and layer_devices(4, 2, (1.0,)) == (None, None, 0, 0, None)


def _gpus(n: int, free: int, ram: int = 64 * GiB) -> Hardware:
    return Hardware(tuple(GPU(i, "test GPU", free, free, (8, 6)) for i in range(n)), ram, "file")


def test_two_gpus_hold_what_one_cannot_and_the_commands_say_how():
    model = wide_model()
    run_ = RunConfig(context=8192)
    full = placement(model, run_, WIDE.n_layer + 1)
    half = (full.gpu_total // 2) + C.CUDA_CONTEXT_BYTES + 256 * MiB
    one = plan_gguf(model, _gpus(1, half), context=8192, headroom=0).recommended
    two = plan_gguf(model, _gpus(2, half), context=8192, headroom=0)
    row = two.recommended
    assert not one.full_offload and row.full_offload
    assert row.tensor_split == (round((half - C.CUDA_CONTEXT_BYTES) / GiB, 1),) * 2
    assert len(row.per_gpu) == 2 and all(x <= half for x in row.per_gpu)
    assert sum(row.per_gpu) == row.gpu_total
    ts = ",".join(f"{x:g}" for x in row.tensor_split)
    assert f"-ngl {WIDE.n_layer + 1} -fa on -ts {ts}" in two.server_command()
    assert two.llama_cpp_kwargs()["tensor_split"] == list(row.tensor_split)


def test_mixtral_on_two_rtx3090_is_planned_over_both(env):
    one = json.loads(run(env, "check", "mistralai/Mixtral-8x7B-v0.1", "--gpu", "rtx3090", "--context", "8192",
                         "--json").stdout)["gguf"]
    two = json.loads(run(env, "check", "mistralai/Mixtral-8x7B-v0.1", "--gpu", "2xrtx3090", "--context", "8192",
                         "--json").stdout)["gguf"]
    assert one["recommended"] == "Q2_K"
    assert two["recommended"] in ("Q8_0", "Q6_K", "Q5_K_M") and " -ts " in two["commands"]["llama_server"]
    best = next(r for r in two["rows"] if r["type"] == two["recommended"])
    assert best["full_offload"] and len(best["per_gpu"]) == 2


# -- llama.cpp's own buffers ----------------------------------------------------------------------

def test_the_output_buffer_is_llama_cpps_one_sequence_of_logits():
    """CPU output buffer size = 0.49 MiB for a 128256-token vocabulary (docs/gguf.md, measured)."""
    model = wide_model()
    assert output_bytes(model, RunConfig(context=8192)) == 128256 * 4
    assert output_bytes(model, RunConfig(context=8192, n_parallel=4)) == 4 * 128256 * 4
    c = plan_gguf(model, Hardware((), 32 * GiB, "file"), context=8192)
    assert c.rows[0].output_ram == 128256 * 4 and c.rows[0].python_scores_ram == 512 * 128256 * 4
    assert any("scores array" in n for n in c.notes)


def test_repacked_weights_are_planned_or_loaded_without_mmap():
    q4 = wide_model()
    repacked = sum(t.nbytes for t in q4.tensors if t.layer is not None and len(t.shape) == 2) + q4.tensor(
        "output.weight").nbytes
    assert sum(repack_bytes(t) for t in q4.tensors) == repacked
    assert repack_bytes(q4.tensor("token_embd.weight")) == 0
    q8 = wide_model(t=T.Q8_0, file_type="Q8_0")
    assert sum(repack_bytes(t) for t in q8.tensors) == 0
    roomy = plan_gguf(q4, Hardware((), 64 * GiB, "file"), context=8192, headroom=0).rows[0]
    assert roomy.repack_ram == repacked and not roomy.no_mmap
    assert roomy.ram_total - roomy.repack_ram == placement(q4, RunConfig(context=8192), 0, gpu=False,
                                                           mmap=False).ram_total
    tight = plan_gguf(q4, Hardware((), roomy.ram_total - 1, "file"), context=8192, headroom=0)
    row = tight.rows[0]
    assert row.fits and row.no_mmap and row.repack_ram == 0
    assert tight.server_command().endswith("--no-mmap") and tight.llama_cpp_kwargs()["use_mmap"] is False


def test_kv_type_is_an_option_with_its_flag_profile_key_and_lock_field(env, tmp_path):
    import fitplan
    from fitplan.options import env_var, fields_by_name
    from fitplan.profiles.schema import SETTINGS

    assert SETTINGS["kv_type"] == ("workload", "kv_type") and env_var("kv_type") == "FITPLAN_KV_TYPE"
    assert fields_by_name()["kv_type"].metadata["choices"] == ("f16", "q8_0", "q4_0")
    with pytest.raises(fitplan.InputError):
        fitplan.plan("gpt2", gpu="rtx4090", kv_type="q3_k")
    args = ("check", "meta-llama/Llama-3.1-8B-Instruct", "--gpu", "rtx3060", "--context", "65536", "--json")
    f16 = json.loads(run(env, *args).stdout)["gguf"]
    q8 = json.loads(run(env, *args, "--kv-type", "q8_0").stdout)["gguf"]
    assert q8["kv_type"] == "q8_0" and "-ctk q8_0 -ctv q8_0" in q8["commands"]["llama_server"]
    kv = {r["type"]: r["kv_gpu"] + r["kv_ram"] for r in f16["rows"]}
    assert all(r["kv_gpu"] + r["kv_ram"] == kv[r["type"]] * 17 // 32 for r in q8["rows"])
    prof = tmp_path / "p.yaml"
    prof.write_text("model: meta-llama/Llama-3.1-8B-Instruct\nworkload:\n  context: 4096\n  kv_type: q4_0\n"
                    "hardware:\n  gpus: [rtx4090]\n")
    r = run(env, "lock", str(prof))
    assert r.returncode == 0, r.stderr
    from fitplan.profiles.lock import read_lock

    assert read_lock(tmp_path / "p.lock.yaml").kv_type == "q4_0"


# -- a no-fit answer does not redo a fit's work ---------------------------------------------------

def test_a_no_fit_plan_builds_ggufs_name_map_once_and_walks_each_precision_once(monkeypatch):
    """Speed is measured in benchmarks/nofit_speed.py; this holds the two costs that made a no-fit
    check of a large MoE slow: gguf's tensor-name map built per file type, and every tensor walked
    again for each suggestion re-checked."""
    import gguf

    import fitplan
    from fitplan.planning import estimate

    maps, walks = [], []
    real_map, real_walk = gguf.get_tensor_name_map, estimate._by_layer
    monkeypatch.setattr(gguf, "get_tensor_name_map", lambda *a: maps.append(a) or real_map(*a))
    monkeypatch.setattr(estimate, "_by_layer", lambda inv, prec, per: walks.append((id(inv), prec.name, per))
                        or real_walk(inv, prec, per))
    p = fitplan.plan("Qwen/Qwen3-30B-A3B", gpu="rtx3060", context=32768)
    assert not p.fits and p.advice and len(p.gguf.rows) == 8
    assert len(maps) == 1
    # the per-layer grouping of a precision's tensors is done once per sizing, however many suggestions
    # re-check the policy (before: once per decision of every re-check)
    assert len(p.choice.decisions) <= len(walks) <= 3 * len(p.choice.decisions), len(walks)


def test_a_lock_of_a_capped_default_context_is_followed(env, tmp_path):
    from fitplan.pipeline import plan_for_load
    from fitplan.hardware.catalogue import hardware_from_gpu_flag

    prof = tmp_path / "gpt2.yaml"
    prof.write_text("model: gpt2\nhardware:\n  gpus: [rtx4090]\n")
    r = run(env, "lock", str(prof))
    assert r.returncode == 0, r.stderr
    plan = plan_for_load(profile=str(prof), hardware=hardware_from_gpu_flag("rtx4090", 64 << 30))
    assert plan.pin is not None and plan.options.context == 1024


# -- a no-fit without suggestions -----------------------------------------------------------------

@pytest.mark.parametrize("ram, header", [("12GiB", False), ("24GiB", True)])
def test_what_would_make_it_fit_is_printed_only_with_something_under_it(env, tmp_path, ram, header):
    """A CPU machine whose RAM is below the 16-bit weights alone (bitsandbytes rows are not offered on a CPU unless
    asked for) has nothing fitplan can change to suggest: no header with nothing under it. With the weights in RAM,
    a shorter context is suggested under the header."""
    hw = tmp_path / "cpu.yaml"
    hw.write_text(f"gpus: []\ncpu_ram: {ram}\n")
    r = run(env, "check", "meta-llama/Llama-3.1-8B", "--hardware", str(hw), "--context", "131072")
    assert r.returncode == 1 and "NO FIT" in r.stdout
    lines = r.stdout.splitlines()
    assert ("what would make it fit:" in lines) is header
    if header:
        assert lines[lines.index("what would make it fit:") + 1].startswith("  - ")
