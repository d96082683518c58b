"""docs/accuracy.md stays true: its constants are the code's, and its summary is what the current
estimator gives on the stored H100 measurements (benchmarks/results/acc*.jsonl), with no case
predicted below its measured NVML peak."""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from fitplan import calibration as C

ROOT = Path(__file__).resolve().parents[1]
DOC = (ROOT / "docs" / "accuracy.md").read_text()
GiB, MiB = 1 << 30, 1 << 20


def _doc_value(name: str) -> str:
    m = re.search(rf"^\| `{re.escape(name)}`[^|]*\| ([^|]+) \|", DOC, re.M)
    assert m, f"{name} missing from docs/accuracy.md's constants table"
    return m.group(1).strip()


def _size(text: str) -> int:
    num, unit = text.split()
    return int(float(num) * {"GiB": GiB, "MiB": MiB}[unit])


def test_constants_in_the_document_are_the_code_s():
    assert _size(_doc_value("CUDA_CONTEXT_BYTES")) == C.CUDA_CONTEXT_BYTES
    assert _size(_doc_value("ALLOCATOR_RESERVE_FIXED_BYTES")) == C.ALLOCATOR_RESERVE_FIXED_BYTES
    assert _size(_doc_value("EXPANDABLE_RESERVE_FIXED_BYTES")) == C.EXPANDABLE_RESERVE_FIXED_BYTES
    for name in ("ALLOCATOR_RESERVE_FRACTION", "EXPANDABLE_RESERVE_FRACTION", "ACT_HIDDEN_COPIES", "ACT_MLP_COPIES",
                 "ACT_MOE_TOKEN_HIDDEN_COPIES", "EAGER_SCORE_BYTES", "MATH_SDPA_SCORE_BYTES",
                 "INT8_OUTLIER_WEIGHT_COPIES", "INT8_MATMUL_OUT_BYTES", "LOGITS_COPIES", "CUDA_ALLOCATION_ALIGNMENT"):
        assert float(_doc_value(name)) == getattr(C, name), name
    moe = [float(x) for x in _doc_value("ACT_MOE_HIDDEN_COPIES").split("/")]
    assert moe == [C.ACT_MOE_HIDDEN_COPIES, C.ACT_MOE_MLP_COPIES]
    frag = [float(x) for x in _doc_value("LOAD_FRAGMENTATION").split("/")]
    assert frag == [C.LOAD_FRAGMENTATION[k] for k in ("float", "4bit", "int8", "fused_experts")]


@pytest.mark.slow
def test_document_summary_is_what_the_estimator_gives_today(tmp_path, monkeypatch):
    """Each stored row records the library versions it was measured with and a digest of the model
    they built (`benchmarks/accuracy.py inventory_digest`). Only rows whose model the installed
    transformers builds the same way are re-scored: on another version the estimate describes
    another model (Gemma-2 is SDPA before 5.21 and eager after; Falcon's 4-bit packs its layers
    before 5.5), and comparing it with the measured peak would prove nothing either way. On the
    version the measurements were taken with, every row must be that same model (else the digests
    are stale), all are re-scored and the document's summary must be today's."""
    monkeypatch.setenv("FITPLAN_CACHE", str(tmp_path))
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from accuracy import rescore

    from fitplan.model import hf

    rows = rescore([json.loads(line) for f in sorted((ROOT / "benchmarks" / "results").glob("acc*.jsonl"))
                    for line in f.read_text().splitlines() if line.strip()])
    measured_on = sorted({r["versions"]["transformers"] for r in rows})
    measured_here = [r for r in rows if r["versions"]["transformers"] == hf.version()]
    stale = sorted({r["model"] for r in measured_here if not r["same_model"]})
    assert not stale, (f"fitplan now reads {stale} differently on transformers {hf.version()}, the version they were "
                       "measured with: re-measure, or if the change is meant, update their inventory_digest")
    same = [r for r in rows if r["same_model"]]
    assert len({r["model"] for r in same}) >= 6, "too few measured models are built the same way to check anything"
    terr = [(r["now"].total_bytes - r["measured"]["nvml_peak_bytes"]) / r["measured"]["nvml_peak_bytes"] for r in same]
    werr = [abs(r["now"].weights_bytes - r["measured"]["weights_bytes"]) / r["measured"]["weights_bytes"] for r in same]
    assert min(terr) >= 0, "an estimate fell below a measured NVML peak"
    if hf.version() not in measured_on:
        pytest.skip(f"the summary covers every row as measured on transformers {', '.join(measured_on)}; it is checked "
                    "on that leg (test_the_measurements_are_rescored_on_a_ci_leg)")
    assert len(same) == len(rows), "on the version they were measured with, every row must be rescored"
    summary = (f"{len(rows)} cases, {len({r['model'] for r in rows})} models. Weights: max |error| "
               f"{max(werr) * 100:.2f}%. Total vs NVML peak: min {min(terr) * 100:+.1f}%, max {max(terr) * 100:+.1f}%, "
               f"{sum(t < 0 for t in terr)} below the peak, {sum(t > 0.10 for t in terr)} more than 10% above.")
    assert summary in DOC, f"docs/accuracy.md is stale; regenerate it. Today: {summary}"


def test_the_measurements_are_rescored_on_a_ci_leg():
    """The summary check above runs only where the rows were measured: CI's replay leg installs exactly that
    transformers (`versions.MEASURED`) and runs this file, or the check would skip everywhere."""
    from fitplan.versions import MEASURED, REPLAY_TESTS

    measured_on = {json.loads(line)["versions"]["transformers"]
                   for f in (ROOT / "benchmarks" / "results").glob("acc*.jsonl")
                   for line in f.read_text().splitlines() if line.strip()}
    assert measured_on == {MEASURED["transformers"]}, (measured_on, MEASURED)
    assert f"tests/{Path(__file__).name}" in REPLAY_TESTS
