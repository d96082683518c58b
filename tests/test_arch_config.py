"""Configs as transformers writes them, combined text+vision configs, the cache-layout arithmetic, and
what fitplan refuses (items 1, 4, 5 and 7 of issue 12)."""
from __future__ import annotations

import json

import pytest

from fitplan.versions import parse as parse_version

from fitplan.errors import FileError, InputError, UnsupportedModelError
from fitplan.model import cachelayout, hf
from fitplan.model.build import build_inventory
from fitplan.model.fields import check_config_fields
from fitplan.model.cachelayout import Held, UnknownCache, layout, probe_shapes
from fitplan.model.inventory import Inventory, KVLayer
from fitplan.model.sources.base import load_config
from fitplan.planning.estimate import Workload, kv_bytes_per_layer

SHAPES = probe_shapes()  # (1, 4), (2, 6) and the confirming (1, 6)


def _probes(*storages, confirm=False):
    """Probe listings from (layer, path, (bytes at 1x4, 2x6, 1x6), dtype, window, in_module) rows: the
    first two probes, or all three with `confirm`."""
    return [[Held(layer, path, sizes[i], dtype, window, in_module)
             for layer, path, sizes, dtype, window, in_module in storages] for i in range(3 if confirm else 2)]


# -- cache layout from the probes --------------------------------------------------------------------

def test_probe_shapes_are_whole_multiples_of_compression_rates():
    assert SHAPES == ((1, 4), (2, 6), (1, 6))
    assert probe_shapes([4, 128]) == ((1, 256), (2, 384), (1, 384))


def test_keys_per_token_and_fp32_state_per_sequence_are_told_apart():
    kv = 2 * 64 * 2  # bytes per token: 64 bf16 elements
    probes = _probes((0, ("layers", 0, "keys"), (4 * kv, 12 * kv, 6 * kv), "bfloat16", 512, False),
                     (1, ("layers", 1, "recurrent_states", 0), (4096, 8192, 4096), "float32", None, False),
                     (1, ("layers", 1, "conv_states", 0), (768, 1536, 768), "bfloat16", None, False),
                     (0, ("layers", 0, "_sliding_window_tensor"), (8, 8, 8), "int64", None, False))
    layers = layout(probes, 2, "bfloat16", 2, SHAPES)
    assert layers[0] == KVLayer(elements_per_token=128, window=512)
    assert layers[1] == KVLayer(elements_per_token=0, state_elements=384, state_fixed_bytes=4096)
    inv = _inventory(layers)
    assert inv.state_bytes_per_sequence(2) == 4096 + 768
    # the state term grows with the batch, not the context
    assert kv_bytes_per_layer(inv, Workload(context=1000, batch=3), "bfloat16") == [3 * 1000 * 256, 3 * (4096 + 768)]
    assert kv_bytes_per_layer(inv, Workload(context=10, batch=3), "bfloat16")[1] == 3 * (4096 + 768)


def test_a_prompt_prefix_is_state_and_per_token_keys_at_once():
    # CPM-Ant keeps a learned prompt of 32 positions in front of the tokens: 32 x 8 + tokens x 8 bytes
    row = (0, ("layers", 0, "keys"), (36 * 8, 2 * 38 * 8, 38 * 8), "float32", None, False)
    with pytest.raises(cachelayout.NeedsConfirmation):
        layout(_probes(row), 1, "bfloat16", 2, SHAPES)
    assert layout(_probes(row, confirm=True), 1, "bfloat16", 2, SHAPES) == (
        KVLayer(0, fixed_bytes_per_token=8, state_fixed_bytes=256),)
    with pytest.raises(UnknownCache, match="not batch x"):  # the third probe disagrees
        layout(_probes(row[:2] + ((36 * 8, 2 * 38 * 8, 40 * 8),) + row[3:], confirm=True), 1, "bfloat16", 2, SHAPES)


def test_state_outside_the_layers_is_spread_and_per_layer_lists_are_placed():
    probes = _probes((None, (0,), (4000, 8000, 4000), "bfloat16", None, False),  # RWKV: one tensor, all layers
                     (None, ("linear_cache", 1), (100, 200, 100), "bfloat16", None, False))  # MiniMax
    layers = layout(probes, 2, "bfloat16", 2, SHAPES)
    assert [k.state_elements for k in layers] == [1000, 1050]


@pytest.mark.parametrize("sizes, why", [
    ((100, 800, 300), "not batch x"),  # grows with the batch more than in proportion (b^2 x t)
    ((150, 200, 100), "not batch x"),  # shrinks as the prompt grows
    ((9000, 9000, 9000), "whatever the batch and length"),  # large and constant: not bookkeeping
])
def test_storages_that_fit_no_layout_are_refused(sizes, why):
    with pytest.raises(UnknownCache, match=why):
        layout(_probes((0, ("layers", 0, "x"), sizes, "bfloat16", None, False)), 1, "bfloat16", 2, SHAPES)


def test_a_modules_constant_table_is_not_cache_but_its_state_is():
    probes = _probes((0, ("module", "model.rotary", "cos_cached"), (9000, 9000, 9000), "float32", None, True),
                     (0, ("module", "model.layers.0.block", "conv1d_state"), (48, 96, 48), "bfloat16", None, True))
    assert layout(probes, 1, "bfloat16", 2, SHAPES) == (KVLayer(0, state_elements=24),)


def test_tensors_present_at_one_length_only_are_refused():
    probes = _probes((0, ("layers", 0, "keys"), (8, 24, 12), "bfloat16", None, False))
    probes[1].append(Held(0, ("layers", 0, "extra"), 8, "bfloat16"))
    with pytest.raises(UnknownCache, match="different tensors"):
        layout(probes, 1, "bfloat16", 2, SHAPES)


def _inventory(kv_layers) -> Inventory:
    return Inventory(model_id="m", model_type="x", architecture="X", parameters=1, tensors=(), kv_layers=tuple(kv_layers),
                     hidden_size=64, intermediate_size=128, num_layers=len(kv_layers), num_attention_heads=0,
                     vocab_size=512, attn_implementation="sdpa", checkpoint_dtype=None)


def test_inventory_round_trips_with_state_auto_class_and_image_tokens():
    from dataclasses import replace

    inv = replace(_inventory([KVLayer(4, 64, 8, 16, 32), KVLayer(0)]), auto_class="image-text-to-text",
                  image_tokens_per_image=576)
    back = Inventory.from_dict(json.loads(json.dumps(inv.to_dict())))
    assert back == inv


# -- configs as transformers writes them (item 4) -----------------------------------------------------

def test_tagged_infinity_is_read_as_transformers_reads_it():
    raw = b'{"model_type": "mamba2", "time_step_limit": [0.0, {"__float__": "Infinity"}], ' \
          b'"x": [{"__float__": "-Infinity"}, {"__float__": "NaN"}, {"__float__": "Other"}]}'
    cfg = load_config(raw, "config.json", lambda m: FileError(m, path="config.json"), "fix it")
    assert cfg["time_step_limit"] == [0.0, float("inf")] and cfg["x"][0] == float("-inf") and cfg["x"][1] != cfg["x"][1]
    assert cfg["x"][2] == {"__float__": "Other"}  # unknown tags stay as written, as in transformers


def test_a_saved_mamba2_config_plans(tmp_path):
    import fitplan
    from transformers import CONFIG_MAPPING

    CONFIG_MAPPING["mamba2"](hidden_size=128, num_heads=4, head_dim=64, n_groups=1, state_size=16, num_hidden_layers=2,
                             vocab_size=512, expand=2).save_pretrained(tmp_path)
    assert '"__float__": "Infinity"' in (tmp_path / "config.json").read_text()
    try:
        plan = fitplan.plan(str(tmp_path), gpu="rtx4090", use_cache=False)
    except UnsupportedModelError as exc:  # 5.0's Mamba-2 cache cannot be filled on the meta device
        version = hf.version()
        assert parse_version(version) < (5, 17) and f"transformers {version}" in str(exc), exc
        return
    assert plan.fits and plan.inventory.state_bytes_per_sequence(2) > 0


def test_per_layer_lists_are_accepted_and_checked():
    check_config_fields({"model_type": "gemma3n_text", "intermediate_size": [8192, 8192, 16384]})
    check_config_fields({"model_type": "x", "num_key_value_heads": [4, 0, 4]})  # a layer without attention
    for bad in ([8192, "wide"], [0, 0], [1 << 30]):
        with pytest.raises(InputError, match="intermediate_size"):
            check_config_fields({"model_type": "x", "intermediate_size": bad})
    with pytest.raises(InputError, match="'num_hidden_layers' must be a whole number"):
        check_config_fields({"model_type": "x", "num_hidden_layers": [2, 2]})
    with pytest.raises(InputError, match="text_config.hidden_size"):
        check_config_fields({"model_type": "x", "text_config": {"hidden_size": -1}})


def test_gemma3n_plans_by_its_widest_layer():
    inv = build_inventory({"model_type": "gemma3n_text"}, model_id="g")
    assert inv.intermediate_size == 16384 and sum(k.elements_per_token for k in inv.kv_layers) > 0


def test_a_heterogeneous_attention_model_is_planned():
    from transformers import CONFIG_MAPPING

    if "dots3_note_text" not in CONFIG_MAPPING:
        pytest.skip("this transformers has no heterogeneous configs")
    cfg = json.loads(CONFIG_MAPPING["dots3_note_text"]().to_json_string())
    inv = build_inventory(cfg, model_id="d", auto_class="causal-lm")
    assert inv.num_attention_heads > 0 and all(k.elements_per_token > 0 for k in inv.kv_layers)


# -- combined text+vision configs (item 1) -----------------------------------------------------------

def _qwen3_5():
    from transformers import CONFIG_MAPPING

    if "qwen3_5" not in CONFIG_MAPPING:
        pytest.skip(f"transformers {hf.version()} has no Qwen3.5")

    return CONFIG_MAPPING["qwen3_5"](
        text_config=dict(hidden_size=128, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4,
                         num_key_value_heads=2, head_dim=64, vocab_size=512, linear_num_key_heads=2,
                         linear_num_value_heads=4, linear_key_head_dim=64, linear_value_head_dim=64,
                         layer_types=["linear_attention", "full_attention"] * 2),
        vision_config=dict(depth=1, hidden_size=64, intermediate_size=128, num_heads=2, out_hidden_size=128),
        architectures=["Qwen3_5ForConditionalGeneration"])


@pytest.mark.slow
def test_a_combined_config_plans_as_auto_model_for_causal_lm_loads_it(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    from fitplan.vocab import precision as P
    from fitplan.planning.estimate import weights_bytes
    from fitplan.runtime.measure import held_bytes

    config = _qwen3_5()
    AutoModelForImageTextToText.from_config(config, dtype=torch.bfloat16).save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    inv = build_inventory(cfg, model_id="q", auto_class="causal-lm")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.bfloat16, device_map="cpu")
    assert inv.architecture == type(loaded).__name__ == "Qwen3_5ForCausalLM"
    assert {t.name for t in inv.tensors if not t.buffer} == {n for n, _ in loaded.named_parameters()}
    assert weights_bytes(inv, P.BF16, "bfloat16") == held_bytes(loaded)["cpu"]
    assert inv.state_bytes_per_sequence(2) > 0  # Qwen3.5's linear-attention layers
    # the checkpoint itself is a vision-language model: planned whole by default
    whole = build_inventory(cfg, model_id="q")
    assert whole.auto_class == "image-text-to-text" and whole.parameters > inv.parameters
    assert whole.kv_layers == inv.kv_layers


# -- what is refused (items 5 and 7) -----------------------------------------------------------------

def test_seq2seq_is_refused_in_one_line():
    with pytest.raises(UnsupportedModelError, match="does not plan encoder-decoder") as info:
        build_inventory({"model_type": "t5"}, model_id="t", auto_class="seq2seq-lm")
    assert "\n" not in str(info.value)


def test_an_encoder_decoder_in_the_vision_mapping_is_refused():
    with pytest.raises(UnsupportedModelError, match="encoder-decoder"):
        build_inventory({"model_type": "vision-encoder-decoder",
                         "encoder": {"model_type": "vit"}, "decoder": {"model_type": "gpt2"}},
                        model_id="v", auto_class="image-text-to-text")


def test_cross_attention_to_the_image_is_refused_with_its_reason():
    with pytest.raises(UnsupportedModelError, match="cross-attention layers"):
        build_inventory({"model_type": "mllama"}, model_id="m", auto_class="causal-lm")


def test_a_failing_meta_forward_falls_back_only_for_plain_attention(monkeypatch):
    """The config-field fallback is exact for plain multi-head attention (tests/test_arch_state.py checks
    BART, BioGPT and JetMoE against real caches); a config that says otherwise is refused."""

    def broken(*args, **kwargs):
        raise RuntimeError("Tensor.item() cannot be called on meta tensors")

    monkeypatch.setattr(hf, "kv_layers_from_cache", broken)
    inv = build_inventory({"model_type": "llama", "hidden_size": 128, "intermediate_size": 256,
                           "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                           "vocab_size": 512}, model_id="l")
    assert [k.elements_per_token for k in inv.kv_layers] == [128, 128] and "config fields" in inv.notes[0]
    with pytest.raises(UnsupportedModelError, match="meta device.*sets 'kv_lora_rank'.*cannot be sized from config"):
        build_inventory({"model_type": "deepseek_v3", "num_hidden_layers": 2}, model_id="d")
    with pytest.raises(UnsupportedModelError, match="has layers of type 'linear_attention'"):
        build_inventory({"model_type": "qwen3_next", "num_hidden_layers": 2,
                         "layer_types": ["linear_attention", "full_attention"]}, model_id="q")

    def fails(*args, **kwargs):
        raise RuntimeError("split_with_sizes expects split_sizes to sum exactly to 64")

    monkeypatch.setattr(hf, "kv_layers_from_cache", fails)
    with pytest.raises(UnsupportedModelError, match="fails on this config in a generation step .*split_with_sizes"):
        build_inventory({"model_type": "llama", "num_hidden_layers": 2}, model_id="l")


def test_unknown_auto_class_is_an_input_error():
    with pytest.raises(InputError, match="auto_class must be one of"):
        build_inventory({"model_type": "llama"}, model_id="l", auto_class="audio")


def test_layout_module_needs_no_torch():
    import subprocess
    import sys

    code = "import sys, fitplan.model.cachelayout; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stderr
    assert cachelayout.CONSTANT_LIMIT > 0
