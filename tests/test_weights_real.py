"""The weights estimate against what a real bitsandbytes load holds, for every architecture family.

Each tiny model is built with random weights, saved, and loaded for real on the CPU through
`from_pretrained` at each precision (bitsandbytes' CPU backend for int8/nf4/fp4). The estimate,
made from config.json alone, must match the bytes the loaded model holds (parameters, buffers and
quant state, tied weights once) within 1%.
"""
from __future__ import annotations

import pytest

from fitplan.vocab import precision as P
from fitplan.planning.estimate import weights_bytes
from fitplan.model.build import build_inventory
from fitplan.runtime.measure import held_bytes
from tiny_models import FAMILIES, config_dict, save_tiny

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    return {fam: save_tiny(fam, tmp_path_factory.mktemp(fam)) for fam in FAMILIES}


def _load(path, prec):
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    kw = {}
    if prec.bits == 8:
        kw["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
    elif prec.bits == 4:
        kw["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type=prec.quant_type,
            bnb_4bit_use_double_quant=prec.double_quant, bnb_4bit_compute_dtype=torch.bfloat16)
    dtype = getattr(torch, prec.float_dtype or "bfloat16")
    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype, device_map="cpu", **kw)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_weights_estimate_matches_real_load(family, checkpoints):
    inv = build_inventory(config_dict(family), model_id=family)
    for prec in P.ALL:
        model = _load(checkpoints[family], prec)
        measured = held_bytes(model)["cpu"]
        predicted = weights_bytes(inv, prec, "bfloat16")
        assert abs(predicted - measured) <= 0.01 * measured, (family, prec.name, predicted, measured)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_quantized_modules_are_the_ones_transformers_replaces(family, checkpoints):
    import bitsandbytes as bnb

    inv = build_inventory(config_dict(family), model_id=family)
    model = _load(checkpoints[family], P.NF4)
    replaced = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit)}
    assert {t.name for t in inv.tensors if t.quantizable} == replaced


def test_falcon_and_fused_moe_experts_stay_unquantized():
    """FINDINGS: FalconLinear is skipped (from transformers 5.5; before, any nn.Linear subclass was
    packed); MoE experts stored as fused 3-D parameters stay 16-bit. The real loads above check
    the same answer against bitsandbytes on the installed version."""
    import transformers

    from fitplan.model.hf import EXACT_LINEAR_SINCE
    from fitplan.versions import parse as _version_tuple

    falcon = build_inventory(config_dict("falcon"), model_id="falcon")
    if _version_tuple(transformers.__version__) >= EXACT_LINEAR_SINCE:
        assert not any(t.quantizable for t in falcon.tensors)
        assert weights_bytes(falcon, P.NF4, "bfloat16") == weights_bytes(falcon, P.BF16, "bfloat16")
        assert any("subclasses of nn.Linear" in n for n in falcon.notes)
    else:
        assert any(t.quantizable for t in falcon.tensors)
        assert weights_bytes(falcon, P.NF4, "bfloat16") < weights_bytes(falcon, P.BF16, "bfloat16")
    for fam in ("mixtral-moe", "olmoe-moe"):
        inv = build_inventory(config_dict(fam), model_id=fam)
        experts = [t for t in inv.tensors if "experts" in t.name and len(t.shape) == 3]
        assert experts and not any(t.quantizable for t in experts)


def test_tied_embeddings_counted_once():
    inv = build_inventory(config_dict("qwen2-tied-bias"), model_id="q")
    names = {t.name for t in inv.tensors}
    assert "lm_head.weight" not in names and "model.embed_tokens.weight" in names
