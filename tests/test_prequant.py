"""Pre-quantized checkpoints sized from config.json alone, checked against the stored tensors.

Each test writes a tiny safetensors checkpoint with the tensor names, dtypes and shapes the
method's real checkpoints use (written out here from the packing formats, not from fitplan's
table), then checks that the size fitplan computes from `quantization_config` without headers
equals the stored bytes, or differs by exactly what the loader changes (named per case). No
weights are materialised: the files hold zeros behind a hand-written header.
"""
from __future__ import annotations

import json
import struct
from math import ceil, prod

import pytest

from fitplan.errors import InputError
from fitplan.hardware.machine import GPU, Hardware
from fitplan.model import hf
from fitplan.planning import prequant
from fitplan.model.sources import read_safetensors_header
from fitplan.model.cache import get_inventory
from fitplan.planning.estimate import weights_by_layer, weights_bytes

G = 1 << 30
ST_BYTES = {"F32": 4, "F16": 2, "BF16": 2, "I32": 4, "I64": 8, "U8": 1, "I8": 1, "F8_E4M3": 1}

H, I, V, LAYERS = 256, 512, 512, 2
LLAMA = dict(model_type="llama", architectures=["LlamaForCausalLM"], hidden_size=H, intermediate_size=I,
             num_hidden_layers=LAYERS, num_attention_heads=4, num_key_value_heads=2, vocab_size=V,
             tie_word_embeddings=False, torch_dtype="float16")
#: (name, out, in) of each linear layer of a Llama decoder layer.
LINEARS = (("self_attn.q_proj", H, H), ("self_attn.k_proj", 128, H), ("self_attn.v_proj", 128, H),
           ("self_attn.o_proj", H, H), ("mlp.gate_proj", I, H), ("mlp.up_proj", I, H), ("mlp.down_proj", H, I))


def write_safetensors(path, tensors: dict[str, tuple[str, tuple[int, ...]]]) -> int:
    """A safetensors file of zeros with this header; returns its data bytes."""
    header, offset = {}, 0
    for name, (dtype, shape) in tensors.items():
        n = prod(shape) * ST_BYTES[dtype]
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw + bytes(offset))
    return offset


def llama_dense(dtype="F16") -> dict:
    t = {"model.embed_tokens.weight": (dtype, (V, H)), "model.norm.weight": (dtype, (H,)),
         "lm_head.weight": (dtype, (V, H))}
    for i in range(LAYERS):
        t[f"model.layers.{i}.input_layernorm.weight"] = (dtype, (H,))
        t[f"model.layers.{i}.post_attention_layernorm.weight"] = (dtype, (H,))
    return t


def checkpoint(tmp_path, config: dict, tensors: dict) -> tuple[dict, int]:
    (tmp_path / "config.json").write_text(json.dumps(config))
    stored = write_safetensors(tmp_path / "model.safetensors", tensors)
    assert sum(t.nbytes for t in read_safetensors_header(tmp_path / "model.safetensors")) == stored
    return config, stored


def computed(config: dict, load_dtype="bfloat16") -> int:
    """The as-stored weights fitplan computes from config.json alone (no headers), unaligned, less the
    buffers the model creates itself (rotary inv_freq: no checkpoint stores them)."""
    from fitplan.planning.layout import tensor_bytes
    from fitplan.vocab.precision import BF16

    inv = get_inventory(config, model_id="tiny", use_cache=False)
    buffers = sum(tensor_bytes(t, BF16, load_dtype) for t in inv.tensors if t.buffer)
    return weights_bytes(inv, prequant.as_stored(inv), load_dtype, 1) - buffers


def per_linear(make) -> dict:
    return {f"model.layers.{i}.{name}.{suffix}": spec for i in range(LAYERS) for name, out, inp in LINEARS
            for suffix, spec in make(out, inp).items()}


def gptq(bits: int, group: int):
    g = group if group > 0 else None

    def make(out, inp):
        groups = inp // (g or inp)
        return {"qweight": ("I32", (inp * bits // 32, out)), "qzeros": ("I32", (groups, out * bits // 32)),
                "scales": ("F16", (groups, out)), "g_idx": ("I32", (inp,))}
    return make


@pytest.mark.parametrize("bits,group", [(4, 128), (8, 128), (4, -1), (2, 64)])
def test_gptq_matches_its_stored_tensors(tmp_path, bits, group):
    qc = {"quant_method": "gptq", "bits": bits, "group_size": group, "desc_act": False, "sym": True}
    config, stored = checkpoint(tmp_path, {**LLAMA, "quantization_config": qc}, {**llama_dense(), **per_linear(
        gptq(bits, group))})
    assert computed(config) == stored


def test_awq_gemm_and_gemv_match_their_stored_tensors(tmp_path):
    def gemm(out, inp):
        return {"qweight": ("I32", (inp, out // 8)), "qzeros": ("I32", (inp // 128, out // 8)),
                "scales": ("F16", (inp // 128, out))}

    def gemv(out, inp):  # AutoAWQ WQLinear_GEMV: zeros width = groups rounded up to whole int32 words of 8
        width = ceil(inp // 128 / 8)
        return {"qweight": ("I32", (out, inp // 8)), "qzeros": ("I32", (out, width)), "scales": ("F16", (out, width * 8))}

    for version, make in (("gemm", gemm), ("GEMV", gemv)):
        qc = {"quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": True, "version": version}
        folder = tmp_path / version
        folder.mkdir()
        config, stored = checkpoint(folder, {**LLAMA, "quantization_config": qc}, {**llama_dense(), **per_linear(make)})
        assert computed(config) == stored, version


@pytest.mark.parametrize("qc,scale_shape", [
    ({"weight_block_size": [128, 128], "activation_scheme": "dynamic"}, lambda o, i: (ceil(o / 128), ceil(i / 128))),
    ({"weight_block_size": None, "activation_scheme": "dynamic"}, lambda o, i: ()),
])
def test_fp8_block_and_per_tensor_match_their_stored_tensors(tmp_path, qc, scale_shape):
    qc = {"quant_method": "fp8", "fmt": "e4m3", **qc, "modules_to_not_convert": ["lm_head"]}
    tensors = {**llama_dense("BF16"), **per_linear(lambda o, i: {"weight": ("F8_E4M3", (o, i)),
                                                                 "weight_scale_inv": ("F32", scale_shape(o, i))})}
    config, stored = checkpoint(tmp_path, {**LLAMA, "torch_dtype": "bfloat16", "quantization_config": qc}, tensors)
    assert computed(config) == stored


def test_fp8_static_activations_keep_one_more_scale(tmp_path):
    qc = {"quant_method": "fp8", "weight_block_size": [128, 128], "activation_scheme": "static"}
    tensors = {**llama_dense("BF16"), **per_linear(lambda o, i: {
        "weight": ("F8_E4M3", (o, i)), "weight_scale_inv": ("F32", (ceil(o / 128), ceil(i / 128))),
        "activation_scale": ("F32", ())})}
    config, stored = checkpoint(tmp_path, {**LLAMA, "quantization_config": qc}, tensors)
    assert computed(config) == stored


def test_fp8_moe_experts_fused_as_transformers_holds_them(tmp_path):
    """The checkpoint stores one fp8 linear per expert; transformers fuses them into FP8Experts with one scale
    grid per expert and projection (gate_up keeps at least two scale rows): the same bytes here."""
    experts, moe = 4, 128
    cfg = dict(model_type="qwen3_moe", architectures=["Qwen3MoeForCausalLM"], hidden_size=H, intermediate_size=I,
               moe_intermediate_size=moe, num_hidden_layers=LAYERS, num_attention_heads=4, num_key_value_heads=2,
               head_dim=64, num_experts=experts, num_experts_per_tok=2, vocab_size=V, tie_word_embeddings=False,
               quantization_config={"quant_method": "fp8", "weight_block_size": [128, 128],
                                    "activation_scheme": "dynamic", "modules_to_not_convert": ["lm_head"]})
    fp8 = lambda o, i: {"weight": ("F8_E4M3", (o, i)), "weight_scale_inv": ("F32", (ceil(o / 128), ceil(i / 128)))}
    tensors = llama_dense("BF16")
    for i in range(LAYERS):
        p = f"model.layers.{i}"
        for name, out, inp in LINEARS[:4]:
            tensors.update({f"{p}.{name}.{k}": v for k, v in fp8(out, inp).items()})
        tensors[f"{p}.self_attn.q_norm.weight"] = ("BF16", (64,))
        tensors[f"{p}.self_attn.k_norm.weight"] = ("BF16", (64,))
        tensors[f"{p}.mlp.gate.weight"] = ("BF16", (experts, H))
        for e in range(experts):
            for name, out, inp in (("gate_proj", moe, H), ("up_proj", moe, H), ("down_proj", H, moe)):
                tensors.update({f"{p}.mlp.experts.{e}.{name}.{k}": v for k, v in fp8(out, inp).items()})
    config, stored = checkpoint(tmp_path, cfg, tensors)
    assert computed(config) == stored


def test_fbgemm_fp8_holds_one_input_bound_more_per_layer(tmp_path):
    qc = {"quant_method": "fbgemm_fp8", "activation_scale_ub": 1200.0, "modules_to_not_convert": ["lm_head"]}
    tensors = {**llama_dense("BF16"), **per_linear(lambda o, i: {"weight": ("F8_E4M3", (o, i)),
                                                                 "weight_scale": ("F32", (o, 1))})}
    config, stored = checkpoint(tmp_path, {**LLAMA, "quantization_config": qc}, tensors)
    # FbgemmFp8Linear also registers input_scale_ub, a non-persistent fp32 [1] buffer, per converted layer.
    assert computed(config) == stored + 4 * LAYERS * len(LINEARS)


def test_compressed_tensors_int4_and_fp8_match_their_stored_tensors(tmp_path):
    w4 = {"quant_method": "compressed-tensors", "format": "pack-quantized", "ignore": ["lm_head"],
          "config_groups": {"group_0": {"targets": ["Linear"], "input_activations": None,
                                        "weights": {"num_bits": 4, "type": "int", "symmetric": True,
                                                    "strategy": "group", "group_size": 128}}}}
    fp8 = {"quant_method": "compressed-tensors", "format": "float-quantized", "ignore": ["lm_head"],
           "config_groups": {"group_0": {"targets": ["Linear"],
                                         "input_activations": {"num_bits": 8, "type": "float", "dynamic": True},
                                         "weights": {"num_bits": 8, "type": "float", "symmetric": True,
                                                     "strategy": "channel"}}}}
    cases = {
        "w4a16": (w4, lambda o, i: {"weight_packed": ("I32", (o, i // 8)), "weight_scale": ("BF16", (o, i // 128)),
                                    "weight_shape": ("I64", (2,))}),
        "fp8": (fp8, lambda o, i: {"weight": ("F8_E4M3", (o, i)), "weight_scale": ("BF16", (o, 1))}),
    }
    for name, (qc, make) in cases.items():
        folder = tmp_path / name
        folder.mkdir()
        config, stored = checkpoint(folder, {**LLAMA, "torch_dtype": "bfloat16", "quantization_config": qc},
                                    {**llama_dense("BF16"), **per_linear(make)})
        assert computed(config) == stored, name


def test_bitsandbytes_serialized_nf4_and_int8(tmp_path):
    def nf4(out, inp):
        n, blocks = out * inp, out * inp // 64
        return {"weight": ("U8", (n // 2, 1)), "weight.absmax": ("U8", (blocks,)),
                "weight.nested_absmax": ("F32", (ceil(blocks / 256),)), "weight.nested_quant_map": ("F32", (256,)),
                "weight.quant_map": ("F32", (16,)), "weight.quant_state.bitsandbytes__nf4": ("U8", (JSON,))}

    JSON = 152  # the serialized quant-state JSON; the loader keeps a 4-byte fp32 offset instead
    qc = {"quant_method": "bitsandbytes", "load_in_4bit": True, "bnb_4bit_quant_type": "nf4",
          "bnb_4bit_use_double_quant": True, "bnb_4bit_compute_dtype": "bfloat16"}
    folder = tmp_path / "nf4"
    folder.mkdir()
    config, stored = checkpoint(folder, {**LLAMA, "quantization_config": qc}, {**llama_dense(), **per_linear(nf4)})
    assert computed(config) == stored + (4 - JSON) * LAYERS * len(LINEARS)

    qc8 = {"quant_method": "bitsandbytes", "load_in_8bit": True}
    folder = tmp_path / "int8"
    folder.mkdir()
    config, stored = checkpoint(folder, {**LLAMA, "quantization_config": qc8}, {**llama_dense(), **per_linear(
        lambda o, i: {"weight": ("I8", (o, i)), "weight.SCB": ("F32", (o,))})})
    assert computed(config) == stored


def tiny_gpt_oss(experts=4, inter=256) -> dict:
    return dict(model_type="gpt_oss", architectures=["GptOssForCausalLM"], hidden_size=H, intermediate_size=inter,
                num_hidden_layers=LAYERS, num_attention_heads=4, num_key_value_heads=2, head_dim=64,
                num_local_experts=experts, num_experts_per_tok=2, vocab_size=V, sliding_window=128,
                layer_types=["sliding_attention", "full_attention"], tie_word_embeddings=False,
                quantization_config={"quant_method": "mxfp4", "modules_to_not_convert": [
                    "model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"]})


def test_mxfp4_experts_hold_their_blocks_and_scales_and_fp32_biases(tmp_path):
    experts, inter = 4, 256
    tensors = llama_dense("BF16")
    for i in range(LAYERS):
        p = f"model.layers.{i}"
        for name, out, inp in LINEARS[:4]:
            tensors[f"{p}.{name}.weight"] = ("BF16", (out, inp))
            tensors[f"{p}.{name}.bias"] = ("BF16", (out,))
        tensors[f"{p}.self_attn.sinks"] = ("BF16", (4,))
        tensors[f"{p}.mlp.router.weight"] = ("BF16", (experts, H))
        tensors[f"{p}.mlp.router.bias"] = ("BF16", (experts,))
        for proj, out, inp in (("gate_up_proj", 2 * inter, H), ("down_proj", H, inter)):
            tensors[f"{p}.mlp.experts.{proj}_blocks"] = ("U8", (experts, out, inp // 32, 16))
            tensors[f"{p}.mlp.experts.{proj}_scales"] = ("U8", (experts, out, inp // 32))
            tensors[f"{p}.mlp.experts.{proj}_bias"] = ("BF16", (experts, out))
    config, stored = checkpoint(tmp_path, tiny_gpt_oss(experts, inter), tensors)
    # Mxfp4GptOssExperts keeps both expert biases in fp32: two bytes more per bias element than stored.
    grown = 2 * LAYERS * experts * (2 * inter + H)
    from fitplan.model import hf

    if hf.version_tuple() < (5, 1):  # 5.0 keeps _keep_in_fp32_modules (the norms) fp32 in bf16 too
        grown += 2 * (2 * LAYERS + 1) * H
    assert computed(config) == stored + grown


def test_stored_headers_stay_the_truth_and_spread_over_layers(tmp_path):
    qc = {"quant_method": "gptq", "bits": 4, "group_size": 128}
    config, stored = checkpoint(tmp_path, {**LLAMA, "quantization_config": qc}, {**llama_dense(), **per_linear(
        gptq(4, 128)), "extra.tensor.the.formula.does.not.know": ("F32", (1000,))})
    inv = get_inventory(config, model_id="tiny", stored_bytes=stored, use_cache=False)
    row = prequant.as_stored(inv)
    assert weights_bytes(inv, row, "bfloat16", 512) == stored
    outside, layers = weights_by_layer(inv, row, "bfloat16", 512)
    assert outside + sum(layers.values()) == stored and len(layers) == LAYERS


# -- what GPTQ and the others convert -------------------------------------------------------------------

def test_gptq_converts_only_linear_layers_inside_the_blocks():
    inv = get_inventory({**LLAMA, "quantization_config": {"quant_method": "gptq", "bits": 4}}, model_id="t",
                        use_cache=False)
    converted = {t.name for t in inv.tensors if t.quantizable}
    assert converted == {f"model.layers.{i}.{n}.weight" for i in range(LAYERS) for n, _, _ in LINEARS}


def test_modules_to_not_convert_are_left_at_the_load_dtype():
    qc = {"quant_method": "fp8", "weight_block_size": [128, 128],
          "modules_to_not_convert": ["lm_head", "model.layers.1.mlp"]}
    inv = get_inventory({**LLAMA, "quantization_config": qc}, model_id="t", use_cache=False)
    converted = {t.name for t in inv.tensors if t.quantizable}
    assert "model.layers.0.mlp.down_proj.weight" in converted and "lm_head.weight" not in converted
    assert not any(n.startswith("model.layers.1.mlp.") for n in converted)


# -- rows, kept or dequantized, and the plan ------------------------------------------------------------

def hw(*ccs, mem=80):
    return Hardware(tuple(GPU(i, f"gpu{i}", mem * G, mem * G, cc) for i, cc in enumerate(ccs)), 256 * G, "catalogue")


def plan(config, hardware, **opts):
    from fitplan.options import PlanOptions
    from fitplan.planning.plan import decide

    inv = get_inventory(config, model_id="tiny", use_cache=False)
    return decide(inv, hardware, PlanOptions.from_values(**opts), model_id="tiny", origin="local")


def test_one_row_as_stored_and_no_bitsandbytes_arguments():
    p = plan({**LLAMA, "quantization_config": {"quant_method": "gptq", "bits": 4}}, hw((8, 0)))
    assert [d.precision for d in p.choice.decisions] == ["gptq-int4"] and p.precision == "gptq-int4"
    kw = p.kwargs_as_data()
    assert "quantization_config" not in kw and kw["dtype"] == "bfloat16"
    assert p.to_dict()["model"]["prequantized"] == "gptq"


def test_bitsandbytes_serialized_loads_without_a_new_config():
    qc = {"quant_method": "bitsandbytes", "load_in_4bit": True, "bnb_4bit_quant_type": "nf4"}
    p = plan({**LLAMA, "quantization_config": qc}, hw((8, 0)))
    assert [d.precision for d in p.choice.decisions] == ["bnb-nf4"]
    assert p.quantization_kwargs() is None and "quantization_config" not in p.kwargs_as_data()


def test_fp8_stays_fp8_from_compute_capability_8_9_and_is_dequantized_below():
    from dataclasses import replace

    from fitplan.hardware.software import Software

    cfg = {**LLAMA, "quantization_config": {"quant_method": "fp8", "weight_block_size": [128, 128]}}
    # with `kernels` on the target: from 5.17 fp8 runs through a Hub kernel (tests/test_fp8_kernel.py)
    on_h100 = plan(cfg, replace(hw((9, 0)), software=Software(triton=True, kernels=True, declared=("kernels",))))
    assert on_h100.precision == "fp8"
    assert on_h100.choice.decisions[1].rejected_because.startswith("not used: transformers keeps the fp8 weights")
    # a target with triton: 5.0 loads no fp8 checkpoint without it (tests/test_fp8_kernel.py)
    on_a100 = plan(cfg, replace(hw((8, 0)), software=Software(triton=True, kernels=False, declared=("triton",))))
    assert on_a100.precision == "bf16" and "compute capability 8.9" in on_a100.choice.decisions[0].rejected_because
    fp8_w, bf16_w = (d.estimate.weights_bytes for d in on_a100.choice.decisions)
    assert bf16_w > 1.5 * fp8_w


def test_a_dequantized_row_holds_the_dense_weights_not_the_files_bytes(tmp_path):
    """With the safetensors headers known, the stored total is the as-stored row's; the row transformers
    dequantizes to (fp8 below compute capability 8.9) holds the dense weights, as without headers."""
    from fitplan.options import PlanOptions
    from fitplan.planning.plan import decide

    qc = {"quant_method": "fp8", "weight_block_size": [128, 128], "modules_to_not_convert": ["lm_head"]}
    tensors = {**llama_dense("BF16"), **per_linear(lambda o, i: {
        "weight": ("F8_E4M3", (o, i)), "weight_scale_inv": ("F32", (ceil(o / 128), ceil(i / 128)))})}
    config, stored = checkpoint(tmp_path, {**LLAMA, "torch_dtype": "bfloat16", "quantization_config": qc}, tensors)

    def weights(inv):
        p = decide(inv, hw((8, 0)), PlanOptions.from_values(), model_id="tiny", origin="local")
        return {d.precision: d.estimate.weights_bytes for d in p.choice.decisions}

    headers = weights(get_inventory(config, model_id="tiny", stored_bytes=stored, use_cache=False))
    config_only = weights(get_inventory(config, model_id="tiny", use_cache=False))
    assert headers["fp8"] == stored
    assert headers["bf16"] == config_only["bf16"] > 1.5 * stored


def test_compressed_tensors_plans_the_dense_weights_its_first_forward_makes():
    qc = {"quant_method": "compressed-tensors", "format": "pack-quantized", "ignore": ["lm_head"],
          "config_groups": {"g": {"targets": ["Linear"], "weights": {"num_bits": 4, "type": "int",
                                                                      "strategy": "group", "group_size": 128}}}}
    p = plan({**LLAMA, "quantization_config": qc}, hw((9, 0)))
    stored, dense = p.choice.decisions
    assert stored.precision == "ct-int4" and "first forward" in stored.rejected_because and p.precision == "bf16"
    assert dense.estimate.weights_bytes > 2 * stored.estimate.weights_bytes


def test_fbgemm_fp8_refuses_cards_below_hopper():
    qc = {"quant_method": "fbgemm_fp8", "modules_to_not_convert": ["lm_head"]}
    assert plan({**LLAMA, "quantization_config": qc}, hw((9, 0))).precision == "fbgemm-fp8"
    ada = plan({**LLAMA, "quantization_config": qc}, hw((8, 9)))
    assert not ada.fits and "compute capability 9.0" in ada.choice.decisions[0].rejected_because


def test_mxfp4_is_dequantized_without_triton_and_kernels(monkeypatch):
    monkeypatch.setattr(hf, "mxfp4_kernels", lambda: (False, True))
    p = plan(tiny_gpt_oss(), hw((9, 0)))
    stored, dense = p.choice.decisions
    assert stored.precision == "mxfp4" and "missing on the target: triton>=3.4.0" in stored.rejected_because
    assert p.precision == "bf16" and dense.estimate.weights_bytes > 2 * stored.estimate.weights_bytes
    monkeypatch.setattr(hf, "mxfp4_kernels", lambda: (True, True))
    assert plan(tiny_gpt_oss(), hw((9, 0))).precision == "mxfp4"
    assert plan(tiny_gpt_oss(), hw((7, 0))).precision == "fp16"  # V100: below 7.5, and no bf16
    assert plan(tiny_gpt_oss(), Hardware((), 64 * G, "catalogue"), precision=None).precision == "bf16"  # CPU


def test_precision_picks_among_the_rows_only():
    cfg = {**LLAMA, "quantization_config": {"quant_method": "gptq", "bits": 4}}
    assert plan(cfg, hw((8, 0)), precision="gptq-int4").precision == "gptq-int4"
    with pytest.raises(InputError, match="pre-quantized .gptq-int4.: it loads as stored"):
        plan(cfg, hw((8, 0)), precision="nf4")
    with pytest.raises(InputError, match="is not pre-quantized"):
        plan(LLAMA, hw((8, 0)), precision="gptq-int4")


def test_a_split_places_the_packed_layers():
    cfg = {**LLAMA, "quantization_config": {"quant_method": "gptq", "bits": 4}}
    one = plan(cfg, hw((8, 6)), context=64, headroom=0).decision
    rest = one.placement[0].total_bytes - one.estimate.weights_bytes
    free = rest + int(0.6 * one.estimate.weights_bytes)  # each card holds a little over half the weights
    p = plan(cfg, Hardware(tuple(GPU(i, "small", free, free, (8, 6)) for i in range(4)), 64 * G, "catalogue"),
             context=64, headroom=0)
    d = p.decision
    assert d is not None and len(d.placement) > 1 and p.max_memory() is not None
    assert sum(s.weights_bytes for s in d.placement) == d.estimate.weights_bytes


def test_malformed_and_unknown_quantization_configs():
    with pytest.raises(InputError, match="quantization_config.bits"):
        get_inventory({**LLAMA, "quantization_config": {"quant_method": "gptq", "bits": 5}}, model_id="t",
                      use_cache=False)
    from fitplan.errors import UnsupportedModelError
    with pytest.raises(UnsupportedModelError, match="safetensors headers are not available"):
        get_inventory({**LLAMA, "quantization_config": {"quant_method": "hqq"}}, model_id="t", use_cache=False)
    inv = get_inventory({**LLAMA, "quantization_config": {"quant_method": "hqq"}}, model_id="t",
                        stored_bytes=123_456_789, use_cache=False)
    assert weights_bytes(inv, prequant.as_stored(inv), "bfloat16", 512) == 123_456_789


# -- the published cases of issue 12 ----------------------------------------------------------------------

def catalogue_config(repo_id: str) -> dict:
    from fitplan.model.sources import resolve

    return resolve(repo_id, offline=True).config


def test_llama_3_1_8b_gptq_int4_is_its_stored_size_not_bf16():
    """hugging-quants/Meta-Llama-3.1-8B-Instruct-GPTQ-INT4 stores 5.73 GB (issue 12); fitplan showed 16.06 GB."""
    qc = {"bits": 4, "damp_percent": 0.1, "dataset": "c4", "desc_act": True, "group_size": 128,
          "modules_in_block_to_quantize": None, "quant_method": "gptq", "sym": True, "true_sequential": True}
    p = plan({**catalogue_config("meta-llama/Llama-3.1-8B-Instruct"), "quantization_config": qc}, hw((8, 6), mem=12),
             context=8192)
    assert p.precision == "gptq-int4" and len(p.choice.decisions) == 1
    assert abs(p.decision.estimate.weights_bytes - 5.73e9) < 0.005e9


def test_gpt_oss_120b_fits_one_h100_only_with_mxfp4_kernels(monkeypatch):
    cfg = catalogue_config("openai/gpt-oss-120b")
    monkeypatch.setattr(hf, "mxfp4_kernels", lambda: (True, True))
    kept = plan(cfg, hw((9, 0)), context=1024)
    assert kept.precision == "mxfp4" and 60 * G < kept.decision.estimate.weights_bytes < 62 * G
    monkeypatch.setattr(hf, "mxfp4_kernels", lambda: (False, False))
    dequantized = plan(cfg, hw((9, 0)), context=1024)
    assert not dequantized.fits
    assert abs(dequantized.choice.decisions[1].estimate.weights_bytes - 233.7e9) < 0.1e9


def test_a_folder_of_bin_files_plans_from_the_config_and_with_safetensors_from_the_headers(tmp_path):
    """The CLI end to end: a `.bin`-only folder has no headers, so the size comes from quantization_config;
    the same folder with its safetensors file holds the stored total."""
    from click.testing import CliRunner

    from fitplan.cli.main import main

    qc = {"quant_method": "gptq", "bits": 4, "group_size": 128, "desc_act": False, "sym": True}
    config, stored = checkpoint(tmp_path, {**LLAMA, "quantization_config": qc}, {**llama_dense(), **per_linear(
        gptq(4, 128))})
    (tmp_path / "model.safetensors").rename(tmp_path / "pytorch_model.bin")
    args = ["check", str(tmp_path), "--gpu", "rtx3060", "--json", "--no-cache"]
    from_config = json.loads(CliRunner().invoke(main, args).stdout)
    assert [e["precision"] for e in from_config["estimates"]] == ["gptq-int4"]
    assert "quantization_config" not in from_config["plan"]["from_pretrained_kwargs"]
    (tmp_path / "pytorch_model.bin").rename(tmp_path / "model.safetensors")
    from_headers = json.loads(CliRunner().invoke(main, args).stdout)
    assert from_headers["estimates"][0]["weights_bytes"] == stored
    # the config path aligns each allocation to 512 bytes on CUDA and counts the rotary buffers
    assert stored <= from_config["estimates"][0]["weights_bytes"] < stored + 512 * 200


def test_the_model_and_planning_tables_name_the_same_methods():
    """A method's scheme (model stage), the weights it converts on the built model (the transformers
    quarantine) and its byte layout (planning) are three rows of one fact: a method in one table and not
    another would be parsed and then sized as nothing."""
    from fitplan.model.hf import CONVERTS
    from fitplan.model.prequant import PARSERS

    assert set(PARSERS) == set(CONVERTS) == set(prequant.LAYOUTS) and PARSERS
