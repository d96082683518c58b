"""Fuzzed bad input: a plan (exit 0/1) or exactly one `fitplan: error:` line (exit 2), never a traceback.

The generators live in tests/fuzzing.py; benchmarks/fuzz.py runs the same properties over 10,000
inputs and reports their times (docs/robustness.md). Here each CLI/API entry point gets a share of
FITPLAN_FUZZ_EXAMPLES examples (default 150 in all), with peak RSS growth checked after each. No
example is timed: a hang is caught by the harness's hard limit (60 s; a real hang never ends),
while speed, which depends on the machine and its load, is the benchmark's business.
The fixed cases below pin the bugs the fuzzer found, with the messages users now get.
"""
from __future__ import annotations

import gc
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

import fitplan
from fitplan.errors import FitplanError, InputError, UnsupportedModelError

ROOT = Path(__file__).resolve().parent.parent


import fuzzing as fuzz  # the harness benchmarks/fuzz.py runs at scale
Case = fuzz.Case

EXAMPLES = int(os.environ.get("FITPLAN_FUZZ_EXAMPLES", "150"))
RSS_LIMIT = 1 << 30  # growth of peak RSS over the whole module


def _settings(target: str):
    """This target's share of EXAMPLES; no per-example deadline (see the module docstring)."""
    share = fuzz.TARGETS[target][0]
    return settings(max_examples=max(1, round(EXAMPLES * share)), deadline=None,
                    derandomize=True, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                             HealthCheck.large_base_example])


@pytest.fixture(scope="module")
def box(tmp_path_factory):
    """A sandbox with an empty inventory cache and no network; torch/transformers imported up front
    so that no example pays for the imports inside its deadline."""
    root = tmp_path_factory.mktemp("fuzz")
    with pytest.MonkeyPatch.context() as mp:
        for key in [k for k in os.environ if k.startswith("FITPLAN_")]:
            mp.delenv(key)
        mp.setenv("FITPLAN_CACHE", str(root / "fitplan-cache"))
        mp.setenv("HF_HUB_OFFLINE", "1")
        sandbox = fuzz.Sandbox(root / "box")
        warm = fuzz.run_case(Case("hardware", (), ("check", "{M}", "--gpu=rtx4090")), sandbox, deadline=math.inf)
        assert warm.status == "ok", warm
        fuzz.settle()  # freezes the warm-up state out of the cyclic GC, as in a fresh process
        yield sandbox, fuzz.rss_bytes()
        gc.unfreeze()


def holds(case, box) -> fuzz.Outcome:
    sandbox, rss0 = box
    out = fuzz.run_case(case, sandbox, deadline=math.inf, hard_limit=60)  # a hang, not slowness, fails
    assert out.ok, f"[{out.status}] {out.message}\n{out.detail}"
    grew = fuzz.rss_bytes() - rss0
    assert grew < RSS_LIMIT, f"peak RSS grew {grew / 2**20:.0f} MiB during the fuzz tests"
    return out


# -- the properties ----------------------------------------------------------------------------------

@_settings("config")
@given(case=fuzz.config_cases())
def test_check_folder_with_fuzzed_config_json(box, case):
    holds(case, box)


@_settings("api")
@given(case=fuzz.api_cases())
def test_python_api_raises_only_fitplan_errors(box, case):
    holds(case, box)


@_settings("profile-validate")
@given(case=fuzz.profile_cases(False))
def test_profile_validate_with_fuzzed_yaml(box, case):
    holds(case, box)


@_settings("profile-check")
@given(case=fuzz.profile_cases(True))
def test_check_profile_with_fuzzed_yaml_and_environment(box, case):
    holds(case, box)


@_settings("hardware")
@given(case=fuzz.hardware_cases())
def test_check_hardware_file_with_fuzzed_yaml(box, case):
    holds(case, box)


# -- what the fuzzer found, pinned ----------------------------------------------------------------------

def config_case(cfg) -> Case:
    data = cfg if isinstance(cfg, bytes) else json.dumps(cfg).encode()
    return Case("config", (("model/config.json", data),), ("check", "{D}/model", "--gpu=rtx4090", "--no-cache"))


def real(name: str, **changes) -> dict:
    return {**fuzz.REAL_CONFIGS[name], **changes}


@pytest.mark.parametrize("cfg, expected", [
    # 2048 layers passed the old limit and took 25-40 s to build on the meta device
    (real("google--gemma-2-2b.json", num_hidden_layers=593), "'num_hidden_layers' = 593 is out of range (1..256)"),
    # a model whose forward neither takes nor returns a cache (state-space models are planned now:
    # tests/test_arch_state.py)
    ({"model_type": "openai-gpt"}, "keeps none across steps"),
    # a model_type with control characters used to print as several lines
    ({"model_type": "a\x0bb\x1cc", "auto_map": {}}, r"model_type 'a\x0bb\x1cc' is unknown to transformers"),
    # an extra field a dense model ignores, read as its expert count: int([[]]) escaped as a TypeError
    (real("mistralai--Mistral-7B-v0.1.json", num_experts_per_tok=[[]]),
     "config.json: 'num_experts_per_tok' must be a positive whole number (or a list of them, one per layer), got [[]]"),
])
def test_configs_the_fuzzer_broke_now_get_one_line(box, cfg, expected):
    out = holds(config_case(cfg), box)
    assert out.status == "rejected" and expected in out.message, out


def test_transformers_validation_reason_is_kept(box):
    """transformers' reason sits on the second line of its validation errors; it used to be cut off.
    Configs are validated from 5.4 (`validate_architecture`); 5.0-5.3 build this one (head_dim
    2048 // 48 = 42), and so does `from_pretrained` there, so fitplan plans it."""
    from fitplan.model import hf

    out = holds(config_case(real("meta-llama--Llama-3.2-1B.json", num_attention_heads=48, head_dim=None)), box)
    if hf.version_tuple() >= (5, 4):
        assert out.status == "rejected" and "is not a multiple of the number of attention heads" in out.message, out
    else:
        assert out.status == "ok", out


@pytest.mark.parametrize("model, expected", [
    ("a\nb", r"'a\nb' is neither an existing folder nor a valid Hub repo id"),  # was two lines
    ("./gone\nnow", r"no such folder: ./gone\nnow"),
    ("~nosuchuser/model", "no such folder: ~nosuchuser/model ('~' names no user here"),  # was a RuntimeError
])
def test_model_argument_the_fuzzer_broke_now_gets_one_line(box, model, expected):
    out = holds(Case("config", (), ("check", "--gpu=rtx4090", "--", model)), box)
    assert out.status == "rejected" and expected in out.message, out


def test_per_layer_intermediate_sizes_plan_by_the_widest_layer(box):
    # gemma3n lists intermediate_size per layer; int(list) used to escape as a TypeError
    assert holds(config_case({"model_type": "gemma3n_text"}), box).status == "ok"


@pytest.mark.parametrize("value, shown", [("!!bool maybe", "as a boolean"), ("!!timestamp nope", "as a date"),
                                          ("!!int 'x'", "as an integer")])
def test_yaml_values_their_tag_cannot_read_are_one_line(box, value, shown):
    # PyYAML raises KeyError / AttributeError for these; they escaped as tracebacks
    case = Case("profile-validate", (("profile.yaml", f"model: {value}\n".encode()),),
                ("profile", "validate", "{D}/profile.yaml"))
    out = holds(case, box)
    assert out.status == "rejected" and "cannot read" in out.message and shown in out.message, out


@pytest.mark.parametrize("kwargs, error", [
    ({"precision": 5}, "precision must be a name such as 'bf16', got 5"),
    ({"min_precision": False}, "precision must be a name such as 'bf16', got False"),
    ({"gpu": True}, "--gpu must be text naming GPUs"),
    ({"hardware": 12}, "hardware must be the path of a YAML file"),
])
def test_python_api_wrong_types_are_input_errors(box, kwargs, error):
    sandbox, _ = box
    folder = sandbox.model  # a valid model: the argument alone is at fault
    with pytest.raises(InputError) as info:
        fitplan.plan(str(folder), **kwargs)
    assert error in str(info.value)


def test_unsupported_architecture_is_a_fitplan_error_from_the_api(box, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "t5"}))
    with pytest.raises(UnsupportedModelError, match="'t5' has no causal-LM class"):
        fitplan.plan(str(tmp_path), gpu="rtx4090", use_cache=False)
    assert issubclass(UnsupportedModelError, FitplanError)


def test_real_process_stderr_is_one_line(tmp_path):
    """CliRunner captures only what goes through sys.stderr; a real process also shows what
    transformers' loggers and C extensions write. One input fails inside transformers, one in YAML."""
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text(json.dumps(real("meta-llama--Llama-3.2-1B.json",
                                                                       hidden_act="nope")))
    (tmp_path / "bomb.yaml").write_bytes(b"a: &a [x, x, x, x, x, x, x, x, x, x]\n" + b"".join(
        b"%s: &%s [" % (chr(98 + i).encode(), chr(98 + i).encode()) + b", ".join([b"*" + chr(97 + i).encode()] * 10)
        + b"]\n" for i in range(8)) + b"model: *i\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FITPLAN_")}
    env.update(FITPLAN_CACHE=str(tmp_path / "cache"), HF_HUB_OFFLINE="1",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))  # a CI leg's versions
    for argv in (["check", str(tmp_path / "model"), "--gpu", "rtx4090"],
                 ["profile", "validate", str(tmp_path / "bomb.yaml")]):
        r = subprocess.run([sys.executable, "-m", "fitplan", *argv], capture_output=True, text=True, env=env,
                           timeout=120)
        assert r.returncode == 2, (argv, r.stderr)
        assert len(r.stderr.splitlines()) == 1 and r.stderr.startswith("fitplan: error: "), r.stderr
