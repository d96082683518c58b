"""A sample of benchmarks/walk_models.py in CI: model types of both mappings, from transformers' own
default configs saved as config.json, are planned or refused with a one-line reason, never a bug.
The full walk (every type of both mappings) is a benchmark; its counts are in docs/models.md."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from fitplan.model import hf

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


def _load_walk():
    spec = importlib.util.spec_from_file_location("fitplan_walk", ROOT / "benchmarks" / "walk_models.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["fitplan_walk"] = module
    spec.loader.exec_module(module)
    return module


walk = _load_walk()


def _before_5_17() -> bool:
    return hf.version_tuple() < (5, 17)

#: (mapping, model type, outcome, what the record must show)
SAMPLE = [
    ("causal-lm", "llama", "planned", lambda r: r["kv_elements_per_token"] > 0),
    ("causal-lm", "mamba", "planned", lambda r: r["state_bytes_per_sequence"] > 0 and not r["kv_elements_per_token"]),
    ("causal-lm", "jamba", "planned", lambda r: r["state_bytes_per_sequence"] > 0 and r["kv_elements_per_token"]),
    ("causal-lm", "mamba2", "planned", lambda r: r["state_bytes_per_sequence"] > 0),  # config.json holds Infinity
    ("causal-lm", "qwen3_5", "planned", lambda r: r["architecture"] == "Qwen3_5ForCausalLM"),
    ("causal-lm", "openai-gpt", "refused", lambda r: "keeps none across steps" in r["reason"]),
    ("image-text-to-text", "llava", "planned", lambda r: r["image_tokens_per_image"] == 576),
    ("image-text-to-text", "qwen3_5", "planned",
     lambda r: r["auto_class"] == "image-text-to-text" and r["state_bytes_per_sequence"] > 0),
    ("image-text-to-text", "mllama", "refused", lambda r: "cross-attention" in r["reason"]),
]


@pytest.mark.parametrize("mapping, model_type, outcome, shows", SAMPLE, ids=[f"{m}:{t}" for m, t, *_ in SAMPLE])
def test_sampled_model_types_are_planned_or_refused_in_one_line(mapping, model_type, outcome, shows):
    from transformers.models.auto import modeling_auto

    if model_type not in getattr(modeling_auto, walk.MAPPINGS[mapping][0]):
        pytest.skip(f"this transformers has no {model_type} in {mapping}")
    rec = walk.walk_one(model_type, mapping)
    if rec["outcome"] == "refused" and outcome == "planned" and _before_5_17():
        # hybrid models keep their state in per-model cache classes there: refused, naming the version
        assert f"transformers {hf.version()}" in rec["reason"], rec
        return
    assert rec["outcome"] == outcome, rec
    assert shows(rec), rec
    assert "\n" not in rec.get("reason", "")
