"""Pure functions of fitplan.engines: sharding, pipeline split, KV pages, choice, command, bad input."""
from __future__ import annotations

import pytest

from fitplan import calibration as C

from fitplan.engines.choose import plan_engine
from fitplan.engines.model import AttentionGeometry, geometry
from fitplan.engines.plan import Knobs
from fitplan.engines.shard import pad_vocab, pp_layers, rank_weights
from fitplan.engines.vllm import _blocks_per_request, _groups, batch_defaults, plan_vllm
from fitplan.errors import InputError
from fitplan.hardware.catalogue import hardware_from_gpu_flag
from fitplan.model.inventory import Inventory, KVLayer, TensorInfo


def test_vocab_is_padded_to_64_then_split():
    assert pad_vocab(151936, 1) == 151936
    assert pad_vocab(128256, 8) == 16032
    assert pad_vocab(32001, 2) == 16032  # 32001 -> 32064 -> 16032


def test_pipeline_stages_split_layers_as_get_pp_indices():
    assert [len(r) for r in pp_layers(80, 2)] == [40, 40]
    assert [len(r) for r in pp_layers(61, 4)] == [15, 15, 16, 15]  # the remainder goes to the stage before the last
    assert [r.start for r in pp_layers(61, 4)] == [0, 15, 30, 46]


def _tiny(kv_heads=2, heads=8, hd=16, layers=4, vocab=1000, hidden=128, inter=256):
    t = []
    for i in range(layers):
        p = f"model.layers.{i}."
        t += [TensorInfo(p + "self_attn.q_proj.weight", (heads * hd, hidden), quantizable=True),
              TensorInfo(p + "self_attn.k_proj.weight", (kv_heads * hd, hidden), quantizable=True),
              TensorInfo(p + "self_attn.v_proj.weight", (kv_heads * hd, hidden), quantizable=True),
              TensorInfo(p + "self_attn.o_proj.weight", (hidden, heads * hd), quantizable=True),
              TensorInfo(p + "mlp.gate_proj.weight", (inter, hidden), quantizable=True),
              TensorInfo(p + "mlp.up_proj.weight", (inter, hidden), quantizable=True),
              TensorInfo(p + "mlp.down_proj.weight", (hidden, inter), quantizable=True),
              TensorInfo(p + "input_layernorm.weight", (hidden,))]
    t += [TensorInfo("model.embed_tokens.weight", (vocab, hidden)), TensorInfo("model.norm.weight", (hidden,)),
          TensorInfo("lm_head.weight", (vocab, hidden))]
    inv = Inventory("tiny", "llama", "LlamaForCausalLM", 0, tuple(t),
                    tuple(KVLayer(2 * kv_heads * hd) for _ in range(layers)), hidden, inter, layers, heads, vocab,
                    "sdpa", "bfloat16", max_positions=4096)
    geo = AttentionGeometry(layers, heads, kv_heads, hd, layer_windows=(None,) * layers, vocab_size=vocab)
    return inv, geo


def test_tp_shards_linears_replicates_norms_and_kv_heads_past_tp():
    inv, geo = _tiny(kv_heads=2)
    size = lambda t: t.numel * 2
    whole = rank_weights(inv, geo, size, 1, 1)[0].total
    tp4 = rank_weights(inv, geo, size, 4, 1)[0].total
    per_layer_q = 8 * 16 * 128 * 2
    kv_whole = 2 * 2 * 16 * 128 * 2  # k and v, 2 heads
    # TP 4 > 2 KV heads: each rank keeps one head of k and of v (max(1, 2 // 4)), not half a head
    kv_rank = 2 * 1 * 16 * 128 * 2
    norms = 4 * 128 * 2 + 128 * 2
    vocab_rank = 2 * pad_vocab(1000, 4) * 128 * 2
    linears = 4 * (2 * per_layer_q + 3 * 256 * 128 * 2)
    assert tp4 == linears // 4 + 4 * kv_rank + norms + vocab_rank
    assert whole == linears + 4 * kv_whole + norms + 2 * 1000 * 128 * 2


def test_pp_puts_embedding_first_and_lm_head_last():
    inv, geo = _tiny()
    first, last = rank_weights(inv, geo, lambda t: t.numel * 2, 1, 2)
    assert first.vocab == last.vocab == 1000 * 128 * 2
    assert first.layers == last.layers == 2
    assert last.total - first.total == 128 * 2  # the final norm


def test_hybrid_sliding_layers_group_as_kv_cache_utils():
    geo = AttentionGeometry(62, 32, 16, 128, layer_windows=tuple(None if (i + 1) % 6 == 0 else 1024
                                                                 for i in range(62)))
    size, windows = _groups(geo, range(62))
    assert size == 10 and windows.count(None) == 1 and len(windows) == 7
    # a sliding group needs window - 1 + batched tokens of blocks per request, plus one
    assert _blocks_per_request([1024], 32768, 2048, 16) == -(-(1023 + 2048) // 16) + 1


def test_vllm_budget_is_utilization_times_total_less_non_kv():
    inv, geo = _tiny()
    gpu = hardware_from_gpu_flag("h100", 0).gpus[0]
    p = plan_vllm(inv, geo, gpu, Knobs(gpu_memory_utilization=0.5), tp=1, pp=1, max_model_len=4096)
    r = p.per_rank[0]
    assert r.available_kv_cache_bytes == int(gpu.free_bytes * 0.5) - r.weights_bytes - r.activation_bytes \
        - r.non_torch_bytes
    per_token = 4 * 2 * 2 * 16 * 2
    assert p.kv_cache_tokens == r.available_kv_cache_bytes // (16 * per_token // 4) // 4 * 16
    assert p.max_concurrency == pytest.approx(p.kv_cache_tokens / 4096, rel=0.01)
    assert batch_defaults(gpu) == (8192, 1024)
    assert batch_defaults(hardware_from_gpu_flag("a100-80gb", 0).gpus[0]) == (2048, 256)


def test_geometry_reads_windows_and_mla():
    g = geometry({"num_hidden_layers": 4, "num_attention_heads": 8, "hidden_size": 256, "num_key_value_heads": 2,
                  "sliding_window": 512, "layer_types": ["sliding_attention", "full_attention"] * 2})
    assert g.layer_windows == (512, None, 512, None) and g.head_dim == 32
    m = geometry({"num_hidden_layers": 2, "num_attention_heads": 128, "hidden_size": 7168, "kv_lora_rank": 512,
                  "qk_rope_head_dim": 64})
    assert m.mla and m.mla_cache_elements == 576


def test_choice_and_command_and_rejections():
    inv, geo = _tiny(heads=8, kv_heads=8)
    cfg = {"num_hidden_layers": 4, "num_attention_heads": 8, "hidden_size": 128, "num_key_value_heads": 8,
           "vocab_size": 1000}
    hw = hardware_from_gpu_flag("2xh100", 0)
    c = plan_engine(inv, cfg, hw, engine="vllm", knobs=Knobs(), max_model_len=4096, concurrency=1, model_id="m/x")
    assert c.plan.fits and c.plan.tensor_parallel_size == 1 and not c.rejected
    assert c.plan.command == ("vllm serve m/x --tensor-parallel-size 1 --pipeline-parallel-size 1 --max-model-len "
                              "4096 --gpu-memory-utilization 0.9",)
    s = plan_engine(inv, cfg, hw, engine="sglang", knobs=Knobs(tensor_parallel_size=2), max_model_len=4096,
                    concurrency=1, model_id="m/x")
    assert s.plan.command[0].startswith("python -m sglang.launch_server --model-path m/x --tp 2 --pp-size 1")


@pytest.mark.parametrize("knobs, words", [
    (Knobs(tensor_parallel_size=3), "does not divide the 8 attention heads"),
    (Knobs(tensor_parallel_size=4), "4 ranks, but the hardware has 2 GPUs"),
])
def test_bad_parallel_sizes_are_one_line_input_errors(knobs, words):
    inv, _ = _tiny(heads=8, kv_heads=8)
    cfg = {"num_hidden_layers": 4, "num_attention_heads": 8, "hidden_size": 128, "num_key_value_heads": 8}
    with pytest.raises(InputError, match=words):
        plan_engine(inv, cfg, hardware_from_gpu_flag("2xh100", 0), engine="vllm", knobs=knobs, max_model_len=4096,
                    concurrency=1, model_id="m/x")


def _shipped(model):
    from fitplan.model.cache import get_inventory
    from fitplan.model.sources import resolve

    src = resolve(model, offline=True)
    return get_inventory(src.config, model_id=src.model_id, stored_bytes=None, stored_parameters=None,
                         auto_class=None), src.config


def test_mla_latents_are_whole_on_every_rank_and_gqa_heads_split():
    inv, cfg = _shipped("deepseek-ai/DeepSeek-V3")
    geo, h200 = geometry(cfg), hardware_from_gpu_flag("h200", 0).gpus[0]
    p4, p8 = (plan_vllm(inv, geo, h200, Knobs(), tp=tp, pp=1, max_model_len=8192) for tp in (4, 8))
    assert geo.mla and p4.kv_bytes_per_token == p8.kv_bytes_per_token == 61 * 576 * 2
    inv, cfg = _shipped("meta-llama/Llama-3.1-70B-Instruct")
    geo = geometry(cfg)
    p2, p4 = (plan_vllm(inv, geo, h200, Knobs(), tp=tp, pp=1, max_model_len=8192) for tp in (2, 4))
    assert p2.kv_bytes_per_token == 2 * p4.kv_bytes_per_token == 80 * 2 * 4 * 128 * 2
    # 8 KV heads under TP 16 stay one head per rank: replicated, not halved
    p16 = plan_vllm(inv, geo, h200, Knobs(), tp=16, pp=1, max_model_len=8192)
    assert p16.kv_bytes_per_token == 80 * 2 * 1 * 128 * 2 and any("replicated" in n for n in p16.notes)


def test_gemma3_sliding_layers_come_from_the_config():
    _, cfg = _shipped("google/gemma-3-27b-it")
    geo = geometry(cfg)
    assert geo.sliding_layers == 52 and geo.layer_windows.count(None) == 10


def test_fp8_kv_cache_halves_the_bytes_per_token_and_online_fp8_needs_ampere():
    inv, cfg = _shipped("meta-llama/Llama-3.1-8B-Instruct")
    geo, h100 = geometry(cfg), hardware_from_gpu_flag("h100", 0).gpus[0]
    auto, fp8 = (plan_vllm(inv, geo, h100, Knobs(kv_cache_dtype=k), tp=1, pp=1, max_model_len=8192)
                 for k in ("auto", "fp8"))
    assert auto.kv_bytes_per_token == 2 * fp8.kv_bytes_per_token
    assert fp8.kv_cache_tokens == pytest.approx(2 * auto.kv_cache_tokens, rel=0.001)
    with pytest.raises(InputError, match="compute capability 8.0"):
        plan_engine(inv, cfg, hardware_from_gpu_flag("t4", 0), engine="vllm", knobs=Knobs(quantization="fp8"),
                    max_model_len=4096, concurrency=1, model_id="m")
    with pytest.raises(InputError, match="pre-quantized"):
        ds, dcfg = _shipped("deepseek-ai/DeepSeek-V3")
        plan_engine(ds, dcfg, hardware_from_gpu_flag("8xh200", 0), engine="vllm", knobs=Knobs(quantization="fp8"),
                    max_model_len=4096, concurrency=1, model_id="m")


def test_bitsandbytes_checkpoint_is_sized_in_its_layout_for_vllm_and_refused_for_sglang():
    from fitplan.errors import UnsupportedModelError
    from fitplan.model.cache import get_inventory
    from fitplan.model.sources import resolve

    src = resolve("meta-llama/Llama-3.2-1B", offline=True)
    cfg = {**src.config, "quantization_config": {"quant_method": "bitsandbytes", "load_in_4bit": True,
                                                 "bnb_4bit_quant_type": "nf4"}}
    inv = get_inventory(cfg, model_id="x/llama-1b-bnb", stored_bytes=None, stored_parameters=None, auto_class=None)
    bf16, _ = _shipped("meta-llama/Llama-3.2-1B")
    hw = hardware_from_gpu_flag("a100-80gb", 0)
    q = plan_engine(inv, cfg, hw, engine="vllm", knobs=Knobs(), max_model_len=4096, concurrency=1, model_id="q")
    f = plan_engine(bf16, src.config, hw, engine="vllm", knobs=Knobs(), max_model_len=4096, concurrency=1,
                    model_id="f")
    assert q.plan.per_rank[0].weights_bytes < 0.6 * f.plan.per_rank[0].weights_bytes
    assert "--quantization" not in q.plan.command[0]
    with pytest.raises(UnsupportedModelError, match="bitsandbytes"):
        plan_engine(inv, cfg, hw, engine="sglang", knobs=Knobs(), max_model_len=4096, concurrency=1, model_id="q")


def test_layouts_keep_tp_within_a_node_and_pp_across_nodes():
    from fitplan.engines.model import layouts as _layouts

    geo = AttentionGeometry(61, 128, 128, 128)
    assert _layouts(geo, 8, 8, Knobs()) == [(1, 1), (2, 1), (4, 1), (8, 1)]
    assert _layouts(geo, 16, 8, Knobs())[-1] == (8, 2)
    odd = AttentionGeometry(30, 15, 5, 64)  # no TP above 1 divides 15 heads: stages within the node
    assert (1, 3) in _layouts(odd, 4, 4, Knobs()) and all(tp == 1 for tp, _ in _layouts(odd, 4, 4, Knobs()))
    assert _layouts(geo, 8, 8, Knobs(tensor_parallel_size=4, pipeline_parallel_size=2)) == [(4, 2)]


@pytest.mark.parametrize("card,board", [("h100", True), ("h200", True), ("b200", True), ("a100-80gb", True),
                                        ("h100-pcie", False), ("h100-nvl", False), ("a100-80gb-pcie", False),
                                        ("l4", False), ("l40s", False), ("rtx4090", False)])
def test_nvlink_boards_are_told_from_the_nvml_name(card, board):
    from fitplan.engines.common import nvlink_board

    assert nvlink_board(hardware_from_gpu_flag(card, 0).gpus[0]) is board


@pytest.mark.parametrize("name,board", [("NVIDIA H800", True), ("NVIDIA H800 PCIe", False)])
def test_h800_modules_are_nvlink_boards_and_its_pcie_card_is_not(name, board):
    """The H800 is not in the catalogue; a probed card carries its NVML name, which for the SXM module is plain."""
    from fitplan.engines.common import nvlink_board
    from fitplan.hardware.machine import GPU

    assert nvlink_board(GPU(0, name, 81559 << 20, 81079 << 20, (9, 0))) is board


def test_sglang_counts_the_context_and_torch_distributed_before_the_weights():
    """The CUDA context on every rank; torch.distributed's buffers only with several ranks, large on NVLink boards
    under TP (NCCL's NVLink buffers, the custom all-reduce), small on PCIe cards and pipeline-only ranks."""
    from fitplan.engines import sglang

    h100, l4 = (hardware_from_gpu_flag(c, 0).gpus[0] for c in ("h100", "l4"))
    ctx = C.CUDA_CONTEXT_MEASURED_BYTES
    assert sglang.preload_bytes(h100, 1, 1) == sglang.preload_bytes(l4, 1, 1) == ctx
    assert sglang.preload_bytes(h100, 4, 1) == ctx + C.SGLANG_DIST_INIT_NVLINK_BYTES
    assert sglang.preload_bytes(l4, 4, 1) == sglang.preload_bytes(h100, 1, 2) == ctx + C.SGLANG_DIST_INIT_OTHER_BYTES
    inv, geo = _tiny()
    on = {c: sglang.plan_sglang(inv, geo, hardware_from_gpu_flag(c, 0).gpus[0], Knobs(gpu_memory_utilization=0.85),
                                tp=2, pp=1, max_model_len=1024) for c in ("h100", "h100-pcie")}
    # same memory, same weights: the PCIe card keeps 0.85 x (2.01 - 0.13) GiB more for the KV cache
    gap = on["h100-pcie"].available_kv_cache_bytes - on["h100"].available_kv_cache_bytes
    want = (C.SGLANG_DIST_INIT_NVLINK_BYTES - C.SGLANG_DIST_INIT_OTHER_BYTES) * 0.85
    assert abs(gap - want) < 2 << 20


@pytest.mark.parametrize("model", ["deepseek-ai/DeepSeek-V3", "deepseek-ai/DeepSeek-R1"])
def test_engines_hold_moe_routers_in_the_model_dtype_and_the_score_bias_in_float32(model):
    """vLLM's ReplicatedLinear and SGLang's MoEGate build the router in the model's dtype, whatever transformers
    declares for it (DeepSeek-V3's router is float32 from transformers 5.24 on, not in 5.0 or 5.17): the fp8
    checkpoint's router weights are bf16 on every rank, its e_score_correction_bias float32, on every leg alike."""
    from fitplan.engines.common import sizer

    inv, _ = _shipped(model)
    size = sizer(inv, "bfloat16", None)
    gates = [t for t in inv.tensors if t.name.endswith("mlp.gate.weight")]
    biases = [t for t in inv.tensors if t.name.endswith("e_score_correction_bias")]
    assert len(gates) == len(biases) == 58  # the 58 MoE layers of 61 (first_k_dense_replace = 3)
    assert all(size(t) == t.numel * 2 for t in gates)
    assert all(size(t) == t.numel * 4 for t in biases)


# Hybrid models: recurrent (Gated DeltaNet) state on vLLM 0.11.0. The expected figures below are vLLM's own formulas
# (vllm/model_executor/layers/mamba/mamba_utils.py, vllm/model_executor/models/config.py, vllm/v1/core/kv_cache_utils.py)
# worked by hand from Qwen3-Next's config.json, not fitplan's output copied back.
QWEN3_NEXT = "Qwen/Qwen3-Next-80B-A3B-Instruct"


def _qwen3_next():
    """Its inventory and config; skipped where the installed transformers cannot size its cache (5.0 cannot run its
    forward on the meta device: fitplan refuses the model in one line there, tests/test_engine_cli.py checks that)."""
    from fitplan.errors import UnsupportedModelError
    from fitplan.model import hf

    try:
        return _shipped(QWEN3_NEXT)
    except UnsupportedModelError as exc:
        pytest.skip(f"transformers {hf.version()} cannot size Qwen3-Next's cache: {exc}")


def _qwen3_next_config() -> dict:
    """The shipped config.json alone (no transformers): what the engine's pool arithmetic reads."""
    from fitplan.model.sources import resolve

    return resolve(QWEN3_NEXT, offline=True).config


def test_gated_delta_net_state_splits_its_heads_over_the_ranks():
    from fitplan.engines.model import GatedDeltaNet
    from fitplan.engines.vllm import state_page_bytes

    gdn = GatedDeltaNet(num_k_heads=16, num_v_heads=32, head_k_dim=128, head_v_dim=128, conv_kernel=4)
    # conv_dim = 2 x 16 x 128 + 32 x 128 = 8192 channels, kernel - 1 = 3 steps; recurrent state 32 v-heads of 128 x 128
    assert gdn.state_shapes(1) == ((3, 8192), (32, 128, 128))
    assert gdn.state_shapes(4) == ((3, 2048), (8, 128, 128))
    assert gdn.state_shapes(2, num_spec=2) == ((5, 4096), (16, 128, 128))  # MTP drafts widen the conv window
    assert state_page_bytes(gdn, 1, 2) == (3 * 8192 + 32 * 128 * 128) * 2 == 1_097_728
    assert state_page_bytes(gdn, 4, 2) * 4 == state_page_bytes(gdn, 1, 2)
    with pytest.raises(InputError, match="does not divide the 32 linear-attention value heads"):
        gdn.state_shapes(64)


def test_qwen3_next_geometry_has_full_attention_every_fourth_layer():
    geo = geometry(_qwen3_next_config())
    assert geo.linear_attention is not None
    assert geo.attention_layers == tuple(range(3, 48, 4))
    assert len(geo.state_layers) == 36 and not set(geo.state_layers) & set(geo.attention_layers)
    inv, _ = _qwen3_next()
    # fitplan's inventory agrees that exactly those layers keep a fixed state (read off transformers' cache)
    assert [i for i, k in enumerate(inv.kv_layers) if k.state_elements or k.state_fixed_bytes] == list(geo.state_layers)


@pytest.mark.parametrize("tp, kv_e, block", [
    # attention bytes per token per layer: 2 x max(1, 2 // tp) x 256 x kv_e; state page (3 x 8192/tp + 32/tp x 128 x
    # 128) x 2 bytes; block = 16 x cdiv(state, 16 x attention)
    (1, 2, 16 * -(-1_097_728 // (16 * 2048))),   # 544
    (2, 2, 16 * -(-548_864 // (16 * 1024))),     # 544
    (4, 2, 16 * -(-274_432 // (16 * 1024))),     # 272: one KV head per rank from TP 2 on
    (4, 1, 16 * -(-274_432 // (16 * 512))),      # 544: an fp8 KV cache doubles the tokens a page needs
])
def test_attention_block_grows_until_a_page_holds_a_state_page(tp, kv_e, block):
    from fitplan.engines.vllm import hybrid_pool

    pool = hybrid_pool(geometry(_qwen3_next_config()), tp, kv_e, 2)
    attn_token = 2 * max(1, 2 // tp) * 256 * kv_e
    assert pool.block == block and pool.block % 16 == 0
    assert pool.page == block * attn_token >= pool.state_page > (block - 16) * attn_token  # the smallest such block
    # 12 attention layers and 36 state layers: groups of min(12, 36) = 12, the state layers dealt as layers[i::3]
    assert [(k, len(g)) for k, g in pool.groups] == [("attention", 12)] + [("state", 12)] * 3
    state = [g for k, g in pool.groups if k == "state"]
    assert state[0][:3] == (0, 4, 8) and state[1][:3] == (1, 5, 9) and state[2][:3] == (2, 6, 10)


def test_hybrid_tokens_and_concurrency_follow_kv_cache_utils():
    inv, cfg = _qwen3_next()
    geo, h100 = geometry(cfg), hardware_from_gpu_flag("h100", 0).gpus[0]
    length = 32768
    p = plan_vllm(inv, geo, h100, Knobs(), tp=4, pp=1, max_model_len=length)
    page, block = 272 * 1024, 272
    num_blocks = p.available_kv_cache_bytes // page // 12  # get_num_blocks: available // page // group size
    assert p.block_size == block
    assert p.kv_cache_tokens == num_blocks // 4 * block  # four groups, the smallest block size
    # one request: cdiv(32768, 272) attention pages plus one page in each of the 3 state groups
    assert p.max_concurrency == pytest.approx(num_blocks / (-(-length // block) + 3))
    assert p.kv_bytes_per_token == 12 * 2 * 1 * 256 * 2  # only the 12 attention layers grow with the context
    # the largest --max-model-len: 36 state pages and cdiv(len, 272) pages for each of the 12 attention layers fit
    pages = p.available_kv_cache_bytes // page
    assert p.max_model_len_fit == min(inv.max_positions, (pages - 36) // 12 * block)
    assert any("Gated DeltaNet" in n and "272 tokens" in n for n in p.notes)


def test_hybrid_pool_against_a_public_vllm_log():
    """vllm-project/vllm#26646 (2025-10-11, vLLM 0.11 era, Qwen3-Next int4 AutoRound, TP 2, --dtype float16,
    --kv-cache-dtype fp8_e5m2, --max-model-len 215040) logs "GPU KV cache size: 90,048 tokens" and "Maximum
    concurrency for 215,040 tokens per request: 1.66x". Its checkpoint's weights are not shipped (no available-memory
    match), but both figures come from one block count, which fitplan's pool must reproduce: 1072-token blocks
    (16 x cdiv(548,864 state bytes, 16 x 512)), four groups and cdiv(215040, 1072) + 3 blocks a request."""
    from fitplan.engines.vllm import hybrid_pool

    pool = hybrid_pool(geometry(_qwen3_next_config()), 2, 1, 2)
    counts = [n for n in range(1, 10_000) if pool.tokens(n, 215040) == 90_048
              and round(n / pool.blocks_per_request(215040), 2) == 1.66]
    assert pool.block == 1072 and counts, "no block count gives both logged figures"


def test_recurrent_state_plans_on_vllm_and_is_refused_elsewhere_in_one_line():
    from fitplan.errors import UnsupportedModelError

    inv, cfg = _qwen3_next()
    hw = hardware_from_gpu_flag("4xh100", 0)
    choice = plan_engine(inv, cfg, hw, engine="vllm", knobs=Knobs(tensor_parallel_size=4), max_model_len=65536,
                         concurrency=4, model_id=QWEN3_NEXT, runs="0.11.0")
    assert choice.plan.fits and choice.plan.block_size == 272 and choice.plan.version == "0.11.0"
    # vLLM 0.19 reworked the state pool: planned as 0.11 builds it only when asked for a release it mirrors
    with pytest.raises(UnsupportedModelError, match=r"state pool as 0.11.0 builds it, not as 0.19.0 does: plan it "
                                                    r"with .*engine_version=0.11.0"):
        plan_engine(inv, cfg, hw, engine="vllm", knobs=Knobs(tensor_parallel_size=4), max_model_len=65536,
                    concurrency=4, model_id=QWEN3_NEXT, runs="0.19.1")
    with pytest.raises(UnsupportedModelError, match="sglang 0.4.9, the version fitplan mirrors, has no model for it"):
        plan_engine(inv, cfg, hw, engine="sglang", knobs=Knobs(), max_model_len=8192, concurrency=1,
                    model_id=QWEN3_NEXT)
    # another kind of recurrent state (no Gated DeltaNet geometry): refused on vLLM too, naming what is mirrored
    other = {**cfg, "model_type": "some_ssm"}
    with pytest.raises(UnsupportedModelError, match="of a kind fitplan does not mirror on vllm"):
        plan_engine(inv, other, hw, engine="vllm", knobs=Knobs(), max_model_len=8192, concurrency=1,
                    model_id="x/ssm")


def test_hybrid_plan_against_a_public_vllm_0_10_2_log_on_two_h200s():
    """A public startup log of vLLM 0.10.2 (whose hybrid accounting is 0.11.0's: the same page unification, groups and
    figures) serving Qwen3-Next-80B-A3B-Instruct with `--tensor-parallel-size 2` and every other flag at its default on
    two H200s prints: "Setting attention block size to 544 tokens", "Padding mamba page size by 1.49%", "Model loading
    took 74.2812 GiB", "Available KV cache memory: 44.59 GiB", "GPU KV cache size: 973,760 tokens", "Maximum
    concurrency for 262,144 tokens per request: 14.77x", "num_gpu_blocks is: 7162", and in its memory summary "Desired
    GPU memory utilization is (0.9, 125.83 GiB) ... 5.58 GiB for peak activation, 1.38 GiB for non-torch memory".
    The file was found in a code index whose repository could not be resolved, so it is not a case of
    tests/data/engine_logs.yaml (which needs a link); docs/engines.md gives it with these figures."""
    from fitplan.engines.vllm import hybrid_pool

    inv, cfg = _qwen3_next()
    geo, h200 = geometry(cfg), hardware_from_gpu_flag("h200", 0).gpus[0]
    p = plan_vllm(inv, geo, h200, Knobs(), tp=2, pp=1, max_model_len=262144, version="0.11.0")
    assert p.block_size == 544
    pool = hybrid_pool(geo, 2, 2, 2)
    assert round(100 * (pool.page - pool.state_page) / pool.state_page, 2) == 1.49
    # the pool from the log's own available memory: every figure it prints, exactly
    blocks = pool.num_blocks(round(44.59 * 2**30), range(48))
    assert blocks == 7162
    assert pool.tokens(blocks, 262144) == 973_760
    assert round(blocks / pool.blocks_per_request(262144), 2) == 14.77
    # the budget: fitplan's weights are the log's within 0.1%, and with the log's own profile-run peak and non-torch
    # memory in place of fitplan's, gpu_memory_utilization x total - weights - those is the logged 44.59 GiB
    r = p.per_rank[0]
    assert r.weights_bytes / 2**30 == pytest.approx(74.2812, rel=1e-3)
    requested = r.available_kv_cache_bytes + r.weights_bytes + r.activation_bytes + r.non_torch_bytes
    assert requested / 2**30 == pytest.approx(125.83, abs=0.01)
    assert (requested - r.weights_bytes) / 2**30 - 5.58 - 1.38 == pytest.approx(44.59, rel=2e-3)


def test_each_mirrored_vllm_release_has_its_accounting():
    from fitplan.engines.vllm import ACCOUNTING
    from fitplan.versions import ENGINE_MIRRORS

    assert tuple(ACCOUNTING) == ENGINE_MIRRORS["vllm"]
    assert all(v == a.version for v, a in ACCOUNTING.items())


@pytest.mark.parametrize("card, tp, pp, gib", [("h100", 1, 1, 0.27), ("h100", 1, 2, 0.07), ("h100", 2, 1, 2.21),
                                               ("h100", 4, 2, 2.21), ("l40s", 4, 1, 0.27)])
def test_vllm_019_counts_the_non_torch_memory_its_logs_print_per_layout(card, tp, pp, gib):
    """vLLM 0.19's "non-torch forward increase memory" (the largest its H100 logs print per layout): one rank alone,
    pipeline-only ranks, tensor parallelism on an NVLink board; a PCIe card under TP takes the single-rank figure.
    The 0.11 mirror keeps its 150 MiB everywhere."""
    from fitplan.engines.vllm import ACCOUNTING

    gpu = hardware_from_gpu_flag(card, 0).gpus[0]
    assert ACCOUNTING["0.19.0"].non_torch(gpu, tp, pp) == int(gib * 2**30)
    assert ACCOUNTING["0.11.0"].non_torch(gpu, tp, pp) == 150 << 20


def test_a_plan_for_another_release_says_which_mirrored_one_it_follows():
    inv, cfg = _shipped("meta-llama/Llama-3.1-8B-Instruct")
    hw = hardware_from_gpu_flag("2xh100", 0)
    at = {runs: plan_engine(inv, cfg, hw, engine="vllm", knobs=Knobs(tensor_parallel_size=2), max_model_len=8192,
                            concurrency=1, model_id="m", runs=runs).plan
          for runs in (None, "0.19.0", "0.19", "v0.19.0", "0.21.0", "0.17")}
    assert at[None].version == at["0.19.0"].version == at["0.21.0"].version == "0.19.0"
    assert at["0.17"].version == "0.11.0"
    # the mirrored release itself, however written, needs no note
    assert not any("you run" in n for r in (None, "0.19.0", "0.19", "v0.19.0") for n in at[r].notes)
    assert at["0.21.0"].notes[0] == ("you run vllm 0.21.0: this plan follows 0.19.0, the newest release fitplan "
                                     "mirrors at or below it")
    # the 0.19 accounting keeps 2.21 GiB of non-torch memory per rank out of the KV budget under TP on an H100 (0.11:
    # 0.15 GiB) and its own profile peak; the budgets differ by exactly those terms
    old, new = at["0.17"].per_rank[0], at[None].per_rank[0]
    assert (old.non_torch_bytes, new.non_torch_bytes) == (150 << 20, int(2.21 * 2**30))
    assert old.available_kv_cache_bytes - new.available_kv_cache_bytes == \
        new.non_torch_bytes - old.non_torch_bytes + new.activation_bytes - old.activation_bytes
