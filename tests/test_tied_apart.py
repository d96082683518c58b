"""A config that ties lm_head to the embeddings, over a checkpoint that stores both.

transformers (5.0-5.24, `tie_weights(missing_keys=...)` in `from_pretrained`) does not tie a pair
whose both halves the checkpoint holds. Magistral-Small-2509 is such a model: Mistral3Config ties by
default, its config says nothing, its checkpoint has its own lm_head (1.3 GB in bf16). A plan that
trusted the config's tie would hold that much less than the GPU does.
"""
from __future__ import annotations

import json

import pytest

from tiny_models import save_tiny


def _loaded_parameters(path) -> int:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16)
    return model.num_parameters()


@pytest.mark.parametrize("stored_apart", [True, False])
def test_the_plan_counts_what_from_pretrained_holds(tmp_path, monkeypatch, stored_apart):
    import fitplan

    monkeypatch.setenv("FITPLAN_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "m"
    # llama-gqa stores lm_head apart (tie_word_embeddings False); qwen2-tied-bias stores it once
    save_tiny("llama-gqa" if stored_apart else "qwen2-tied-bias", path)
    cfg = json.loads((path / "config.json").read_text())
    cfg["tie_word_embeddings"] = True  # the config now says tie, whatever the checkpoint holds
    (path / "config.json").write_text(json.dumps(cfg))

    inv = fitplan.plan(str(path), gpu="h100").inventory
    assert inv.parameters == _loaded_parameters(path)
    assert any("counted twice" in n for n in inv.notes) is stored_apart


def test_without_a_stored_count_the_config_decides():
    """A config alone (no headers, no exact catalogue figure) is planned as the config ties it."""
    from fitplan.model.build import build_inventory
    from tiny_models import config_dict

    cfg = dict(config_dict("llama-gqa"), tie_word_embeddings=True)
    tied = build_inventory(cfg, model_id="t")
    untied = build_inventory(dict(cfg, tie_word_embeddings=False), model_id="u")
    assert untied.parameters - tied.parameters == 512 * 128
    assert build_inventory(cfg, model_id="t", stored_parameters=untied.parameters).parameters == untied.parameters
    assert build_inventory(cfg, model_id="t", stored_parameters=tied.parameters).parameters == tied.parameters


def test_magistral_from_the_catalogue_holds_its_own_lm_head():
    from fitplan.model.build import build_inventory
    from fitplan.model.sources import catalogue_entry

    src = catalogue_entry("mistralai/Magistral-Small-2509")
    inv = build_inventory(src.config, model_id=src.model_id, stored_parameters=src.stored_parameters)
    assert inv.parameters == 24_011_361_280  # the safetensors total


# -- pre-quantized checkpoints ----------------------------------------------------------------------------------
# The meta build is the float model (no quantizer runs), so a pre-quantized checkpoint's stored count compares with
# it only where the method stores each converted weight as one element (fp8, int8) plus a scale per row or block:
# RedHatAI's Mistral-Small-3.1-24B W8A8 (compressed-tensors) keeps its own bf16 lm_head, 1.25 GiB that vLLM holds.

@pytest.mark.parametrize("stored_apart", [True, False])
def test_a_prequantized_fp8_checkpoint_counts_what_from_pretrained_holds(tmp_path, monkeypatch, stored_apart):
    """A real CPU load of a tiny fp8 checkpoint (dequantized: the CPU cannot run fp8) whose config ties lm_head
    and which stores it apart, or once: the plan counts what from_pretrained holds, and its weight bytes are the
    bytes the load measures."""
    import torch
    from safetensors.torch import load_file, save_file

    import fitplan
    from fitplan.hardware.machine import Hardware
    from fitplan.model import hf
    from tiny_models import save_tiny_fp8

    if hf.fp8_needs_triton() == (True, False):
        pytest.skip(f"transformers {hf.version()} loads no fp8 checkpoint without triton, which is not installed")
    monkeypatch.setenv("FITPLAN_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "m"
    save_tiny_fp8(path)
    cfg = json.loads((path / "config.json").read_text())
    cfg["tie_word_embeddings"] = True  # the config ties; the checkpoint holds lm_head.weight, or not
    (path / "config.json").write_text(json.dumps(cfg))
    if not stored_apart:
        weights = load_file(path / "model.safetensors")
        del weights["lm_head.weight"]
        save_file(weights, path / "model.safetensors", metadata={"format": "pt"})

    model = fitplan.load(str(path), tokenizer=False, context=64, hardware=Hardware((), 64 * 2**30, "probe"))
    tied = model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert tied is not stored_apart  # what transformers did with the pair
    inv = model.fitplan.plan.inventory
    assert inv.prequantized and inv.parameters == model.num_parameters()
    assert model.fitplan.measured_weights == model.fitplan.predicted_weights
    assert any("counted twice" in n for n in inv.notes) is stored_apart
    assert model.model.layers[0].self_attn.q_proj.weight.dtype == torch.bfloat16  # loaded dequantized


def _ct(fmt: str, strategy: str, bits: int = 8, **weights) -> dict:
    return {"quant_method": "compressed-tensors", "format": fmt, "ignore": ["lm_head"], "config_groups": {"group_0": {
        "targets": ["Linear"], "format": fmt,
        "weights": dict({"num_bits": bits, "type": "int", "symmetric": True, "strategy": strategy}, **weights)}}}


#: (quantization_config, whether its stored count is compared): a row for every method fitplan sizes.
METHODS = {
    "fp8-block": ({"quant_method": "fp8", "weight_block_size": [128, 128]}, True),
    "fp8-tensor": ({"quant_method": "fp8"}, True),
    "fbgemm_fp8": ({"quant_method": "fbgemm_fp8"}, True),
    "ct-int8-channel": (_ct("int-quantized", "channel"), True),
    "ct-fp8-block": (_ct("float-quantized", "block", type="float", block_structure=[128, 128]), True),
    "bnb-int8": ({"quant_method": "bitsandbytes", "load_in_8bit": True}, True),
    # packed: a fraction of the float model's count, closer to it without lm_head even where it is stored
    "gptq-int4": ({"quant_method": "gptq", "bits": 4, "group_size": 128}, False),
    "awq-int4": ({"quant_method": "awq", "bits": 4, "group_size": 128}, False),
    "mxfp4": ({"quant_method": "mxfp4"}, False),
    "bnb-nf4": ({"quant_method": "bitsandbytes", "load_in_4bit": True, "bnb_4bit_quant_type": "nf4"}, False),
    "ct-int4-packed": (_ct("pack-quantized", "group", bits=4, group_size=128), False),
    # one element a weight, but a scale (and a zero point) per 32 weights can outnumber half of lm_head
    "ct-int8-group": (_ct("int-quantized", "group", group_size=32), False),
}


def test_every_method_fitplan_sizes_is_decided():
    from fitplan.model.prequant import PARSERS, scheme_of, stores_each_weight

    assert {scheme_of(qc).method for qc, _ in METHODS.values()} == set(PARSERS)
    assert {k: stores_each_weight(scheme_of(qc)) for k, (qc, _) in METHODS.items()} == {
        k: counted for k, (_, counted) in METHODS.items()}


@pytest.mark.parametrize("method", sorted(METHODS))
def test_a_prequantized_config_counts_lm_head_apart_only_where_its_count_tells(method):
    """The same tied config over a checkpoint that stores lm_head apart (the float count with it, plus what the
    method adds: at most a scale per row here): counted twice where the method stores each weight as one element,
    else planned as the config ties it, as before."""
    from fitplan.model.build import build_inventory
    from tiny_models import config_dict

    qc, counted = METHODS[method]
    cfg = dict(config_dict("llama-gqa"), tie_word_embeddings=True, quantization_config=qc)
    tied = build_inventory(cfg, model_id="t")
    untied = build_inventory(dict(cfg, tie_word_embeddings=False), model_id="u")
    scales = 2 * (128 + 64 + 64 + 128 + 256 + 256 + 128)  # one a row of each decoder linear, 2 layers
    apart = build_inventory(cfg, model_id="t", stored_parameters=untied.parameters + scales)
    assert apart.parameters == (untied.parameters if counted else tied.parameters)
    assert build_inventory(cfg, model_id="t", stored_parameters=tied.parameters + scales).parameters == tied.parameters


@pytest.mark.parametrize("stored_apart", [True, False])
def test_a_prequantized_bnb_int8_checkpoint_counts_what_from_pretrained_holds(tmp_path, monkeypatch, stored_apart):
    """bitsandbytes int8 serialized (int8 weight, `SCB` a row): a real CPU quantize, save and load, its config tying
    lm_head over a checkpoint that stores it apart, or once."""
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    import fitplan
    from fitplan.hardware.machine import Hardware

    monkeypatch.setenv("FITPLAN_CACHE", str(tmp_path / "cache"))
    save_tiny("llama-gqa", tmp_path / "f")  # stores lm_head apart
    try:
        quantized = AutoModelForCausalLM.from_pretrained(tmp_path / "f", dtype=torch.bfloat16, device_map="cpu",
                                                         quantization_config=BitsAndBytesConfig(load_in_8bit=True))
        quantized.save_pretrained(tmp_path / "m")
    except Exception as exc:  # bitsandbytes without its CPU backend (before 0.48), or a transformers that refuses it
        pytest.skip(f"bitsandbytes int8 does not quantize on this CPU here: {type(exc).__name__}: {str(exc)[:120]}")
    path = tmp_path / "m"
    cfg = json.loads((path / "config.json").read_text())
    cfg["tie_word_embeddings"] = True
    (path / "config.json").write_text(json.dumps(cfg))
    if not stored_apart:
        weights = load_file(path / "model.safetensors")
        del weights["lm_head.weight"]
        save_file(weights, path / "model.safetensors", metadata={"format": "pt"})

    inv = fitplan.plan(str(path), hardware=Hardware((), 64 * 2**30, "probe"), offline=True, context=64).inventory
    model = AutoModelForCausalLM.from_pretrained(path, device_map="cpu")
    assert (model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()) is not stored_apart
    assert inv.prequantized and inv.parameters == model.num_parameters()
    assert any("counted twice" in n for n in inv.notes) is stored_apart
