"""Vision-language models from a user's side: `images=`, the Auto class a plan is for, and `load()`.

A tiny LLaVA with random weights (test_arch_vision.py's config: one 64 px image is 16 tokens) saved as
a user's folder, planned and loaded on the CPU through the real code.
"""
from __future__ import annotations

import importlib.util
import json

import pytest

from tiny_models import forbid_from_pretrained, save_tiny

PER_IMAGE = (64 // 16) ** 2


@pytest.fixture(autouse=True)
def private_cache(monkeypatch, tmp_path_factory):
    monkeypatch.setenv("FITPLAN_CACHE", str(tmp_path_factory.getbasetemp() / "fitplan-cache"))


def test_images_add_their_tokens_to_the_planned_context(llava):
    import fitplan

    text = fitplan.plan(llava, gpu="rtx4090", context=256)
    with_images = fitplan.plan(llava, gpu="rtx4090", context=256, images=3)
    longer = fitplan.plan(llava, gpu="rtx4090", context=256 + 3 * PER_IMAGE)
    assert text.inventory.auto_class == "image-text-to-text"
    assert text.inventory.image_tokens_per_image == PER_IMAGE
    assert with_images.workload.context == 256 + 3 * PER_IMAGE
    kv_text, kv_images, kv_longer = ([e["kv_cache_bytes"] for e in p.to_dict()["estimates"]]
                                     for p in (text, with_images, longer))
    assert kv_images == kv_longer and all(a > b for a, b in zip(kv_images, kv_text))
    d = with_images.to_dict()
    assert d["workload"] == {"context": 256, "batch": 1, "images": 3, "tokens": 256 + 3 * PER_IMAGE}
    assert d["model"]["auto_class"] == "image-text-to-text" and d["model"]["image_tokens_per_image"] == PER_IMAGE


def test_images_on_a_model_that_takes_none_is_one_clear_line(tmp_path):
    from click.testing import CliRunner

    from fitplan.cli.main import main

    path = save_tiny("llama-gqa", tmp_path / "llama")
    result = CliRunner().invoke(main, ["check", str(path), "--gpu", "rtx4090", "--images", "2"])
    assert result.exit_code == 2, result.output
    assert "--images" in result.stderr and "takes no images" in result.stderr
    assert "Traceback" not in result.output


def test_the_cli_says_which_class_it_plans_for(llava):
    from click.testing import CliRunner

    from fitplan.cli.main import main

    result = CliRunner().invoke(main, ["check", llava, "--gpu", "rtx4090", "--images", "2", "--context", "256"])
    assert result.exit_code == 0, result.output
    assert "AutoModelForImageTextToText" in result.stdout
    assert f"context 256 tokens + 2 images x {PER_IMAGE} tokens" in result.stdout


def test_load_picks_the_class_the_plan_is_for(llava):
    import fitplan
    from transformers import LlavaForConditionalGeneration

    model = fitplan.load(llava, tokenizer=False, context=64)
    assert isinstance(model, LlavaForConditionalGeneration)
    assert model.fitplan.plan.inventory.auto_class == "image-text-to-text"
    predicted, measured = model.fitplan.predicted_weights["cpu"], model.fitplan.measured_weights["cpu"]
    assert abs(predicted - measured) <= 0.01 * measured


def test_a_class_fitplan_does_not_plan_is_refused_before_loading(llava):
    import fitplan
    from fitplan.errors import InputError, UnsupportedModelError
    from transformers import AutoModelForSeq2SeqLM

    with pytest.raises(InputError, match="not planned"):
        fitplan.load(llava, tokenizer=False, auto_class=AutoModelForSeq2SeqLM)
    with pytest.raises(InputError, match="encoder-decoder models are not planned"):
        fitplan.load(llava, tokenizer=False, auto_class="seq2seq-lm")
    # LLaVA has no causal-LM class: planned as such it is refused, with the class named
    with pytest.raises(UnsupportedModelError, match="AutoModelForCausalLM cannot load it"):
        fitplan.load(llava, tokenizer=False, auto_class="causal-lm")


def test_a_vision_language_folder_without_a_processor_fails_before_the_model_loads(llava, monkeypatch):
    import fitplan
    from fitplan.errors import InputError
    from transformers import AutoModelForImageTextToText

    forbid_from_pretrained(monkeypatch, AutoModelForImageTextToText, "the model was loaded before the processor "
                                                                      "was checked")
    with pytest.raises(InputError, match="has no processor fitplan.load.. can use.*tokenizer=False"):
        fitplan.load(llava, context=64)


@pytest.mark.skipif(importlib.util.find_spec("torchvision") is None,
                    reason="transformers' image processors need torchvision, which CI does not install")
def test_a_vision_language_model_loads_with_its_processor(llava, tmp_path):
    import shutil

    import fitplan
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import CLIPImageProcessor, LlavaProcessor, PreTrainedTokenizerFast

    path = tmp_path / "llava"
    shutil.copytree(llava, path)
    vocab = {f"w{i}": i for i in range(500)} | {"<image>": 500, "<unk>": 501}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    LlavaProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64}),
                   tokenizer=PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>"),
                   patch_size=16, image_token="<image>").save_pretrained(path)
    model, processor = fitplan.load(str(path), context=64)
    assert type(processor).__name__ == "LlavaProcessor" and processor.image_processor is not None
    assert json.loads((path / "config.json").read_text())["model_type"] == model.config.model_type
