"""Vision-language models planned whole, as `AutoModelForImageTextToText` loads them (item 2 of issue 12).

Tiny LLaVA and Qwen2-VL models with random weights: the inventory must hold what a real load holds
(vision tower, projector and language model; bitsandbytes packing exactly the modules transformers'
quantizer replaces), the KV term must match the cache of a real generate(), and the image tokens
per image must be what the real vision tower emits for one image.
"""
from __future__ import annotations

import json

import pytest

from fitplan.model.build import build_inventory
from fitplan.vocab import precision as P
from fitplan.planning.estimate import Workload, kv_bytes_per_layer, weights_bytes

pytestmark = pytest.mark.slow


def llava_config():
    from transformers import CONFIG_MAPPING

    return CONFIG_MAPPING["llava"](
        vision_config=dict(model_type="clip_vision_model", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=2, image_size=64, patch_size=16, projection_dim=64),
        text_config=dict(model_type="llama", hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, vocab_size=512),
        image_token_id=500)


def qwen2_vl_config():
    from transformers import CONFIG_MAPPING

    return CONFIG_MAPPING["qwen2_vl"](
        text_config=dict(hidden_size=256, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=1, vocab_size=512, bos_token_id=1, eos_token_id=2,
                         rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]}),
        vision_config=dict(depth=1, embed_dim=64, hidden_size=256, num_heads=2, mlp_ratio=2, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2))


@pytest.fixture(scope="module")
def llava_checkpoint(tmp_path_factory):
    import torch
    from transformers import AutoModelForImageTextToText

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("llava")
    AutoModelForImageTextToText.from_config(llava_config(), dtype=torch.bfloat16).save_pretrained(path)
    return path


def _load(path, prec):
    import torch
    from transformers import AutoModelForImageTextToText, BitsAndBytesConfig

    kw = {}
    if prec.bits == 8:
        kw["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
    elif prec.bits == 4:
        kw["quantization_config"] = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=prec.quant_type,
                                                       bnb_4bit_compute_dtype=torch.bfloat16)
    return AutoModelForImageTextToText.from_pretrained(path, dtype=torch.bfloat16, device_map="cpu", **kw)


def test_llava_is_planned_whole_with_what_bitsandbytes_packs(llava_checkpoint):
    import bitsandbytes as bnb

    from fitplan.runtime.measure import held_bytes

    cfg = json.loads((llava_checkpoint / "config.json").read_text())
    inv = build_inventory(cfg, model_id="llava")
    assert inv.auto_class == "image-text-to-text" and inv.architecture == "LlavaForConditionalGeneration"
    assert any("vision_tower" in t.name for t in inv.tensors) and any("projector" in t.name for t in inv.tensors)
    for prec in (P.BF16, P.INT8, P.NF4):
        model = _load(llava_checkpoint, prec)
        measured = held_bytes(model)["cpu"]
        assert abs(weights_bytes(inv, prec, "bfloat16") - measured) <= 0.01 * measured, (prec.name, measured)
        if prec is P.NF4:
            replaced = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit)}
            assert {t.name for t in inv.tensors if t.quantizable} == replaced


def test_llava_image_tokens_are_what_its_tower_emits():
    import torch
    from transformers import AutoModelForImageTextToText

    inv = build_inventory(llava_config().to_dict(), model_id="llava")
    model = AutoModelForImageTextToText.from_config(llava_config(), dtype=torch.bfloat16).eval()
    with torch.no_grad():
        out = model.get_image_features(pixel_values=torch.randn(1, 3, 64, 64, dtype=torch.bfloat16))
    features = out.pooler_output if hasattr(out, "pooler_output") else out
    emitted = sum(f.shape[-2] for f in features) if isinstance(features, (list, tuple)) else features.shape[-2]
    assert inv.image_tokens_per_image == emitted == (64 // 16) ** 2  # CLS dropped ("default" strategy)
    assert any("one image adds 16 tokens" in n for n in inv.notes)


def test_qwen2_vl_image_tokens_follow_the_processors_grid():
    """A 1024x1024 image, patched as Qwen2-VL's processor patches it (sides rounded to 28 px): the real
    tower's output rows are the image tokens fitplan reports."""
    import torch
    from transformers import AutoModelForImageTextToText

    from fitplan.model.hf import REFERENCE_PIXELS

    inv = build_inventory(qwen2_vl_config().to_dict(), model_id="qwen2-vl", auto_class="image-text-to-text")
    side = round(REFERENCE_PIXELS / 28) * 2  # patches per side
    model = AutoModelForImageTextToText.from_config(qwen2_vl_config(), dtype=torch.bfloat16).eval()
    with torch.no_grad():
        out = model.get_image_features(pixel_values=torch.randn(side * side, 3 * 2 * 14 * 14, dtype=torch.bfloat16),
                                       image_grid_thw=torch.tensor([[1, side, side]]))
    features = out.pooler_output if hasattr(out, "pooler_output") else out
    emitted = sum(f.shape[0] for f in features) if isinstance(features, (list, tuple)) else features.shape[0]
    assert inv.image_tokens_per_image == emitted == (side // 2) ** 2 == 1369


@pytest.mark.parametrize("make", [llava_config, qwen2_vl_config])
def test_vision_language_kv_is_the_language_models_cache(make):
    import torch
    from transformers import AutoModelForImageTextToText

    inv = build_inventory(make().to_dict(), model_id="vlm", auto_class="image-text-to-text")
    assert not any("config fields" in n for n in inv.notes), inv.notes  # read off the meta forward
    model = AutoModelForImageTextToText.from_config(make(), dtype=torch.bfloat16).eval()
    ids = torch.randint(3, 400, (2, 80))
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=1, do_sample=False,
                             return_dict_in_generate=True, pad_token_id=0)
    cache = getattr(out, "past_key_values", None) or getattr(out, "cache", None)
    real = sum(layer.keys.untyped_storage().nbytes() + layer.values.untyped_storage().nbytes()
               for layer in cache.layers)
    planned = sum(kv_bytes_per_layer(inv, Workload(context=80, batch=2), "bfloat16"))
    assert abs(planned - real) <= 0.02 * real, (planned, real)  # 5.0's Qwen2-VL also keeps rope deltas


def test_pixtral_image_tokens_are_its_cells_plus_a_break_per_row():
    """Mistral 3 (Magistral, Mistral Small 3.1/3.2): the real tower's features for the image the
    processor makes of a 1024x1024 one (sides rounded up to 28 px cells) are the [IMG] tokens; each
    of the rows adds an [IMG_BREAK] (the last an [IMG_END]), as PixtralProcessor writes them."""
    import torch
    from transformers import AutoModelForImageTextToText, CONFIG_MAPPING

    cfg = CONFIG_MAPPING["mistral3"](
        vision_config=dict(model_type="pixtral", hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                           num_attention_heads=2, image_size=1540, patch_size=14, head_dim=32),
        text_config=dict(model_type="mistral", hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, vocab_size=512, head_dim=32),
        spatial_merge_size=2, image_token_index=10, architectures=["Mistral3ForConditionalGeneration"])
    inv = build_inventory(cfg.to_dict(), model_id="mistral3")
    rows = -(-1024 // 28)
    model = AutoModelForImageTextToText.from_config(cfg, dtype=torch.float32).eval()
    with torch.no_grad():
        out = model.get_image_features(pixel_values=torch.randn(1, 3, rows * 28, rows * 28),
                                       image_sizes=torch.tensor([[rows * 28, rows * 28]]))
    features = out.pooler_output if hasattr(out, "pooler_output") else out
    emitted = sum(f.shape[0] for f in features) if isinstance(features, (list, tuple)) else features.shape[-2]
    assert emitted == rows * rows == 37 * 37
    assert inv.image_tokens_per_image == emitted + rows == 1406
