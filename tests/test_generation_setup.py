"""How a plan generates (issue 20): the setup chosen per transformers version, precision and placement,
its memory (a real `StaticCache` holds exactly the plan's KV bytes), the speed column of what loads,
and the planned-shape guard of a loaded model."""
from __future__ import annotations

from dataclasses import replace

import pytest

import fitplan
from fitplan.errors import PlannedShapeError
from fitplan import calibration as C
from fitplan.planning import generation as G
from fitplan.vocab import precision as P
from fitplan.planning.estimate import Workload, sizes
from fitplan.planning.speed import decode_speed
from fitplan.versions import installed, parse as parse_version
from tests.tiny_models import save_tiny

H200 = "h200"
TF = installed("transformers")
STATIC_HERE = parse_version(TF) >= G.STATIC_MIN_TRANSFORMERS

#: Sliding-window forms: every layer sliding (Mistral), and sliding mixed with full attention (Gemma 3).
SLIDING = {
    "mistral-sliding": ("mistral", dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, vocab_size=512,
                                        sliding_window=16)),
    "gemma3-hybrid": ("gemma3_text", dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                                          num_attention_heads=2, num_key_value_heads=1, head_dim=64,
                                          vocab_size=512, sliding_window=16,
                                          layer_types=["sliding_attention", "full_attention"])),
}


def _save(family: str, path):
    import torch
    from transformers import CONFIG_MAPPING, AutoModelForCausalLM

    if family not in SLIDING:
        return save_tiny(family, path)
    model_type, kwargs = SLIDING[family]
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(CONFIG_MAPPING[model_type](**kwargs), dtype=torch.bfloat16)
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return str(_save("llama-gqa", tmp_path_factory.mktemp("llama")))


def _plan(path, **kw):
    return fitplan.plan(path, gpu=H200, context=kw.pop("context", 64), batch=kw.pop("batch", 2), **kw)


def test_bf16_on_one_gpu_gets_a_static_cache_and_the_compiled_decode_where_transformers_sizes_it(llama):
    plan = _plan(llama, precision="bf16")
    gen = plan.generation
    data = plan.to_dict()["plan"]["generation"]
    assert {"cache_implementation", "compile", "attn_implementation", "why"} <= set(data)
    if STATIC_HERE:
        assert (gen.cache_implementation, gen.max_cache_len, gen.batch) == ("static", 64, 2)
        assert gen.compile == G.AUTO_COMPILE and gen.attn_implementation == "sdpa"
        assert data["cache_implementation"] == "static" and data["compile"]["mode"] == "reduce-overhead"
    else:  # transformers 5.0: GenerationConfig has no max_cache_len, the cache would follow each call
        assert gen.cache_implementation == "dynamic" and gen.compile is None
        assert "max_cache_len" in gen.why


@pytest.mark.parametrize("precision", ["int8", "nf4", "nf4-dq", "fp4"])
def test_bitsandbytes_weights_generate_plainly_because_a_static_cache_is_slower_without_compile(llama, precision):
    gen = _plan(llama, precision=precision).generation
    assert gen.cache_implementation == "dynamic" and gen.compile is None
    assert "bitsandbytes" in gen.why and "slower" in gen.why


def test_fast_false_is_plain_transformers_and_its_kv_is_the_dynamic_peak(llama):
    fast, plain = _plan(llama, precision="bf16"), _plan(llama, precision="bf16", fast=False)
    assert plain.generation.cache_implementation == "dynamic" and plain.generation.compile is None
    assert "fast=False" in plain.generation.why
    assert plain.to_dict()["options"]["fast"] is False
    inv = plain.inventory
    dynamic_kv = sum(k.elements_per_token * 2 for k in inv.kv_layers) * 64 * 2
    assert plain.decision.estimate.kv_cache_bytes == dynamic_kv
    if STATIC_HERE:  # a full-attention model: the static cache holds the same context, plus the workspace
        assert fast.decision.estimate.kv_cache_bytes == dynamic_kv
        assert fast.decision.estimate.activation_bytes - plain.decision.estimate.activation_bytes >= \
            C.COMPILE_WORKSPACE_BYTES


def test_the_choice_follows_placement_version_and_model(llama):
    inv = _plan(llama, precision="bf16").inventory
    work, gpus = Workload(64, 2), _plan(llama).hardware.gpus
    new = replace(inv, versions={**inv.versions, "transformers": "5.17.0"}, compile_fullgraph=True)
    assert G.choose(new, P.BF16, work, gpus=gpus).static
    for placement in ("split", "offload", "cpu"):
        assert not G.choose(new, P.BF16, work, gpus=gpus, placement=placement).static, placement
    old = replace(new, versions={**inv.versions, "transformers": "5.0.0"})
    assert not G.choose(old, P.BF16, work, gpus=gpus).static
    assert not G.choose(replace(new, compile_fullgraph=False), P.BF16, work, gpus=gpus).static
    eager = G.choose(replace(new, attn_implementation="eager"), P.BF16, work, gpus=gpus)
    assert not eager.static and eager.attn_implementation == "eager"
    flash = G.choose(replace(new, flash_attn=True), P.BF16, work, gpus=gpus)
    assert flash.attn_implementation == "flash_attention_2" and not flash.static  # never measured compiled


def test_a_setup_never_measured_shows_no_speed(llama, monkeypatch):
    plan = _plan(llama, precision="bf16")
    assert plan.decision.speed is None or plan.decision.speed.tokens_per_s > 0
    inv = plan.inventory
    gen = G.Generation("static", dict(G.AUTO_COMPILE), "sdpa", "test", 64, 2)
    sz = sizes(inv, P.NF4, Workload(64, 2), "bfloat16", "cuda", generation=gen)
    assert "nf4" not in C.COMPILED_DECODE_OVERHEAD_S_PER_LAYER
    assert decode_speed(sz, plan.decision.placement, plan.hardware.gpus, 2) is None
    monkeypatch.setattr(C, "COMPILED_DECODE_OVERHEAD_S_PER_LAYER", {})
    assert decode_speed(sizes(inv, P.BF16, Workload(64, 2), "bfloat16", "cuda", generation=gen), plan.decision.placement,
                        plan.hardware.gpus, 2) is None


def _static_cache_bytes(path, gen, *, prompt, new, batch):
    """Load the checkpoint with transformers, apply `gen` as fitplan.load() does, generate, and sum the
    bytes of the keys and values the StaticCache it used allocated."""
    import torch
    from transformers import AutoModelForCausalLM

    from fitplan.runtime.generation import apply

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16)
    apply(model, gen, context=gen.max_cache_len, batch=gen.batch)
    ids = torch.randint(5, 500, (batch, prompt))
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, min_new_tokens=new,
                             do_sample=False, pad_token_id=0, return_dict_in_generate=True)
    cache = getattr(out, "cache", None) or out.past_key_values
    assert type(cache).__name__ == "StaticCache"
    return model, sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values))


@pytest.mark.skipif(not STATIC_HERE, reason=f"transformers {TF} gets no static cache from fitplan (see the test above)")
@pytest.mark.parametrize("family", ["llama-gqa", "mistral-sliding", "gemma3-hybrid"])
def test_a_real_static_cache_holds_exactly_the_planned_kv_bytes(tmp_path, family):
    path = str(_save(family, tmp_path / family))
    plan = _plan(path, precision="bf16", context=64, batch=2)
    gen = plan.generation
    assert gen.static, gen.why
    model, held = _static_cache_bytes(path, gen, prompt=10, new=5, batch=2)  # a short call: the cache is the plan's
    assert held == plan.decision.estimate.kv_cache_bytes
    if family != "llama-gqa":  # sliding layers keep min(context, window) positions, less than a dynamic cache's peak
        plain = _plan(path, precision="bf16", context=64, batch=2, fast=False)
        assert held < plain.decision.estimate.kv_cache_bytes


@pytest.mark.skipif(not STATIC_HERE, reason=f"transformers {TF} gets no static cache from fitplan")
def test_generating_past_the_planned_context_or_batch_is_one_clear_error(llama):
    import torch

    gen = _plan(llama, precision="bf16", context=64, batch=2).generation
    model, _ = _static_cache_bytes(llama, gen, prompt=40, new=24, batch=2)  # exactly the planned context: fine
    ids = torch.randint(5, 500, (2, 40))
    with pytest.raises(PlannedShapeError) as err:
        model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=25)
    assert err.value.tokens == 65 and err.value.context == 64
    assert "context=65" in str(err.value) and "fast=False" in str(err.value)
    with pytest.raises(PlannedShapeError, match="runs to 65 tokens"):  # generate's first argument, by its name
        model.generate(inputs=ids, attention_mask=torch.ones_like(ids), max_new_tokens=25)
    with pytest.raises(PlannedShapeError, match="runs to 70 tokens"):  # max_length, positional inputs
        model.generate(ids, attention_mask=torch.ones_like(ids), max_length=70)
    three = torch.randint(5, 500, (3, 8))
    with pytest.raises(PlannedShapeError, match="batch=3"):
        model.generate(input_ids=three, attention_mask=torch.ones_like(three), max_new_tokens=4)


def test_load_on_the_cpu_reports_the_setup_it_applied_and_its_warmup(llama):
    model = fitplan.load(llama, tokenizer=False, context=64, batch=2, precision="bf16", warmup=True)
    rep = model.fitplan
    assert rep.generation is rep.plan.generation and rep.generation.cache_implementation == "dynamic"
    assert "no GPU" in rep.generation.why
    assert rep.warmup_s is not None and rep.warmup_s > 0
    assert "generation: dynamic cache" in str(rep) and "warm-up" in str(rep)
    assert model.generation_config.cache_implementation in (None, "dynamic")


def test_the_fast_option_is_a_flag_a_profile_key_and_in_the_lock(llama, tmp_path):
    from click.testing import CliRunner

    from fitplan.cli.main import main

    res = CliRunner().invoke(main, ["check", llama, "--gpu", H200, "--context", "64", "--no-fast", "--json"])
    assert res.exit_code == 0, res.output
    import json

    data = json.loads(res.output)
    assert data["options"]["fast"] is False and data["plan"]["generation"]["cache_implementation"] == "dynamic"
    from fitplan.profiles.schema import json_schema

    assert "fast" in json_schema()["properties"]["constraints"]["properties"]


@pytest.mark.parametrize("fast", [True, False])
def test_the_lock_records_the_generation_setup_the_profile_asks_for(tmp_path, fast):
    import yaml
    from click.testing import CliRunner

    from fitplan.cli.main import main
    from fitplan.profiles.lock import lock_path_for

    profile = tmp_path / "fitplan.yaml"
    profile.write_text("model: meta-llama/Llama-3.2-1B\nworkload: {context: 2048, batch: 4}\nhardware: {gpus: [h200]}\n"
                       f"constraints: {{precision: bf16, fast: {str(fast).lower()}}}\n")
    res = CliRunner().invoke(main, ["lock", str(profile)])
    assert res.exit_code == 0, res.output
    gen = yaml.safe_load(lock_path_for(profile).read_text())["plan"]["generation"]
    static = fast and STATIC_HERE
    assert gen["cache_implementation"] == ("static" if static else "dynamic")
    assert (gen["max_cache_len"], gen["batch"]) == ((2048, 4) if static else (None, None))
    assert gen["why"]


# -- docs/accuracy.md "Generation setup" is the measured rows and what the code estimates -----------

def _doc_rows():
    import re
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[1] / "docs" / "accuracy.md").read_text()
    section = doc[doc.index("## Generation setup"):doc.index("## Overheads of fitplan itself")]
    pat = re.compile(r"^\| Qwen3-8B \| (\S+) \| (\d) \| ([\d.]+) \| ([\d.]+|not run)[^|]*\|[^|]*\|[^|]*\| (static \+ compiled|plain) "
                     r"\| ([\d.]+) \| ([+-][\d.]+)% \|$", re.M)
    return section, pat.findall(section)


def _measured():
    import json
    from pathlib import Path

    out = {}
    for line in (Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "generation-h200-tf5.17.jsonl").open():
        r = json.loads(line)
        if "decode_tokens_per_s" in r and r["model"] == "Qwen/Qwen3-8B":
            out[(r["precision"], r["batch"], r["setup"])] = r
    return out


@pytest.mark.slow
@pytest.mark.skipif(not STATIC_HERE, reason=f"the rows were measured with transformers 5.17's static setup, which "
                                            f"fitplan does not choose on {TF}")
def test_the_generation_table_is_the_measured_rows_and_today_s_estimates(monkeypatch, tmp_path):
    from fitplan.pipeline import plan_model

    monkeypatch.setenv("FITPLAN_CACHE", str(tmp_path / "cache"))
    section, rows = _doc_rows()
    measured = _measured()
    assert len(rows) == 8
    assert f"| `COMPILED_DECODE_OVERHEAD_S_PER_LAYER` float | {C.COMPILED_DECODE_OVERHEAD_S_PER_LAYER['float'] * 1e3:.2f} ms |" in section
    assert f"| `COMPILE_WORKSPACE_BYTES` | {C.COMPILE_WORKSPACE_BYTES >> 20} MiB |" in section
    for precision, batch, plain_tps, static_tps, setup, estimated, error in rows:
        batch = int(batch)
        plain = measured[(precision, batch, "plain")]
        assert float(plain_tps) == pytest.approx(plain["decode_tokens_per_s"], abs=0.051)
        key = "static" if setup.startswith("static") else "plain"
        assert (static_tps != "not run") == ((precision, batch, "static") in measured)
        m = measured[(precision, batch, key)]
        plan = plan_model("Qwen/Qwen3-8B", gpu=H200, precision=precision, context=m["prompt"] + m["new_tokens"] // 2,
                          batch=batch, offline=True)
        assert plan.generation.cache_implementation == ("static" if key == "static" else "dynamic")
        est = plan.decision.speed.tokens_per_s
        assert float(estimated) == round(est, 1)
        assert float(error) == round(100 * (est / m["decode_tokens_per_s"] - 1), 1)
        if key == "static":  # the chosen setup is never slower than plain, and the fit holds
            assert m["decode_tokens_per_s"] > plain["decode_tokens_per_s"]
            assert abs(est / m["decode_tokens_per_s"] - 1) <= 0.25


#: The second day's table: shape as the doc names it -> the catalogue model.
SHAPES_IN_DOC = {"Qwen3-8B": "Qwen/Qwen3-8B", "Llama-3.2-1B": "meta-llama/Llama-3.2-1B",
                 "Gemma-3-1B (sliding + full)": "google/gemma-3-1b-it"}


@pytest.mark.slow
@pytest.mark.skipif(not STATIC_HERE, reason=f"the rows were measured with the static setup of transformers 5.17 and "
                                            f"5.25, which fitplan does not choose on {TF}")
def test_the_second_day_table_is_the_measured_rows_and_today_s_estimates(monkeypatch, tmp_path):
    """docs/accuracy.md's rows of 2026-12-05 (three shapes, transformers 5.17 and 5.25): each measured figure is the
    stored row's, each estimate today's plan of that shape (the same on both versions), and every compiled row is
    within 25% of its estimate and faster than plain."""
    import json
    import re
    from pathlib import Path

    from fitplan.pipeline import plan_model

    monkeypatch.setenv("FITPLAN_CACHE", str(tmp_path / "cache"))
    results = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
    measured = {}
    for name, tf in (("generation-h200-tf5.17-b.jsonl", "5.17"), ("generation-h200-tf5.25.jsonl", "5.25")):
        for line in (results / name).open():
            r = json.loads(line)
            if "decode_tokens_per_s" in r:
                measured[(r["model"], tf, r["precision"], r["batch"], r["setup"])] = r
    section, _ = _doc_rows()
    pat = re.compile(r"^\| ([^|]+?) \| (5\.\d+) \| (\S+) \| (\d) \| ([\d.]+) \| ([\d.]*)[^|]*\|[^|]*\| "
                     r"(static \+ compiled|plain) \| ([\d.]+) \| ([+-][\d.]+)% \|$", re.M)
    rows = pat.findall(section)
    assert len(rows) == 14
    for shape, tf, precision, batch, plain_tps, static_tps, setup, estimated, error in rows:
        model, batch = SHAPES_IN_DOC[shape], int(batch)
        key = "static" if setup.startswith("static") else "plain"
        plain = measured[(model, tf, precision, batch, "plain")]
        assert float(plain_tps) == pytest.approx(plain["decode_tokens_per_s"], abs=0.051)
        m = measured[(model, tf, precision, batch, key)]
        if key == "static":
            assert float(static_tps) == pytest.approx(m["decode_tokens_per_s"], abs=0.051)
        plan = plan_model(model, gpu=H200, precision=precision, context=m["prompt"] + m["new_tokens"] // 2,
                          batch=batch, offline=True)
        assert plan.generation.cache_implementation == ("static" if key == "static" else "dynamic")
        est = plan.decision.speed.tokens_per_s
        assert float(estimated) == round(est, 1)
        assert float(error) == round(100 * (est / m["decode_tokens_per_s"] - 1), 1)
        if key == "static":
            assert m["decode_tokens_per_s"] > plain["decode_tokens_per_s"]
            assert abs(est / m["decode_tokens_per_s"] - 1) <= 0.25


def test_verify_reports_measured_tokens_per_s_against_the_estimate():
    from fitplan.render import render_verify
    from fitplan.runtime.verify import DeviceCheck, VerifyReport

    rep = VerifyReport("m: bf16", (DeviceCheck("cuda:0", 10, 10, 100, 90),), 2.0, 86.7, 91.0,
                       "static cache 4096 x 1, compiled decode", 24.3)
    text = render_verify(rep)
    assert "86.7 tokens/s measured, estimated 91.0 (static cache 4096 x 1, compiled decode)" in text
    assert "no estimate" in render_verify(VerifyReport("m", (), 1.0, 5.0, None, "plain generate()"))


def test_a_gpu_too_small_for_the_static_workspace_gets_plain_generate_not_offload(llama):
    from fitplan.hardware.machine import GPU, Hardware

    plain = _plan(llama, precision="bf16", fast=False, headroom="0%")
    need = plain.decision.placement[0].total_bytes
    room = need + (C.COMPILE_WORKSPACE_BYTES // 4)  # plain fits; the static setup's workspace does not
    hw = Hardware((GPU(0, "small", room, room, (9, 0), bandwidth_gbs=1000.0),), 64 << 30, "file")
    plan = fitplan.plan(llama, hardware=hw, context=64, batch=2, precision="bf16", headroom="0%", offload=True)
    assert plan.fits and not plan.offloaded
    assert plan.generation.cache_implementation == "dynamic"
    if STATIC_HERE:
        assert "do not fit" in plan.generation.why
