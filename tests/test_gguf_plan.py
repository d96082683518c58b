"""llama.cpp memory per device, the -ngl choice, the policy, the output and the loader's arguments."""
from __future__ import annotations

import json
import sys
from dataclasses import replace

import pytest
from gguf import GGMLQuantizationType as T

from fitplan import calibration as C
from fitplan.errors import DependencyError, DoesNotFitError, InputError
from fitplan.gguf import GGUFModel, GGUFTensor, RunConfig, placement, plan_gguf, read_gguf
from fitplan.gguf.load import llama_kwargs, load_gguf
from fitplan.gguf.runtime import compute_bytes, kv_bytes_per_layer
from fitplan.hardware.machine import GPU, Hardware
from gguf_files import Dims, llama_tensors, write_llama_gguf

GiB, MiB = 1 << 30, 1 << 20
#: a Llama-3-8B-wide model, 4 layers (the unit tests need widths, not depth)
WIDE = Dims(n_embd=4096, n_head=32, n_head_kv=8, n_ff=14336, n_layer=4, n_vocab=128256, context=8192)


def wide_model(d: Dims = WIDE, t: T = T.Q4_0, file_type: str = "Q4_0") -> GGUFModel:
    """The header `write_llama_gguf` would write for `d`, without writing gigabytes of zeros."""
    tensors = tuple(GGUFTensor(name, shape, int(T.F32 if typ == T.F32 else t))
                    for name, shape, typ in llama_tensors(d))
    hd = d.n_embd // d.n_head
    return GGUFModel(name=f"wide-{file_type}.gguf", origin="local", architecture="llama", file_type=file_type,
                     tensors=tensors, n_layer=d.n_layer, n_embd=d.n_embd, n_head=d.n_head,
                     n_head_kv=(d.n_head_kv,) * d.n_layer, head_dim_k=hd, head_dim_v=hd, n_vocab=d.n_vocab,
                     context_length=d.context, header_bytes=4096, file_bytes=4096 + sum(x.nbytes for x in tensors),
                     n_ff=d.n_ff, path=f"/models/wide-{file_type}.gguf")


@pytest.fixture(scope="module")
def model():
    return wide_model()


def cpu(ram: int) -> Hardware:
    return Hardware((), ram, "file")


def gpu_box(free: int, ram: int = 64 * GiB) -> Hardware:
    return Hardware((GPU(0, "test GPU", free, free, (8, 6)),), ram, "file")


def test_kv_cache_is_llama_cpp_arithmetic(model):
    run = RunConfig(context=5000)  # padded to 5120 cells
    per_layer = 5120 * 2 * (128 * 8) * 2  # cells x (K + V) x kv width x f16
    assert kv_bytes_per_layer(model, run) == (per_layer,) * WIDE.n_layer
    q8 = kv_bytes_per_layer(model, replace(run, kv_type="q8_0"))[0]
    assert q8 == 5120 * 2 * (1024 // 32 * 34)
    assert sum(kv_bytes_per_layer(model, RunConfig(context=4096, n_parallel=4))) == 4 * sum(
        kv_bytes_per_layer(model, RunConfig(context=4096)))


def test_sliding_window_layers_hold_window_plus_ubatch(model):
    swa = replace(model, sliding_window=1024, swa_layers=(True, False) * 2)
    kv = kv_bytes_per_layer(swa, RunConfig(context=32768))
    assert kv[1] == kv[3] == 32768 * 2 * 1024 * 2 and kv[0] == kv[2] == (1024 + 512) * 2 * 1024 * 2
    assert kv_bytes_per_layer(swa, RunConfig(context=32768, swa_full=True))[0] == kv[1]


def test_compute_buffer_matches_llama_cpp_cpu_measurements(model):
    """llama.cpp's CPU compute buffer for this width, measured with benchmarks/gguf_buffers.py:
    266.5 MiB at n_ubatch 512 (docs/gguf.md)."""
    assert compute_bytes(model, RunConfig(context=4096), with_output=True) == int(266.5 * MiB)


def test_cpu_only_plan_puts_everything_in_ram(model):
    c = plan_gguf(model, cpu(32 * GiB), context=8192)
    (row,) = c.rows
    assert row.n_gpu_layers == 0 and row.weights_gpu == row.kv_gpu == row.compute_gpu == 0
    assert row.weights_ram == model.weights_bytes and row.fits and c.recommended is row
    assert row.ram_total == row.weights_ram + row.kv_ram + row.compute_ram + row.output_ram
    assert not plan_gguf(model, cpu(row.ram_total), context=8192, headroom=0.5).fits


def test_unified_memory_is_one_pool(model):
    c = plan_gguf(model, cpu(32 * GiB), context=8192, unified=True)
    row = c.rows[0]
    assert row.full_offload and row.n_gpu_layers == WIDE.n_layer + 1 and c.device == "unified"
    total = row.gpu_total + row.ram_total
    assert plan_gguf(model, cpu(int(total / 0.9) + 1), context=8192, unified=True).fits
    assert not plan_gguf(model, cpu(int(total / 0.9) - MiB), context=8192, unified=True).fits


def test_small_gpu_takes_the_largest_n_gpu_layers_that_fits(model):
    run = RunConfig(context=8192)
    full = placement(model, run, WIDE.n_layer + 1)
    # room for everything but the output layer and one block
    budget = placement(model, run, WIDE.n_layer - 1).gpu_total + C.CUDA_CONTEXT_BYTES
    c = plan_gguf(model, gpu_box(budget), context=8192, headroom=0)
    row = c.rows[0]
    assert row.n_gpu_layers == WIDE.n_layer - 1 and not row.full_offload and row.fits
    assert placement(model, run, WIDE.n_layer).gpu_total + C.CUDA_CONTEXT_BYTES > budget
    assert row.weights_gpu + row.weights_ram == model.weights_bytes
    big = plan_gguf(model, gpu_box(full.gpu_total + C.CUDA_CONTEXT_BYTES), context=8192, headroom=0)
    assert big.rows[0].full_offload and big.rows[0].ram_total < row.ram_total
    tiny = plan_gguf(model, gpu_box(C.CUDA_CONTEXT_BYTES), context=8192, headroom=0)
    assert not tiny.fits and "even with no layer on the GPU" in tiny.rows[0].reason


def test_ram_share_can_be_what_does_not_fit(model):
    run = RunConfig(context=8192)
    budget = placement(model, run, 2).gpu_total + C.CUDA_CONTEXT_BYTES
    c = plan_gguf(model, gpu_box(budget, ram=1 * GiB), context=8192, headroom=0)
    assert not c.fits and "RAM share" in c.rows[0].reason


def test_recommendation_prefers_quality_with_full_offload():
    big, small = wide_model(t=T.Q8_0, file_type="Q8_0"), wide_model()
    run = RunConfig(context=4096)
    only_small = placement(small, run, WIDE.n_layer + 1).gpu_total + C.CUDA_CONTEXT_BYTES
    c = plan_gguf([small, big], gpu_box(only_small), context=4096, headroom=0)
    assert [r.type for r in c.rows] == ["Q8_0", "Q4_0"]  # best quality first
    assert c.recommended.type == "Q4_0" and c.recommended.full_offload  # Q8_0 only fits partly
    roomy = plan_gguf([small, big], gpu_box(64 * GiB), context=4096)
    assert roomy.recommended.type == "Q8_0"


def test_output_json_lines_and_commands(model):
    c = plan_gguf(model, gpu_box(40 * GiB), context=8192, n_parallel=2, kv_type="q8_0")
    d = json.loads(json.dumps(c.to_dict()))
    assert d["recommended"] == "Q4_0" and d["rows"][0]["fits"] and d["kv_type"] == "q8_0"
    assert c.server_command() == (f"llama-server -m {model.path} -c 16384 -ngl {WIDE.n_layer + 1} -fa on "
                                  "-ctk q8_0 -ctv q8_0 -np 2")
    assert "-c 8192 " in c.cli_command()
    assert c.llama_cpp_kwargs() == {"model_path": model.path, "n_ctx": 8192, "n_gpu_layers": WIDE.n_layer + 1,
                                    "n_batch": 512, "n_ubatch": 512, "flash_attn": True, "type_k": 8, "type_v": 8}
    lines = c.render_lines()
    assert all(len(line) < 100 for line in lines)
    assert any(line.startswith("recommended: Q4_0") for line in lines)
    assert any("flash attention" in line for line in lines)


def test_what_if_rows_from_an_inventory():
    from fitplan.model.build import build_inventory
    from tiny_models import config_dict

    inv = build_inventory(config_dict("llama-gqa"), model_id="tiny/llama")
    c = plan_gguf(inv, cpu(8 * GiB), context=256)
    assert [r.type for r in c.rows] == ["Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "IQ4_XS", "Q4_0", "Q3_K_M", "Q2_K"]
    assert all(r.origin == "estimate" and r.fits for r in c.rows) and c.recommended.type == "Q8_0"
    assert c.rows[0].file == "llama-Q8_0.gguf"


@pytest.mark.parametrize("kwargs, message", [
    ({"context": 0}, "context must be a positive"),
    ({"n_parallel": -1}, "n_parallel must be a positive"),
    ({"kv_type": "q3_k"}, "unknown KV cache type"),
    ({"headroom": "lots"}, "headroom"),
])
def test_bad_parameters_are_input_errors(model, kwargs, message):
    with pytest.raises(InputError, match=message):
        plan_gguf(model, cpu(8 * GiB), **kwargs)


def test_loader_arguments_and_missing_llama_cpp(model, monkeypatch, tmp_path):
    real = read_gguf(write_llama_gguf(tmp_path / "real.gguf"))
    c = plan_gguf(real, cpu(32 * GiB), context=2048)
    kw = llama_kwargs(c)
    assert kw["model_path"] == real.path and kw["n_ctx"] == 2048 and kw["n_gpu_layers"] == 0
    with pytest.raises(InputError, match="no GGUF file at"):
        llama_kwargs(c, model_path=tmp_path / "absent.gguf")
    real = write_llama_gguf(tmp_path / "tiny.gguf")
    assert llama_kwargs(c, model_path=real)["model_path"] == real
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # as if not installed
    with pytest.raises(DependencyError, match="pip install llama-cpp-python") as err:
        load_gguf(c)
    assert isinstance(err.value, ImportError) and err.value.package == "llama-cpp-python"
    with pytest.raises(DoesNotFitError):
        llama_kwargs(plan_gguf(model, cpu(1 * GiB), context=2048))
    with pytest.raises(InputError, match="no GGUF file at"):
        llama_kwargs(plan_gguf(model, cpu(64 * GiB), context=2048))  # /models/... does not exist here


def test_real_load_and_generate(tmp_path):
    """Runs where llama-cpp-python is installed (not in CI: building it takes ~9 minutes there)."""
    pytest.importorskip("llama_cpp")
    d = Dims(n_embd=256, n_head=4, n_head_kv=2, n_ff=512, n_layer=2, n_vocab=512, context=2048)
    m = read_gguf(write_llama_gguf(tmp_path / "tiny-F16.gguf", d, {"": T.F16}, file_type=1))
    c = plan_gguf(m, cpu(8 * GiB), context=512)
    llm = load_gguf(c, verbose=False)
    try:
        assert llm.n_ctx() == 512
        tokens = []
        for t in llm.generate([1, 300, 301], temp=0.0):
            tokens.append(t)
            if len(tokens) == 4:
                break
        assert len(tokens) == 4 and all(0 <= t < d.n_vocab for t in tokens)
    finally:
        llm.close()
