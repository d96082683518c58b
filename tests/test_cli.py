"""The `fitplan` command as users and CI gates run it: real subprocesses, real exit codes."""
from __future__ import annotations

import json

import pytest

from cli_process import process_env, run

from tiny_models import save_tiny

MODEL = "meta-llama/Llama-3.1-8B-Instruct"  # in the shipped catalogue: answers offline
PRECISIONS = ["fp32", "bf16", "fp16", "int8", "nf4", "nf4-dq", "fp4", "fp4-dq"]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return process_env(tmp_path_factory.mktemp("cache"))


def test_check_fits_prints_table_plan_and_arguments(env):
    r = run(env, "check", MODEL, "--gpu", "rtx4090", "--context", "4096")
    assert r.returncode == 0, r.stderr
    for p in PRECISIONS:
        assert f"\n{p:10} " in r.stdout
    assert "plan      bf16 weights" in r.stdout
    assert ("AutoModelForCausalLM.from_pretrained(\n      'meta-llama/Llama-3.1-8B-Instruct',\n"
            "      dtype=torch.bfloat16,\n      device_map={'': 0},\n  )") in r.stdout
    assert "rejected" in r.stdout and "fp16" in r.stdout


def test_json_has_the_documented_shape(env):
    r = run(env, "check", MODEL, "--gpu", "rtx3060", "--context", "8192", "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["model"]["parameters"] == 8_030_261_248
    assert [e["precision"] for e in d["estimates"]] == PRECISIONS
    for e in d["estimates"]:
        assert set(e) >= {"precision", "weights_bytes", "kv_cache_bytes", "activation_bytes", "overhead_bytes",
                          "total_bytes", "fits"}
        assert e["total_bytes"] == e["weights_bytes"] + e["kv_cache_bytes"] + e["activation_bytes"] + e["overhead_bytes"]
    plan = d["plan"]
    assert plan["precision"] in ("nf4", "nf4-dq", "fp4", "fp4-dq")
    assert plan["compute_dtype"] == "bfloat16"
    kw = plan["from_pretrained_kwargs"]
    assert kw["device_map"] == {"": 0} and kw["quantization_config"]["load_in_4bit"] is True
    assert plan["max_memory"] is None
    assert {x["precision"] for x in d["rejected"]} == set(PRECISIONS) - {plan["precision"]}


def test_two_gpus_split_with_max_memory(env):
    r = run(env, "check", "meta-llama/Llama-3.1-70B-Instruct", "--gpu", "2xa100-80gb", "--context", "4096", "--json")
    d = json.loads(r.stdout)
    assert r.returncode == 0, r.stderr
    assert d["plan"]["from_pretrained_kwargs"]["device_map"] == "auto"
    assert set(d["plan"]["max_memory"]) == {"0", "1"}


def test_nothing_fits_exits_1_with_suggestions(env):
    r = run(env, "check", "meta-llama/Llama-3.1-70B-Instruct", "--gpu", "rtx3060")
    assert r.returncode == 1
    assert "NO FIT" in r.stdout and "what would make it fit" in r.stdout
    d = json.loads(run(env, "check", "meta-llama/Llama-3.1-70B-Instruct", "--gpu", "rtx3060", "--json").stdout)
    assert d["plan"] is None and d["suggestions"]


def test_local_folder_is_read_without_weights(env, tmp_path):
    path = save_tiny("llama-gqa", tmp_path / "m")
    r = run(env, "check", str(path), "--gpu", "t4", "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["model"]["origin"] == "local" and d["compute_dtype"] == "float16"


@pytest.mark.parametrize("args,needle", [
    (["check", MODEL, "--gpu", "rtx9090"], "unknown GPU"),
    (["check", MODEL, "--gpu", "rtx4090", "--headroom", "150%"], "headroom"),
    (["check", MODEL, "--gpu", "rtx4090", "--precision", "int3"], "--precision"),
    (["check", "./does-not-exist", "--gpu", "rtx4090"], "no such folder"),
    (["check", MODEL, "--gpu", "rtx4090", "--hardware", "x.yaml"], "not both"),
    (["check", "some-org/not-in-catalogue", "--gpu", "rtx4090", "--offline"], "offline"),
    (["check"], "MODEL"),
])
def test_bad_input_is_one_line_exit_2(env, args, needle):
    r = run(env, *args)
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fitplan: error:") and needle in lines[0], r.stderr
    assert "Traceback" not in r.stderr


def test_bad_config_json_is_one_line(env, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": -5}))
    r = run(env, "check", str(tmp_path), "--gpu", "rtx4090")
    assert r.returncode == 2 and "hidden_size" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_verify_without_gpu_exits_2(env):
    pytest.importorskip("torch")
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    r = run(env, "verify", MODEL)
    assert r.returncode == 2 and "needs a CUDA GPU" in r.stderr


def test_gpus_lists_the_catalogue(env):
    r = run(env, "gpus")
    assert r.returncode == 0 and "rtx4090" in r.stdout and "h100-sxm" in r.stdout


def test_a_folder_named_two_ways_is_one_cache_entry(tmp_path, monkeypatch):
    """`./m` and `/abs/m` are the same model: the second plan reads the first one's inventory."""
    import os

    from fitplan.model import cache
    from tiny_models import config_dict

    monkeypatch.setenv("FITPLAN_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config_dict("llama-gqa")))
    built = []
    monkeypatch.chdir(tmp_path)
    real = cache.get_inventory

    def spy(*a, **kw):
        kw["on_build"] = built.append
        return real(*a, **kw)

    monkeypatch.setattr("fitplan.pipeline.get_inventory", spy)
    import fitplan

    fitplan.plan("./m", gpu="rtx4090")
    fitplan.plan(str(folder.resolve()), gpu="rtx4090")
    fitplan.plan("m" + os.sep, gpu="rtx4090")
    assert len(built) == 1


def test_bare_fitplan_prints_help_and_succeeds(env):
    r = run(env)
    assert r.returncode == 0 and "Commands:" in r.stdout and r.stderr == ""


def test_probe_json_is_json_and_nothing_else_on_stdout(env):
    r = run(env, "probe", "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)  # notes went to stderr and into the JSON, not after it
    assert set(d) >= {"gpus", "cpu_ram_bytes", "notes"}
    assert all(f"note: {n}" in r.stderr for n in d["notes"])


# -- what the output says means what it says ---------------------------------------------------------

def test_json_fits_means_fits_in_memory_and_chosen_says_which(env):
    d = json.loads(run(env, "check", MODEL, "--gpu", "rtx4090", "--context", "4096", "--json").stdout)
    rows = {e["precision"]: e for e in d["estimates"]}
    assert rows["bf16"]["chosen"] and rows["bf16"]["rejected_because"] is None
    fp16 = rows["fp16"]  # the same size as bf16: it fits, and was not chosen for another reason
    assert fp16["fits"] and not fp16["chosen"] and "bf16 is preferred" in fp16["rejected_because"]
    assert fp16["reason"].startswith("fits on GPU 0")
    assert not rows["fp32"]["fits"] and "more than the" in rows["fp32"]["reason"]
    assert sum(e["chosen"] for e in d["estimates"]) == 1
    assert {x["precision"]: x["reason"] for x in d["rejected"]}["fp16"] == fp16["rejected_because"]
    assert rows["bf16"]["speed"]["decode_tokens_per_s"] > 0 and d["plan"]["speed"] == rows["bf16"]["speed"]


@pytest.mark.parametrize("args,dtype", [(["--gpu", "rtx4090", "--precision", "fp16"], "float16"),
                                        (["--gpu", "rtx4090", "--precision", "nf4"], "bfloat16"),
                                        (["--gpu", "t4", "--precision", "nf4"], "float16")])
def test_compute_dtype_is_what_from_pretrained_gets(env, args, dtype):
    d = json.loads(run(env, "check", "meta-llama/Llama-3.2-1B", *args, "--json").stdout)
    assert d["compute_dtype"] == d["plan"]["compute_dtype"] == dtype
    kw = d["plan"]["from_pretrained_kwargs"]
    assert kw.get("quantization_config", {}).get("bnb_4bit_compute_dtype", kw["dtype"]) == dtype


def test_compute_dtype_on_the_cpu_is_float32(env, tmp_path):
    hw = tmp_path / "cpu.yaml"
    hw.write_text("gpus: []\ncpu_ram: 64GiB\n")
    d = json.loads(run(env, "check", "meta-llama/Llama-3.2-1B", "--hardware", str(hw), "--json").stdout)
    assert d["plan"]["precision"] == "fp32" and d["compute_dtype"] == "float32"


def test_a_forced_precision_that_does_not_fit_says_so_about_that_precision(env):
    r = run(env, "check", MODEL, "--gpu", "rtx3060", "--precision", "fp16")
    assert r.returncode == 1
    summary = " ".join(r.stdout.split("NO FIT", 1)[1].split("  fp32 ")[0].split())
    wrapped = r.stdout.split("NO FIT", 1)[1].split("\n  fp32 ")[0].splitlines()[1:]
    assert wrapped and all(line.startswith(" " * 10) and line[10] != " " for line in wrapped)  # under its text
    assert "fp16 needs" in summary and "nf4-dq" not in summary and "smallest" not in summary
    assert "drop --precision" in r.stdout


#: (arguments, the exit code they must give, or "falcon" for the version-dependent one): fitting plans print
#: their call, which must parse.
#: The offload case describes its RAM in a hardware file, so the answer is the same on every machine.
WIDTH_CASES = [
    ([MODEL, "--gpu", "rtx4090"], 0),
    ([MODEL, "--gpu", "rtx3060", "--precision", "fp16"], 1),
    (["meta-llama/Llama-3.1-70B-Instruct", "--hardware", "{two_4090_512g}", "--context", "8192", "--offload"], 0),
    (["meta-llama/Llama-3.1-70B-Instruct", "--gpu", "2xa100-80gb", "--context", "4096", "--precision", "nf4-dq"], 0),
    (["google/gemma-2-2b", "--gpu", "h100", "--context", "16384"], 0),
    # before 5.5 transformers packs FalconLinear in 4-bit, so nf4 fits the 12 GB card; from 5.5 nothing is packed
    (["tiiuae/falcon-7b", "--gpu", "rtx3060"], "falcon"),
]


@pytest.mark.parametrize("args,code", WIDTH_CASES)
def test_plain_output_fits_in_100_columns_and_the_call_is_python(env, tmp_path, args, code):
    import ast
    import textwrap

    from fitplan.model import hf

    if code == "falcon":
        code = 1 if hf.version_tuple() >= hf.EXACT_LINEAR_SINCE else 0
    hw = tmp_path / "hw.yaml"
    hw.write_text("gpus: [2x rtx4090]\ncpu_ram: 512GiB\n")
    r = run(env, "check", *(a.format(two_4090_512g=hw) for a in args))
    assert r.returncode == code, (r.stdout[-2000:], r.stderr)
    too_long = [line for line in r.stdout.splitlines() if len(line) > 100]
    assert not too_long, too_long
    if code == 0:
        call = r.stdout.split("from_pretrained arguments:\n", 1)[1].split("\n  )\n", 1)[0] + "\n  )"
        ast.parse(textwrap.dedent(call))
    else:
        assert "NO FIT" in r.stdout and "from_pretrained arguments:" not in r.stdout


def test_a_note_says_why_4bit_saves_little(env):
    d = json.loads(run(env, "check", "allenai/OLMoE-1B-7B-0924", "--gpu", "rtx4090", "--json").stdout)
    saving = [n for n in d["notes"] if n.startswith("4-bit keeps")]
    assert len(saving) == 1 and "97%" in saving[0] and "fused 3-D parameters" in saving[0] and "GGUF" in saving[0]
    falcon = json.loads(run(env, "check", "tiiuae/falcon-7b", "--gpu", "h100", "--json").stdout)["notes"]
    about = [n for n in falcon if "nn.Linear" in n]
    from fitplan.model import hf

    if hf.version_tuple() >= hf.EXACT_LINEAR_SINCE:  # before 5.5 FalconLinear is quantized
        assert len(about) == 1 and about[0].startswith("4-bit keeps 100%")
    else:
        assert about == []
    plain = json.loads(run(env, "check", MODEL, "--gpu", "rtx4090", "--json").stdout)["notes"]
    assert not any(n.startswith("4-bit keeps") or "eager attention" in n for n in plain)


def test_a_note_says_when_eager_attention_scores_dominate(env):
    notes = json.loads(run(env, "check", "google/gemma-2-2b", "--gpu", "h100", "--context", "16384",
                           "--json").stdout)["notes"]
    eager = [n for n in notes if "eager attention" in n]
    from fitplan.model.build import build_inventory
    from fitplan.model.sources import resolve

    if build_inventory(resolve("google/gemma-2-2b", offline=True).config, model_id="g").attn_implementation != "eager":
        assert eager == []  # Gemma-2 runs SDPA on this transformers (eager from 5.24): no scores to warn of
        return
    assert len(eager) == 1 and "half the context" in eager[0]
    short = json.loads(run(env, "check", "google/gemma-2-2b", "--gpu", "h100", "--context", "2048", "--json").stdout)
    assert not any("eager attention" in n for n in short["notes"])


def test_several_gpus_are_not_suggested_to_who_has_them(env):
    one = json.loads(run(env, "check", "meta-llama/Llama-3.1-70B-Instruct", "--gpu", "rtx4090", "--json").stdout)
    two = json.loads(run(env, "check", "meta-llama/Llama-3.1-70B-Instruct", "--gpu", "2xrtx4090", "--json").stdout)
    assert any("or several GPUs" in s for s in one["suggestions"])
    assert not any("several GPUs" in s for s in two["suggestions"])
    assert any("more GPUs than these" in s for s in two["suggestions"])
