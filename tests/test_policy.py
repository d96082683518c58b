"""The policy: best precision that fits with headroom, compute dtype, splits, offload, reasons."""
from __future__ import annotations

import pytest

from fitplan.options import PlanOptions
from fitplan.errors import InputError
from fitplan.hardware.machine import GPU, Hardware
from fitplan.model.build import build_inventory
from fitplan.planning.plan import BNB_MAX_MEMORY_SCALE, decide
from fitplan.planning.policy import weights_fraction_for_accelerate
from fitplan.vocab import precision as P

G = 1 << 30


@pytest.fixture(scope="module")
def llama8b():
    """Llama-3.1-8B's published shape (8.03B parameters, GQA 32/8 heads)."""
    from transformers import LlamaConfig

    cfg = LlamaConfig(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                      num_key_value_heads=8, vocab_size=128256, rope_theta=500000.0,
                      max_position_embeddings=131072, tie_word_embeddings=False).to_dict()
    return build_inventory(cfg, model_id="llama-3.1-8b-shape")


def gpus(*specs, ram=64 * G):
    return Hardware(tuple(GPU(i, name, int(mem * G), int(free * G), cc)
                          for i, (name, mem, free, cc) in enumerate(specs)), ram, "catalogue")


def total(inv, prec, context=4096, batch=1, compute="bfloat16"):
    from fitplan.planning.estimate import Workload, estimate

    return estimate(inv, P.get(prec), Workload(context, batch), compute).total_bytes / G


def card_between(lo_gib, hi_gib, headroom=0.10):
    """A card whose usable memory (after default headroom) lies halfway between two totals."""
    return ((lo_gib + hi_gib) / 2) / (1 - headroom)


def plan_for(inv, hw, **opts):
    return decide(inv, hw, PlanOptions.from_values(**opts), model_id=inv.model_id, origin="local")


def test_params_match_published_count(llama8b):
    assert abs(llama8b.parameters - 8_030_261_248) < 0.001 * 8_030_261_248


def test_bf16_on_a_24gb_ampere_card(llama8b):
    p = plan_for(llama8b, gpus(("RTX 4090", 24, 24, (8, 9))), context=4096)
    assert p.precision == "bf16" and p.compute_dtype == "bfloat16"
    assert p.device_map() == {"": 0} and p.max_memory() is None
    rejected = {d.precision: d.rejected_because for d in p.choice.decisions if d.precision != "bf16"}
    assert "preferred" in rejected["fp16"] and "fp32" in rejected["fp32"]
    assert all(rejected[x].startswith("fits, but bf16") for x in ("int8", "nf4", "nf4-dq", "fp4", "fp4-dq"))


def test_small_card_gets_nf4_and_says_why_not_int8(llama8b):
    mem = card_between(total(llama8b, "nf4"), total(llama8b, "int8"))
    p = plan_for(llama8b, gpus(("RTX 3060", mem, mem, (8, 6))), context=4096)
    assert p.precision == "nf4"
    reasons = {d.precision: d.reason for d in p.choice.decisions}
    assert "more than the" in reasons["int8"] and "more than the" in reasons["bf16"]
    kw = p.kwargs_as_data()
    assert kw["quantization_config"] == {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4",
                                         "bnb_4bit_use_double_quant": False, "bnb_4bit_compute_dtype": "bfloat16"}


def test_turing_card_computes_in_fp16(llama8b):
    mem = card_between(total(llama8b, "int8", 2048, compute="float16"), total(llama8b, "fp16", 2048, compute="float16"))
    p = plan_for(llama8b, gpus(("Tesla T4", mem, mem, (7, 5))), context=2048)
    assert p.compute_dtype == "float16"
    assert p.precision == "int8"
    assert "no bf16" in {d.precision: d.rejected_because for d in p.choice.decisions}["bf16"]
    assert p.kwargs_as_data()["dtype"] == "float16"


def test_headroom_changes_the_answer(llama8b):
    bf16 = total(llama8b, "bf16")
    hw = gpus(("A10G", bf16 * 1.05, bf16 * 1.05, (8, 6)))
    assert plan_for(llama8b, hw, context=4096, headroom=0.0).precision == "bf16"
    assert plan_for(llama8b, hw, context=4096, headroom="25%").precision == "int8"
    assert plan_for(llama8b, hw, context=4096, headroom="4GiB").precision == "int8"


def test_longer_context_and_batch_push_down_precision(llama8b):
    hw = gpus(("RTX 4090", 24, 24, (8, 9)))
    assert plan_for(llama8b, hw, context=4096).precision == "bf16"
    assert plan_for(llama8b, hw, context=32768, batch=4).precision != "bf16"


def test_forced_and_minimum_precision(llama8b):
    mem = card_between(total(llama8b, "nf4"), total(llama8b, "int8"))
    hw = gpus(("RTX 3060", mem, mem, (8, 6)))
    p = plan_for(llama8b, hw, precision="int8", context=4096)
    assert not p.fits and "not asked for" in {d.precision: d.rejected_because for d in p.choice.decisions}["nf4"]
    p = plan_for(llama8b, hw, min_precision="int8")
    assert not p.fits
    assert any("shorter context" in s or "GPU with at least" in s for s in p.suggestions())


def test_prefer_memory_and_speed(llama8b):
    hw = gpus(("H100", 80, 80, (9, 0)))
    assert plan_for(llama8b, hw, prefer="memory").precision == "nf4-dq"
    assert plan_for(llama8b, hw, prefer="speed").precision == "bf16"
    mem = card_between(total(llama8b, "nf4", 1024), total(llama8b, "int8", 1024))
    tight = gpus(("RTX 3080", mem, mem, (8, 6)))
    assert plan_for(llama8b, tight, prefer="speed", context=1024).precision == "nf4"
    roomy = card_between(total(llama8b, "int8", 1024), total(llama8b, "bf16", 1024))
    assert plan_for(llama8b, gpus(("A", roomy, roomy, (8, 6))), prefer="speed", context=1024).precision == "nf4"
    assert plan_for(llama8b, gpus(("A", roomy, roomy, (8, 6))), prefer="quality", context=1024).precision == "int8"


def test_split_over_two_gpus_keeps_bf16(llama8b):
    mem = 0.75 * total(llama8b, "bf16") / 0.9  # neither card holds it alone; two do
    hw = gpus(("RTX 4080", mem, mem, (8, 9)), ("RTX 4080", mem, mem, (8, 9)))
    p = plan_for(llama8b, hw, context=4096)
    assert p.precision == "bf16" and p.device_map() == "auto"
    shares = p.decision.placement
    assert [s.device for s in shares] == [0, 1]
    layers = sorted(sum((s.layers for s in shares), ()))
    assert layers == list(range(32))
    for s in shares:
        assert s.total_bytes <= s.budget_bytes
    mm = p.max_memory()
    for s in shares:  # what each GPU can give to weights, in accelerate's units
        room = s.budget_bytes - (s.total_bytes - s.weights_bytes)
        assert mm[s.device] == int(room * weights_fraction_for_accelerate(llama8b, P.BF16, "bfloat16"))
        assert mm[s.device] >= s.weights_bytes * 0.99


def test_split_max_memory_undoes_the_bnb_quantizer_scale(llama8b):
    mem = card_between(total(llama8b, "nf4"), total(llama8b, "int8"))
    hw = gpus(("RTX 3060", mem, mem, (8, 6)), ("RTX 3060", mem, mem, (8, 6)))
    p = plan_for(llama8b, hw, context=4096, precision="int8")
    assert p.device_map() == "auto"
    ratio = weights_fraction_for_accelerate(llama8b, P.INT8, "bfloat16")
    assert ratio < 1  # accelerate does not count SCB
    s = p.decision.placement[0]
    room = s.budget_bytes - (s.total_bytes - s.weights_bytes)
    assert p.max_memory()[0] == int(room * ratio / BNB_MAX_MEMORY_SCALE)


def test_offload_only_when_asked(llama8b):
    hw = gpus(("GTX 1650", 4, 4, (7, 5)))
    assert not plan_for(llama8b, hw, context=2048).fits
    p = plan_for(llama8b, hw, context=2048, offload=True)
    assert p.fits and p.decision.offload_bytes > 0
    assert "cpu" in p.device_map().values() and p.max_memory() is None  # every module named: tests/test_offload.py
    assert "tokens/s over PCIe" in p.decision.reason


def test_cpu_only_prefers_fp32_and_quantizes_only_when_asked(llama8b):
    hw = Hardware((), 64 * G, "probe")
    p = plan_for(llama8b, hw, context=2048)
    assert p.precision == "fp32" and p.device_map() == "cpu"
    assert "only when asked" in {d.precision: d.rejected_because for d in p.choice.decisions}["nf4"]
    small = Hardware((), 12 * G, "probe")
    assert not plan_for(llama8b, small, context=2048).fits
    asked = plan_for(llama8b, small, context=2048, precision="nf4")
    assert asked.fits and asked.device_map() == "cpu"


def test_estimate_total_is_sum_of_terms(llama8b):
    p = plan_for(llama8b, gpus(("H100", 80, 80, (9, 0))), context=8192, batch=2)
    for d in p.choice.decisions:
        e = d.estimate
        assert e.total_bytes == e.weights_bytes + e.kv_cache_bytes + e.activation_bytes + e.overhead_bytes
    kv = p.choice.decisions[1].estimate.kv_cache_bytes
    assert kv == 32 * 2 * 8 * 128 * 8192 * 2 * 2  # layers * (k+v) * kv_heads * head_dim * tokens * batch * bf16


def test_suggested_context_really_fits(llama8b):
    hw = gpus(("RTX 3060", 12, 12, (8, 6)))
    p = plan_for(llama8b, hw, context=262144)
    assert not p.fits
    ctx = [s for s in p.suggestions("cli") if s.startswith("shorter context")]
    assert ctx and f"--context {p.advice[0].changes['context']} fits" in ctx[0]
    assert p.suggestions("api")[0] == f"shorter context: context={p.advice[0].changes['context']} fits"
    n = p.advice[0].changes["context"]
    assert plan_for(llama8b, hw, context=n).fits


@pytest.mark.parametrize("bad", [dict(context=0), dict(batch=-1), dict(precision="int3"), dict(prefer="fast"),
                                 dict(headroom=1.5), dict(headroom="150%"), dict(context=True)])
def test_bad_options_are_input_errors(bad):
    with pytest.raises(InputError):
        PlanOptions.from_values(**bad)


def test_a_prequantized_checkpoint_is_planned_as_stored_without_a_quantizing_note():
    """A GPTQ checkpoint loads as it is stored: one row, and no note about what 4-bit would keep."""
    from transformers import LlamaConfig

    cfg = LlamaConfig(hidden_size=1024, intermediate_size=2816, num_hidden_layers=4, num_attention_heads=16,
                      num_key_value_heads=4, vocab_size=32000).to_dict()
    inv = build_inventory({**cfg, "quantization_config": {"quant_method": "gptq", "bits": 4, "group_size": 128}},
                          model_id="gptq")
    p = plan_for(inv, gpus(("H100", 80, 80, (9, 0))))
    assert [d.precision for d in p.choice.decisions] == ["gptq-int4"] and p.fits
    assert not any(n.startswith("4-bit keeps") for n in p.notes)


