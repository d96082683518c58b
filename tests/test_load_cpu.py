"""fitplan.load() for real on the CPU: tiny random-weight checkpoints, bitsandbytes included."""
from __future__ import annotations

import logging

import pytest

import fitplan
from fitplan.errors import DoesNotFitError, InputError
from tiny_models import forbid_from_pretrained, save_tiny

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return str(save_tiny("llama-gqa", tmp_path_factory.mktemp("llama")))


@pytest.fixture(autouse=True)
def no_gpu(monkeypatch, tmp_path_factory):
    """Plan for this machine as NVML sees it: CI has no GPU, so the plan is for the CPU."""
    import fitplan.hardware.probe as probe

    monkeypatch.setenv("FITPLAN_CACHE", str(tmp_path_factory.getbasetemp() / "fitplan-cache"))
    hw = probe.probe()
    assert not hw.gpus, "these tests assume a machine without a GPU"


def _close(predicted: dict, measured: dict):
    assert set(predicted) == set(measured)
    for dev, p in predicted.items():
        assert abs(p - measured[dev]) <= 0.01 * measured[dev], (dev, p, measured[dev])


def test_default_cpu_load_is_fp32_eval_and_measured(llama):
    import torch

    model = fitplan.load(llama, tokenizer=False, context=256)
    assert model.fitplan.plan.precision == "fp32"
    assert model.dtype == torch.float32 and not model.training
    assert {p.device.type for p in model.parameters()} == {"cpu"}
    _close(model.fitplan.predicted_weights, model.fitplan.measured_weights)
    assert "predicted" in str(model.fitplan)


@pytest.mark.parametrize("precision,cls", [("nf4", "Linear4bit"), ("nf4-dq", "Linear4bit"), ("int8", "Linear8bitLt")])
def test_bitsandbytes_on_the_cpu_when_asked(llama, precision, cls):
    import torch

    model = fitplan.load(llama, tokenizer=False, context=256, precision=precision)
    names = {type(m).__name__ for m in model.modules()}
    assert cls in names
    assert model.fitplan.plan.precision == precision
    _close(model.fitplan.predicted_weights, model.fitplan.measured_weights)
    if precision.startswith("nf4"):
        w = next(m for m in model.modules() if type(m).__name__ == "Linear4bit").weight
        assert w.quant_state.quant_type == "nf4" and (w.quant_state.nested == precision.endswith("dq"))
    out = model.generate(input_ids=torch.tensor([[5, 6, 7, 8]]), max_new_tokens=3, do_sample=False, pad_token_id=0)
    assert out.shape == (1, 7)


def test_user_argument_that_contradicts_the_plan_wins_with_a_warning(llama, caplog):
    import torch

    with caplog.at_level(logging.WARNING, logger="fitplan"):
        model = fitplan.load(llama, tokenizer=False, context=256, dtype=torch.bfloat16)
    assert model.dtype == torch.bfloat16
    assert any("dtype" in r.getMessage() and "replaces the planned" in r.getMessage() for r in caplog.records)
    assert model.fitplan.overrides


def test_unknown_from_pretrained_argument_is_rejected(llama):
    with pytest.raises(InputError, match="does not know"):
        fitplan.load(llama, tokenizer=False, colour="blue")


def test_does_not_fit_is_raised_before_any_load(llama, monkeypatch):
    from transformers import AutoModelForCausalLM

    forbid_from_pretrained(monkeypatch, AutoModelForCausalLM, "from_pretrained must not be called when the plan "
                                                              "does not fit")
    with pytest.raises(DoesNotFitError, match="does not fit"):
        fitplan.load(llama, tokenizer=False, context=4_000_000, batch=4096)


def test_plan_kwargs_load_with_transformers_directly(llama):
    from transformers import AutoModelForCausalLM

    plan = fitplan.plan(llama, context=256, precision="nf4")
    model = AutoModelForCausalLM.from_pretrained(plan.model_id, **plan.from_pretrained_kwargs())
    assert any(type(m).__name__ == "Linear4bit" for m in model.modules())


def test_a_folder_without_a_tokenizer_fails_before_the_model_loads(llama, monkeypatch):
    """The folder has weights and no tokenizer: load() says so in one line, and no weight was read
    (it used to load the whole model, then die in transformers' tokenizer)."""
    import transformers

    loaded = []
    real = transformers.AutoModelForCausalLM.from_pretrained.__func__

    def spy(cls, *args, **kwargs):
        loaded.append(args)
        return real(cls, *args, **kwargs)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", classmethod(spy))
    with pytest.raises(InputError, match="has no tokenizer fitplan.load\\(\\) can use.*tokenizer=False"):
        fitplan.load(llama, context=256)
    assert loaded == []
    model = fitplan.load(llama, context=256, tokenizer=False)  # the model alone still loads
    assert loaded and model.fitplan.plan.fits
