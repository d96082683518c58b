"""On a real GPU: a 7B-shaped random-weight checkpoint loaded per plan matches its prediction.

Skips cleanly without CUDA. Run on a GPU machine with `python -m pytest -m gpu -q`; what it
showed is recorded in docs/accuracy.md with that command.
"""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.fixture(scope="module")
def llama7b(tmp_path_factory):
    from transformers import AutoConfig, AutoModelForCausalLM

    from fitplan.model.sources import resolve

    cfg = resolve("meta-llama/Llama-2-7b-hf", offline=True).config
    path = tmp_path_factory.mktemp("llama7b")
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**cfg), dtype=torch.bfloat16)
    model.save_pretrained(path)
    del model
    torch.cuda.empty_cache()
    return str(path)


@pytest.mark.parametrize("precision", [None, "nf4", "int8"])
def test_7b_load_per_plan_matches_prediction(llama7b, precision):
    import gc

    import fitplan

    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    free0, total = torch.cuda.mem_get_info()
    model = fitplan.load(llama7b, tokenizer=False, context=2048, batch=2, precision=precision, use_cache=False)
    plan = model.fitplan.plan
    if precision is None:
        assert plan.precision == "bf16"  # an 80 GB card keeps bf16
    share = plan.decision.placement[0]
    measured = model.fitplan.measured_weights["cuda:0"]
    assert abs(share.weights_bytes - measured) <= 0.01 * measured
    ids = torch.randint(10, 30000, (2, 2048 - 16), device="cuda")
    with torch.inference_mode():
        model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=16,
                       min_new_tokens=16, do_sample=False, pad_token_id=0)
    nvml_peak = (total - free0) + torch.cuda.max_memory_reserved()
    assert nvml_peak <= share.total_bytes
    del model
    gc.collect()
    torch.cuda.empty_cache()
