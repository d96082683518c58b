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
