"""The KV-cache term against the `DynamicCache` a real CPU forward leaves behind.

Checks grouped-query heads, head_dim from the config, and sliding-window layers as the cache
keeps them: a view of the whole prompt right after prefill (the peak), the window after a decode step.
"""
from __future__ import annotations

import re

import pytest

from fitplan.errors import UnsupportedModelError
from fitplan.planning.estimate import Workload, kv_bytes_per_layer
from fitplan.model.build import build_inventory
from tiny_models import config_dict

pytestmark = pytest.mark.slow


def _forward(model, ids, cache) -> None:
    """A real forward that fills `cache`, under the argument name this transformers uses (`cache` from
    5.24, `past_key_values` before; an unknown keyword is swallowed by **kwargs and the cache stays
    empty, which is what made fitplan's KV 0 on 5.17). The cache must come back filled."""
    import inspect

    import torch

    arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    with torch.no_grad():
        model(input_ids=ids, use_cache=True, **{arg: cache})
    assert all(layer.keys is not None and layer.keys.numel() > 0 for layer in cache.layers), "cache left empty"


def _cache_storage_bytes(cache) -> list[int]:
    return [layer.keys.untyped_storage().nbytes() + layer.values.untyped_storage().nbytes()
            for layer in cache.layers]


def _cache_tensor_bytes(cache) -> list[int]:
    return [layer.keys.numel() * layer.keys.element_size() + layer.values.numel() * layer.values.element_size()
            for layer in cache.layers]


@pytest.mark.parametrize("family", ["llama-gqa", "gemma2-sliding", "falcon", "gpt2-conv1d", "mixtral-moe", "phi3-fused"])
def test_kv_estimate_matches_dynamic_cache_after_prefill(family):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, DynamicCache

    cfg = config_dict(family)
    inv = build_inventory(cfg, model_id=family)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**cfg), dtype=torch.bfloat16).eval()
    batch, prompt = 2, 96  # longer than gemma2-sliding's window of 64
    cache = DynamicCache(config=model.config)
    _forward(model, torch.randint(3, 500, (batch, prompt)), cache)
    predicted = kv_bytes_per_layer(inv, Workload(context=prompt, batch=batch), "bfloat16")
    assert _cache_storage_bytes(cache) == predicted
    assert not [n for n in inv.notes if "config fields" in n], "fitplan's meta forward failed; it read the config"


def _fallback_expected(cfg: dict) -> bool:
    """Where fitplan's meta forward cannot run on the installed transformers and the KV layout comes
    from config fields (with a note to the user), as seen on the versions CI runs:

    - OPT before 5.18 builds an all-ones attention mask and asks whether it is all ones (`.item()`,
      which a meta tensor cannot answer); its plain multi-head attention makes config fields exact.
    - Phi-3-style long-RoPE (Phi-4-mini) compares positions with `.item()` in its rotary embedding:
      seen on 5.0 and 5.17, not on 5.24; config fields are exact (one KV size for every layer).
    - (Gemma 3's checkpoints are planned whole, as AutoModelForImageTextToText loads them; on 5.0 its
      causal LM alone asked for `token_type_ids`. Qwen3-Next's linear attention calls `.item()` on
      5.0, and its cache is not plain attention, so it is refused there: `_refused_here`.)

    Every other catalogue model must be read from the cache itself."""
    from fitplan.model import hf

    v, model_type = hf.version_tuple(), cfg["model_type"]
    rope = cfg.get("rope_scaling") or cfg.get("rope_parameters") or {}
    long_rope = "longrope" in (rope.get("rope_type"), rope.get("type"))
    return (model_type == "opt" and v < (5, 18)) or (model_type == "phi3" and long_rope and v < (5, 24))


def _refused_here(cfg: dict) -> bool:
    """Hybrid models whose state a 5.0 meta forward cannot read are refused there, naming the version
    (docs/models.md, Known limits); 5.17 and later plan them."""
    from fitplan.model import hf

    return cfg["model_type"] in ("qwen3_next",) and hf.version_tuple() < (5, 17)


def test_meta_forward_reads_the_cache_for_every_catalogue_model():
    """transformers 5.0-5.3 refused autocast on the meta device inside every rotary embedding, and
    the fallback to config fields hid it (and got Falcon's multi-query KV 4x too big): the meta
    forward must work for every shipped config, on every version CI runs."""
    import json
    from importlib import resources

    from transformers import AutoConfig

    from fitplan.model import hf

    data = resources.files("fitplan") / "data"
    refused = {e["file"] for e in json.loads((data / "model_catalogue.json").read_text()).values() if e.get("fails")}
    fell_back, expected = set(), set()
    for f in sorted((data / "models").iterdir(), key=lambda p: p.name):
        if f.name in refused:  # the catalogue says fitplan refuses it today, and test_model_catalogue checks how
            continue
        cfg = json.loads(f.read_text(encoding="utf-8"))
        if _refused_here(cfg):
            with pytest.raises(UnsupportedModelError, match=f"transformers {re.escape(hf.version())}"):
                build_inventory(cfg, model_id=f.name)
            continue
        inv = build_inventory(cfg, model_id=f.name)
        if any("config fields" in n for n in inv.notes):
            fell_back.add(f.name)
        if _fallback_expected(cfg):
            expected.add(f.name)
        # every layer the config calls attention holds KV (a hybrid's linear layers keep state instead)
        text = AutoConfig.for_model(**{k: v for k, v in cfg.items() if k != "quantization_config"})
        text = text.get_text_config(decoder=True)
        filled = sum(k.elements_per_token > 0 for k in inv.kv_layers)
        assert filled >= hf.attention_layer_count(text, text.num_hidden_layers) > 0, f.name
    assert fell_back == expected


def test_sliding_layers_shrink_to_the_window_after_a_decode_step():
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, DynamicCache

    cfg = config_dict("gemma2-sliding")
    inv = build_inventory(cfg, model_id="g")
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**cfg), dtype=torch.bfloat16).eval()
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        _forward(model, torch.randint(3, 500, (1, 96)), cache)
        _forward(model, torch.randint(3, 500, (1, 1)), cache)
    window = [layer.window for layer in inv.kv_layers]
    assert any(window) and not all(window)
    held = _cache_tensor_bytes(cache)
    for layer, nbytes in zip(inv.kv_layers, held):
        tokens = min(97, layer.window - 1) if layer.window else 97
        assert nbytes == layer.elements_per_token * tokens * 2


def test_a_forward_that_ignores_the_cache_is_refused_not_planned_as_zero(monkeypatch):
    """transformers 5.17 accepted `cache=` into **kwargs, ignored it and built its own cache, so the
    one fitplan read stayed empty and every plan showed KV 0. Here Llama's forward drops whatever
    cache it is handed, under any name, and builds its own the same way: fitplan must refuse, naming
    the version, not plan KV 0."""
    import functools

    from transformers import LlamaForCausalLM

    from fitplan.errors import LibraryChangedError

    real = LlamaForCausalLM.forward

    @functools.wraps(real)
    def swallows_the_cache(self, *args, **kwargs):
        for name in ("cache", "past_key_values"):
            kwargs.pop(name, None)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(LlamaForCausalLM, "forward", swallows_the_cache)
    with pytest.raises(LibraryChangedError, match=r"transformers \d+\.\d+.*filled 0 cache layers"):
        build_inventory(config_dict("llama-gqa"), model_id="llama")


def test_a_quantizer_rule_that_skips_every_linear_layer_is_refused(monkeypatch):
    """Which layers 4-bit and int8 pack comes from transformers' own rule. If a version's rule
    matched no linear layer at all and gave no reason fitplan knows (Falcon's nn.Linear subclasses),
    a plan would price 4-bit as 16-bit without saying why: fitplan refuses instead."""
    from transformers.quantizers import quantizers_utils

    from fitplan.errors import LibraryChangedError

    monkeypatch.setattr(quantizers_utils, "should_convert_module", lambda name, skip: False)
    with pytest.raises(LibraryChangedError, match=r"transformers \d+\.\d+.*would leave every linear layer of "
                                                 r"LlamaForCausalLM unquantized"):
        build_inventory(config_dict("llama-gqa"), model_id="llama")
