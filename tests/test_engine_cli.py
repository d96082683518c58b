"""Engine plans from `fitplan check`, the API, profiles and locks; bad engine input is one line, exit 2."""
from __future__ import annotations

import json

import pytest

from cli_process import process_env, run

import fitplan
from fitplan.errors import InputError

MODEL = "meta-llama/Llama-3.1-70B-Instruct"  # shipped config: answers offline
SMALL = "meta-llama/Llama-3.1-8B-Instruct"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return process_env(tmp_path_factory.mktemp("cache"))


def test_check_engine_json_has_the_engine_object(env):
    r = run(env, "check", MODEL, "--gpu", "4xh100", "--engine", "vllm", "--context", "32768",
            "--tensor-parallel-size", "4", "--json")
    assert r.returncode == 0, r.stderr
    e = json.loads(r.stdout)["engine"]
    for key in ("name", "version", "tensor_parallel_size", "pipeline_parallel_size", "per_rank",
                "available_kv_cache_bytes", "kv_cache_tokens", "max_concurrency", "max_model_len", "command"):
        assert key in e, key
    assert (e["name"], e["tensor_parallel_size"], e["pipeline_parallel_size"]) == ("vllm", 4, 1)
    assert len(e["per_rank"]) == 4 and all(r["weights_bytes"] > 0 for r in e["per_rank"])
    # 70B in bf16 over 4 ranks: a quarter of ~131 GiB each, plus the padded vocab shards
    assert 32 * 2**30 < e["per_rank"][0]["weights_bytes"] < 34 * 2**30
    assert e["available_kv_cache_bytes"] == min(r["available_kv_cache_bytes"] for r in e["per_rank"])
    assert e["command"] == [f"vllm serve {MODEL} --tensor-parallel-size 4 --pipeline-parallel-size 1 "
                            "--max-model-len 32768 --gpu-memory-utilization 0.9"]


def test_check_engine_text_says_what_the_log_will_say(env):
    r = run(env, "check", MODEL, "--gpu", "4xh100", "--engine", "sglang", "--context", "32768")
    assert r.returncode == 0, r.stderr
    assert "sglang" in r.stdout and "GPU KV cache size:" in r.stdout and "python -m sglang.launch_server" in r.stdout


def test_one_gpu_plan_points_to_tensor_parallelism(env):
    r = run(env, "check", MODEL, "--gpu", "4xh100", "--context", "8192")
    assert "tensor parallel: vLLM" in r.stdout and "--tensor-parallel-size 4" in r.stdout


def test_without_engine_the_json_has_no_engine_key(env):
    r = run(env, "check", SMALL, "--gpu", "h100", "--json")
    assert r.returncode == 0 and "engine" not in json.loads(r.stdout)


@pytest.mark.parametrize("args, words", [
    (["--engine", "vllm", "--tensor-parallel-size", "3"], "does not divide the 64 attention heads"),
    (["--engine", "vllm", "--tensor-parallel-size", "8"], "8 ranks, but the hardware has 4 GPUs"),
    (["--engine", "tgi"], "Invalid value for '--engine'"),
    (["--engine", "vllm", "--gpu-memory-utilization", "1.5"], "--gpu-memory-utilization"),
    (["--engine", "vllm", "--concurrency", "0"], "--concurrency"),
    (["--tensor-parallel-size", "2"], "--tensor-parallel-size is a serving-engine setting; set --engine"),
    (["--engine-version", "0.19"], "--engine-version is a serving-engine setting"),
    (["--engine", "vllm", "--engine-version", "0.10.2"], "predates the oldest release fitplan mirrors (0.11.0"),
    (["--engine", "sglang", "--engine-version", "latest"], "'latest' is not a release number"),
])
def test_bad_engine_input_is_one_line_exit_2(env, args, words):
    r = run(env, "check", MODEL, "--gpu", "4xh100", *args)
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and words in lines[0], lines
    assert "Traceback" not in r.stderr


def test_api_engine_and_several_nodes():
    p = fitplan.plan(MODEL, gpu="2x8xh100", engine="vllm", context=131072, concurrency=8, offline=True,
                     tensor_parallel_size=8, pipeline_parallel_size=2)
    e = p.engine.plan
    assert (e.tensor_parallel_size, e.pipeline_parallel_size, e.nodes) == (8, 2, 2)
    assert e.command[1] == "ray start --head --port 6379" and e.command[-1].endswith("--distributed-executor-backend ray")
    with pytest.raises(InputError, match="gpu_memory_utilization"):
        fitplan.plan(MODEL, gpu="4xh100", engine="vllm", gpu_memory_utilization=0, offline=True)


def test_profile_and_lock_carry_the_engine(tmp_path, env):
    prof = tmp_path / "p.yaml"
    prof.write_text(f"model: {MODEL}\nengine: vllm\nworkload: {{context: 16384, concurrency: 4}}\n"
                    "hardware: {gpus: [4x h100]}\nserving: {tensor_parallel_size: 4, gpu_memory_utilization: 0.85}\n")
    r = run(env, "check", "--profile", str(prof), "--json")
    assert r.returncode == 0, r.stderr
    e = json.loads(r.stdout)["engine"]
    assert (e["tensor_parallel_size"], e["gpu_memory_utilization"], e["concurrency"]) == (4, 0.85, 4)
    r = run(env, "lock", str(prof))
    assert r.returncode == 0, r.stderr
    lock = (tmp_path / "p.lock.yaml").read_text() if (tmp_path / "p.lock.yaml").exists() else \
        next(tmp_path.glob("*.lock*")).read_text()
    assert "engine:" in lock and "tensor_parallel_size: 4" in lock and "vllm serve" in lock


def test_profile_nodes_plan_over_two_nodes_and_the_lock_round_trips(tmp_path, env):
    """`nodes:` in a profile's `hardware:` (the hardware file's key): fitplan chooses TP within a node and PP
    across the two, the lock pins that deployment, and a later check of the same profile agrees with it."""
    prof = tmp_path / "p.yaml"  # DeepSeek-V3 in fp8 (~630 GiB) needs more than the 8 H100s of one node
    prof.write_text("model: deepseek-ai/DeepSeek-V3\nengine: vllm\nworkload: {context: 32768, concurrency: 4}\n"
                    "hardware: {gpus: [16x h100], nodes: 2}\n")
    r = run(env, "check", "--profile", str(prof), "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    e = out["engine"]
    assert (e["tensor_parallel_size"], e["pipeline_parallel_size"], e["nodes"], e["gpus_per_node"]) == (8, 2, 2, 8)
    assert e["command"][1] == "ray start --head --port 6379"
    assert "--distributed-executor-backend ray" in e["command"][-1]
    assert "2 nodes of 8 GPUs" in out["hardware"]["notes"]
    assert "hardware 16 GPUs on 2 nodes)" in run(env, "profile", "validate", str(prof)).stdout
    r = run(env, "lock", str(prof))
    assert r.returncode == 0, r.stderr
    assert "TP 8 x PP 2 on 2 nodes of 8 GPUs" in r.stdout
    lock = tmp_path / "p.lock.yaml"
    assert "nodes: 2" in lock.read_text() and "gpus_per_node: 8" in lock.read_text()
    again = json.loads(run(env, "check", "--profile", str(prof), "--json").stdout)
    assert again["engine"] == e and not [n for n in again["notes"] if "lock" in n], again["notes"]
    shorter = json.loads(run(env, "check", "--profile", str(prof), "--context", "16384", "--json").stdout)
    assert any("engine.max_model_len is 16384 in this check, 32768 in the lock" in n for n in shorter["notes"])


def test_load_refuses_an_engine_lock_in_one_line(tmp_path, env):
    prof = tmp_path / "p.yaml"
    prof.write_text(f"model: {MODEL}\nengine: vllm\nworkload: {{context: 16384}}\nhardware: {{gpus: [4x h100]}}\n")
    assert run(env, "lock", str(prof)).returncode == 0
    from fitplan.errors import FileError

    with pytest.raises(FileError, match="locks a vllm deployment, which fitplan.load\\(\\) does not start: run its "
                                        "command \\(vllm serve "):
        fitplan.load(profile=str(prof), offline=True)


HYBRID = "Qwen/Qwen3-Next-80B-A3B-Instruct"  # shipped config: Gated DeltaNet layers with full attention every 4th


def _hybrid_refused_here() -> str | None:
    """Why the installed transformers cannot inventory HYBRID (5.0 cannot run its forward on the meta device), else
    None: there `fitplan check` refuses it in one line before any engine is planned."""
    from fitplan.errors import UnsupportedModelError
    from fitplan.model.cache import get_inventory
    from fitplan.model.sources import resolve

    src = resolve(HYBRID, offline=True)
    try:
        get_inventory(src.config, model_id=src.model_id, stored_bytes=None, stored_parameters=None, auto_class=None)
    except UnsupportedModelError as exc:
        return str(exc)
    return None


def _one_line_exit_2(r, *words):
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and all(w in lines[0] for w in words), lines
    assert "Traceback" not in r.stderr


def test_hybrid_model_plans_on_vllm_with_its_state_pool(env):
    args = ("check", HYBRID, "--gpu", "4xh100", "--engine", "vllm", "--tensor-parallel-size", "4", "--context", "65536")
    r = run(env, *args, "--engine-version", "0.11.0", "--json")
    if (why := _hybrid_refused_here()) is not None:
        return _one_line_exit_2(r, why)
    assert r.returncode == 0, r.stderr
    e = json.loads(r.stdout)["engine"]
    assert e["version"] == "0.11.0"
    # one KV head of 256 per rank, bf16: 1024 bytes a token a layer; a state page per rank is 274,432 bytes, so vLLM
    # raises the attention block to 16 x cdiv(274432, 16 x 1024) = 272 tokens
    assert e["block_size"] == 272 and e["kv_bytes_per_token"] == 12 * 1024
    assert e["kv_cache_tokens"] > 0 and e["max_concurrency"] > 1
    assert any("Gated DeltaNet" in n for n in e["notes"])
    assert e["command"] == [f"vllm serve {HYBRID} --tensor-parallel-size 4 --pipeline-parallel-size 1 "
                            "--max-model-len 65536 --gpu-memory-utilization 0.9"]
    # at the default, the newest mirrored release (0.19.0, whose state pool fitplan does not mirror): one line
    # naming the release that plans it
    _one_line_exit_2(run(env, *args), "not as 0.19.0 does", "--engine-version 0.11.0", "--engine transformers")


def test_hybrid_model_is_refused_on_sglang_in_one_line(env):
    r = run(env, "check", HYBRID, "--gpu", "4xh100", "--engine", "sglang")
    why = _hybrid_refused_here()
    _one_line_exit_2(r, *([why] if why else ["sglang 0.4.9", "engine vllm"]))
