"""transformers' tensor parallelism through `fitplan.load()` under torchrun, for real on the CPU
(gloo): 2 ranks on tiny random-weight checkpoints, each rank's bytes equal to the plan exactly and
greedy generation equal to the single-process load; the refusals come before anything loads.
Runs on every transformers leg (5.0, 5.17, newest): the rules differ between them (docs/engines.md)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import fitplan
from fitplan.errors import TensorParallelError
from fitplan.planning.tensor_parallel import local_length
from tiny_models import forbid_from_pretrained, save_tiny

HERE = Path(__file__).resolve().parent
TORCHRUN_ENV = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture(autouse=True)
def no_gpu(monkeypatch, tmp_path_factory):
    """Plan for this machine as NVML sees it: CI has no GPU, so the ranks are CPU processes (gloo)."""
    import fitplan.hardware.probe as probe

    monkeypatch.setenv("FITPLAN_CACHE", str(tmp_path_factory.getbasetemp() / "fitplan-cache"))
    for key in TORCHRUN_ENV:
        monkeypatch.delenv(key, raising=False)
    assert not probe.probe().gpus, "these tests assume a machine without a GPU"


#: 6 heads and 3 key/value heads: 3 ranks split the heads, but not the MLP's 320 rows (107, 107, 106)
LLAMA_6H = ("llama", dict(hidden_size=384, intermediate_size=320, num_hidden_layers=2, num_attention_heads=6,
                          num_key_value_heads=3, vocab_size=576, tie_word_embeddings=False))


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    import tiny_models

    out = {f: str(save_tiny(f, tmp_path_factory.mktemp(f)))
           for f in ("llama-gqa", "qwen2-tied-bias", "gpt2-conv1d", "mixtral-moe")}
    tiny_models.FAMILIES["llama-6h"] = LLAMA_6H  # for this module's checkpoint only, removed again below
    try:
        out["llama-6h"] = str(save_tiny("llama-6h", tmp_path_factory.mktemp("llama-6h")))
    finally:
        del tiny_models.FAMILIES["llama-6h"]
    return out


def _loads_while_reading() -> bool:
    """transformers 5.0 shards while loading (integrations/tensor_parallel.py), later releases with DTensor."""
    from fitplan.model import hf

    return hf._tp_code()[0] == "loader"


def _torchrun(checkpoint: str, outdir: Path, ranks: int = 2) -> list[dict]:
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_ENV}
    env["PYTHONPATH"] = os.pathsep.join([str(HERE.parent), str(HERE)] + env.get("PYTHONPATH", "").split(os.pathsep))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}",
           str(HERE / "tp_worker.py"), checkpoint, str(outdir)]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-4000:]
    return [json.loads((outdir / f"rank-{r}.json").read_text()) for r in range(ranks)]


def _tp_matches_one_process(checkpoint: str, outdir: Path, ranks: int) -> list[dict]:
    """Each rank holds exactly its planned bytes, splits the tensors the plan names, and generates
    what the single-process load generates."""
    import torch

    single = fitplan.load(checkpoint, tokenizer=False, context=64)
    assert single.fitplan.tensor_parallel is None
    want = single.generate(input_ids=torch.tensor([[5, 6, 7, 8]]), max_new_tokens=6, do_sample=False,
                           pad_token_id=0)[0].tolist()
    whole = sum(p.numel() * p.element_size() for p in single.parameters())
    out = _torchrun(checkpoint, outdir, ranks)
    for r in out:
        assert r["world_size"] == ranks
        assert r["held_parameters"] == r["planned_parameters"], r
        assert r["held_buffers"] == r["planned_buffers"], r
        assert r["sharded"] == r["planned_sharded"]  # the very tensors the plan says are split
        assert r["held_parameters"] < whole  # a real split, not the whole model on each rank
        assert r["tokens"] == want
        assert f"rank {r['rank']} of {ranks}" in r["report"]
    assert len(out[0]["sharded"]) >= 4 * 2  # q/k/v/o of both layers at least
    return out


@pytest.mark.slow
@pytest.mark.parametrize("family", ["llama-gqa", "qwen2-tied-bias", "mixtral-moe"])
def test_two_ranks_hold_the_plan_exactly_and_generate_as_one_process(checkpoints, family, tmp_path, monkeypatch):
    if family == "mixtral-moe" and _loads_while_reading():  # 5.0's MoE plan routes experts per rank
        from transformers import AutoModelForCausalLM

        _as_rank(monkeypatch, 2)
        forbid_from_pretrained(monkeypatch, AutoModelForCausalLM, "5.0's MoE plan must be refused first")
        with pytest.raises(TensorParallelError, match="'ep_router' .* does not plan on transformers 5.0"):
            fitplan.load(checkpoints[family], tokenizer=False, context=64)
        return
    _tp_matches_one_process(checkpoints[family], tmp_path, 2)


@pytest.mark.slow
def test_three_ranks_split_unevenly_as_transformers_does(checkpoints, tmp_path, monkeypatch):
    """320 MLP rows over 3 ranks: 107, 107, 106 from 5.17 on (torch's chunks); 5.0 loads such a split
    but its forward fails, so fitplan refuses it there."""
    if _loads_while_reading():
        _as_rank(monkeypatch, 3)
        with pytest.raises(TensorParallelError, match="320 long where it is split, and transformers 5.0"):
            fitplan.load(checkpoints["llama-6h"], tokenizer=False, context=64)
        return
    out = _tp_matches_one_process(checkpoints["llama-6h"], tmp_path, 3)
    held = [r["held_parameters"] for r in out]
    assert held[0] == held[1] > held[2]  # the last rank holds the short chunks


def _as_rank(monkeypatch, world_size: int, rank: int = 0):
    monkeypatch.setenv("WORLD_SIZE", str(world_size))
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("LOCAL_RANK", str(rank))


def test_bitsandbytes_precision_is_refused_before_loading(checkpoints, monkeypatch):
    from transformers import AutoModelForCausalLM

    _as_rank(monkeypatch, 2)
    forbid_from_pretrained(monkeypatch, AutoModelForCausalLM, "a bitsandbytes TP load must be refused first")
    with pytest.raises(TensorParallelError) as err:
        fitplan.load(checkpoints["llama-gqa"], tokenizer=False, context=64, precision="nf4")
    assert "bitsandbytes" in str(err.value) and "precision=bf16" in str(err.value)
    assert err.value.world_size == 2


def test_model_without_a_tp_plan_is_refused_before_loading(checkpoints, monkeypatch):
    from transformers import AutoModelForCausalLM

    _as_rank(monkeypatch, 2)
    forbid_from_pretrained(monkeypatch, AutoModelForCausalLM, "a model without a TP plan must be refused first")
    with pytest.raises(TensorParallelError) as err:
        fitplan.load(checkpoints["gpt2-conv1d"], tokenizer=False, context=64)
    assert "GPT2LMHeadModel has no tensor-parallel plan" in str(err.value)
    assert "without torchrun" in str(err.value)


def test_heads_the_ranks_cannot_split_are_refused(checkpoints, monkeypatch):
    from transformers import AutoModelForCausalLM

    _as_rank(monkeypatch, 3, rank=1)
    forbid_from_pretrained(monkeypatch, AutoModelForCausalLM, "uneven heads must be refused first")
    with pytest.raises(TensorParallelError) as err:
        fitplan.load(checkpoints["llama-gqa"], tokenizer=False, context=64)
    assert "4 attention heads, which 3 ranks cannot split evenly" in str(err.value)


def test_device_map_cannot_be_combined_with_tensor_parallelism(checkpoints, monkeypatch):
    _as_rank(monkeypatch, 2)
    with pytest.raises(TensorParallelError) as err:
        fitplan.load(checkpoints["llama-gqa"], tokenizer=False, context=64, device_map="cpu")
    assert "device_map= cannot be combined" in str(err.value)


def test_the_cli_words_the_refusal_with_flags():
    from fitplan.cli.errors import exit_code, message
    from fitplan.planning.tensor_parallel import refuse_precision

    with pytest.raises(TensorParallelError) as err:
        refuse_precision("int8", None, 4)
    line = message(err.value)
    assert line.startswith("torchrun with 4 ranks cannot load this tensor-parallel: int8 is a bitsandbytes precision")
    assert "--precision bf16" in line and "\n" not in line
    assert exit_code(err.value) == 2


@pytest.mark.parametrize("world_size", [2, 3, 4, 6, 8, 14])
def test_uneven_splits_are_torchs_chunks(world_size):
    import torch

    for n in range(1, 70):
        chunks = [len(c) for c in torch.arange(n).chunk(world_size)]
        chunks += [0] * (world_size - len(chunks))  # torch's Shard pads the ranks chunk() leaves out with empties
        assert [local_length(n, world_size, r) for r in range(world_size)] == chunks
