"""The decode speed model against the H100 measurements: its overhead constants are the fit of one
set (benchmarks/results/speed*.jsonl), it lands within ±25% of the other (FINDINGS' Mistral-7B
table), and docs/accuracy.md's "Speed" table is what the code gives today. `prefer: speed` ranks
by the estimate."""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from fitplan.hardware.machine import GPU, Hardware
from fitplan import calibration as C


ROOT = Path(__file__).resolve().parents[1]
DOC = (ROOT / "docs" / "accuracy.md").read_text()
TOLERANCE = 0.25
#: The shapes measured, as the catalogue names them.
SHAPES = {"Llama-3.1-8B": "meta-llama/Llama-3.1-8B", "Mistral-7B": "mistralai/Mistral-7B-v0.1"}
#: Prompt tokens of each set: benchmarks/speed.py's 128; FINDINGS' table was measured after 512.
PROMPT = {"fitted": 128, "checked": 512}


@pytest.fixture(autouse=True)
def cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("FITPLAN_CACHE", str(tmp_path_factory.getbasetemp() / "fitplan-cache"))


def measured_fitted() -> dict:
    """(precision, batch) -> the jsonl row; a later file's row replaces an earlier one's."""
    rows = {}
    for f in sorted((ROOT / "benchmarks" / "results").glob("speed*.jsonl")):
        for line in f.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                rows[(r["precision"], r["batch"])] = r
    return rows


def estimate(shape: str, precision: str, batch: int, context: int):
    """fitplan's decode estimate on the measuring card: the workload's mean cache length as context. These
    rows were measured with plain generate(), what a plan with fast=False loads."""
    from fitplan.pipeline import plan_model

    p = plan_model(SHAPES[shape], gpu="h100-sxm", precision=precision, context=context, batch=batch, offline=True,
                   fast=False)
    return p.decision.speed


def doc_rows() -> list[dict]:
    pat = re.compile(r"^\| (\S+) \| (\S+) \| (\d+) \| (\d+) \| ([\d.]+) \| ([\d.]+) \| ([+-][\d.]+)% \| (fitted|checked) \|$",
                     re.M)
    return [dict(shape=m[0], precision=m[1], batch=int(m[2]), new=int(m[3]), measured=float(m[4]),
                 estimated=float(m[5]), error=float(m[6]), set=m[7]) for m in pat.findall(DOC)]


def test_the_document_has_both_sets_at_batch_1_and_8():
    rows = doc_rows()
    fitted = {(r["precision"], r["batch"]) for r in rows if r["set"] == "fitted"}
    checked = {(r["precision"], r["batch"]) for r in rows if r["set"] == "checked"}
    assert fitted == set(measured_fitted())
    assert checked == {(p, b) for p in ("bf16", "nf4", "nf4-dq", "int8") for b in (1, 8)}
    assert "python benchmarks/speed.py" in DOC[DOC.index("## Speed"):]


@pytest.mark.slow
def test_each_row_is_what_the_code_gives_and_within_tolerance():
    jsonl = measured_fitted()
    for r in doc_rows():
        if r["set"] == "fitted":
            m = jsonl[(r["precision"], r["batch"])]
            assert r["measured"] == round(m["decode_tokens_per_s"], 1), r
            assert r["new"] == m.get("new_tokens", 128), r
        s = estimate(r["shape"], r["precision"], r["batch"], PROMPT[r["set"]] + r["new"] // 2)
        assert r["estimated"] == round(s.tokens_per_s, 1), (r, s.tokens_per_s)
        err = s.tokens_per_s / r["measured"] - 1
        assert r["error"] == round(100 * err, 1), r
        assert abs(err) <= TOLERANCE, r


@pytest.mark.slow
def test_the_overhead_constants_are_the_fit_of_the_fitted_set():
    """Per precision, the per-layer overhead x that balances the errors at batch 1 and 8 on a step's
    time: (L x + m1)(L x + m8) = t1 t8, with m the memory term and t the measured step time."""
    rows = measured_fitted()
    for precision in sorted({p for p, _ in rows}):
        t, m, layers = [], [], 0
        for batch in (1, 8):
            r = rows[(precision, batch)]
            s = estimate("Llama-3.1-8B", precision, batch, PROMPT["fitted"] + r.get("new_tokens", 128) // 2)
            t.append(batch / r["decode_tokens_per_s"])
            m.append(s.memory_s)
            layers = round(s.overhead_s / C.DECODE_OVERHEAD_S_PER_LAYER[_kind(precision)])
        b = m[0] + m[1]
        x = (-b + math.sqrt(b * b - 4 * (m[0] * m[1] - t[0] * t[1]))) / 2
        assert C.DECODE_OVERHEAD_S_PER_LAYER[_kind(precision)] == pytest.approx(x / layers, abs=0.5e-5), precision


def _kind(precision: str) -> str:
    """The overhead key of a bitsandbytes/float precision name (what the measurements name)."""
    from fitplan.vocab.precision import get

    return "float" if not get(precision).quantized else precision


def test_the_document_states_the_code_s_constants():
    section = DOC[DOC.index("## Speed"):]
    assert f"`PCIE_BYTES_PER_S` | {C.PCIE_BYTES_PER_S / 1e9:g} GB/s" in section
    for kind, seconds in C.DECODE_OVERHEAD_S_PER_LAYER.items():
        assert f"| {kind} | {seconds * 1e3:.2f} |" in section, kind


# -- the model's shape and its use -----------------------------------------------------------------

def _hw(name="L4", gib=24, bandwidth=300.0, cc=(8, 9)):
    G = 1 << 30
    return Hardware((GPU(0, name, gib * G, gib * G, cc, bandwidth_gbs=bandwidth),), 64 * G, "file")


def test_prefer_speed_ranks_by_the_estimate():
    """On a card with little bandwidth the bytes read decide: 4-bit decodes faster than bf16 there,
    though the measured order on an H100 puts 16-bit first."""
    from fitplan.pipeline import plan_model

    p = plan_model("meta-llama/Llama-3.1-8B", hardware=_hw(), prefer="speed", offline=True)
    fastest = max((d for d in p.choice.decisions if d.candidate), key=lambda d: d.speed.tokens_per_s)
    assert p.precision == fastest.precision == "nf4"
    bf16 = next(d for d in p.choice.decisions if d.precision == "bf16")
    assert bf16.fits and "decodes faster" in bf16.rejected_because
    assert plan_model("meta-llama/Llama-3.1-8B", hardware=_hw(), offline=True).precision == "bf16"
    h100 = plan_model("meta-llama/Llama-3.1-8B", hardware=_hw("H100", 80, 3350.0, (9, 0)), prefer="speed",
                      offline=True)
    assert h100.precision == "bf16"  # overhead-bound there: bf16's loop is the cheapest


def test_without_a_bandwidth_there_is_no_estimate_and_speed_keeps_the_measured_order():
    from fitplan.pipeline import plan_model

    p = plan_model("meta-llama/Llama-3.1-8B", hardware=_hw(bandwidth=None), prefer="speed", offline=True)
    assert all(d.speed is None or d.speed.tokens_per_s is None for d in p.choice.decisions)
    assert p.precision == "bf16"


def test_what_bounds_the_speed_depends_on_the_card():
    """An H100 decodes an 8B model in bf16 at the loop's pace; an L4 (300 GB/s) at its bandwidth's,
    and there every token of KV cache read each step costs time."""
    from fitplan.pipeline import plan_model

    def speed(gpu, **kw):
        return plan_model("meta-llama/Llama-3.1-8B", gpu=gpu, precision="bf16", offline=True, **kw).decision

    h100, l4 = speed("h100-sxm").speed, speed("l4").speed
    assert h100.bound == "generation loop overhead" and l4.bound == "GPU memory bandwidth"
    assert l4.tokens_per_s < h100.tokens_per_s
    short, long = speed("l4", context=1024), speed("l4", context=4096, batch=2)
    more_kv = long.estimate.kv_cache_bytes - short.estimate.kv_cache_bytes
    assert long.speed.read_bytes - short.speed.read_bytes == more_kv > 0
    assert long.speed.memory_s - short.speed.memory_s == pytest.approx(more_kv / 300e9)


def test_a_setup_never_measured_shows_no_number_in_table_and_json():
    """The overheads were measured on one GPU with SDPA: a split over GPUs, offloaded layers and another attention
    kernel get no tokens/s (and say why), in the plan, the check table and --json; one GPU keeps its estimate."""
    from dataclasses import replace

    from click.testing import CliRunner

    from fitplan.cli.main import main
    from fitplan.pipeline import plan_model
    from fitplan.planning.speed import decode_speed

    model = "meta-llama/Llama-3.1-70B-Instruct"
    split = plan_model(model, gpu="2xa100-80gb", precision="bf16", context=4096, offline=True).decision
    assert len({s.device for s in split.placement}) == 2
    assert split.speed.tokens_per_s is None and split.speed.no_estimate.startswith("split over GPUs")
    res = CliRunner().invoke(main, ["check", model, "--gpu", "2xa100-80gb", "--precision", "bf16", "--context",
                                    "4096", "--json"])
    assert res.exit_code == 0, res.output
    speed = json.loads(res.output)["plan"]["speed"]
    assert speed["decode_tokens_per_s"] is None and speed["no_estimate"].startswith("split over GPUs")
    text = CliRunner().invoke(main, ["check", model, "--gpu", "2xa100-80gb", "--precision", "bf16", "--context",
                                     "4096"]).output
    # precision, weights, kv cache, activ., overhead, total, tok/s, fits
    rows = {line.split()[0]: line.split() for line in text.splitlines() if re.match(r"(bf16|nf4) +\d", line)}
    assert rows["bf16"][6:8] == ["-", "YES"], rows["bf16"]  # split over the two: no number
    assert float(rows["nf4"][6]) > 0, rows["nf4"]  # nf4 fits one A100: the measured setup, estimated
    assert "no decode estimate: split over GPUs" in " ".join(text.split())

    one = plan_model("meta-llama/Llama-3.1-8B", gpu="h100", precision="bf16", offline=True).decision
    assert one.speed.tokens_per_s > 0 and one.speed.no_estimate is None
    assert json.loads(CliRunner().invoke(main, ["check", "meta-llama/Llama-3.1-8B", "--gpu", "h100", "--precision",
                                                "bf16", "--json"]).output)["plan"]["speed"]["no_estimate"] is None
    for attn in ("flash_attention_2", "eager"):
        sz = replace(one.sizes, generation=replace(one.sizes.generation, attn_implementation=attn))
        other = decode_speed(sz, one.placement, (GPU(0, "H100", 80 << 30, 80 << 30, (9, 0), bandwidth_gbs=3350.0),),
                             1)
        assert other.tokens_per_s is None and other.no_estimate.startswith(f"{attn} attention")
    moe = plan_model("allenai/OLMoE-1B-7B-0924", gpu="h100", precision="bf16", offline=True).decision.speed
    assert moe.tokens_per_s is None and moe.no_estimate.startswith("routed experts")
    no_bw = plan_model("meta-llama/Llama-3.1-8B", hardware=_hw(bandwidth=None), precision="bf16", offline=True)
    assert no_bw.decision.speed.tokens_per_s is None and "no memory bandwidth" in no_bw.decision.speed.no_estimate
