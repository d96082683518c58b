"""State-space and linear-attention layers without their kernel packages: the torch path's prefill scratch.

On the GPU image (transformers 5.17, no mamba_ssm), Falcon-H1 at 4k x 2 tokens asked for 256 GiB in
one tensor, Nemotron-H 2B at 8k x 4 for 256 GiB, Mamba-2 7B at 2k for 32 GiB, while fitplan planned
16-21 GiB: the torch path of the Mamba-2 chunk scan materialises a (batch, chunks, chunk, chunk,
heads, state) fp32 product (docs/models.md, "Measured on a GPU"). These tests hold the term to the
form the installed transformers runs, and to the kernels being absent.
"""
from __future__ import annotations

import pytest

from fitplan.model import hf
from fitplan.model.build import build_inventory
from fitplan.planning.estimate import Workload, activation_bytes

MAMBA2 = dict(hidden_size=256, num_hidden_layers=2, num_heads=8, head_dim=64, state_size=128, n_groups=1,
              chunk_size=256, vocab_size=512, expand=2)


def _mamba2():
    from transformers import CONFIG_MAPPING

    if hf.version_tuple() < (5, 17):
        pytest.skip("transformers before 5.17 keeps Mamba-2's state where a meta forward cannot read it: refused "
                    "(docs/models.md, Known limits)")
    return CONFIG_MAPPING["mamba2"](**MAMBA2).to_dict()


def test_mamba_selective_scan_without_kernels(monkeypatch):
    """Mamba-1 (Mamba, Falcon-Mamba, Jamba's Mamba layers): discrete A, discrete B and deltaB*u,
    (batch, intermediate, tokens, state) fp32 each, on every version CI runs."""
    from transformers import CONFIG_MAPPING

    monkeypatch.setattr(hf, "kernels_installed", lambda packages: False)
    cfg = CONFIG_MAPPING["mamba"](hidden_size=128, num_hidden_layers=2, state_size=16, expand=2, vocab_size=512)
    inv = build_inventory(cfg.to_dict(), model_id="m1")
    assert inv.prefill_scratch_per_token == 3 * 256 * 16 * 4


def test_the_scratch_is_the_form_the_installed_torch_path_computes(monkeypatch):
    monkeypatch.setattr(hf, "kernels_installed", lambda packages: False)
    inv = build_inventory(_mamba2(), model_id="m2")
    l, h, n, p = 256, 8, 128, 64
    from transformers.models.mamba2 import modeling_mamba2
    import inspect

    source = inspect.getsource(modeling_mamba2)
    expected = (13 * l * h if "bclhn,bcshn" in source else l * h * (n + p + 3) + h * p * n) * 4
    assert inv.prefill_scratch_per_token == expected
    assert any("torch path" in note and "mamba_ssm" in note for note in inv.notes)
    # it is a prefill term: it grows with the tokens of the batch
    small, large = (activation_bytes(inv, Workload(c, b), "bfloat16") for c, b in ((1024, 1), (4096, 2)))
    assert large - small >= (4096 * 2 - 1024) * expected * 0.9


def test_installed_kernels_take_the_term_away(monkeypatch):
    monkeypatch.setattr(hf, "kernels_installed", lambda packages: True)
    inv = build_inventory(_mamba2(), model_id="m2-kernels")
    assert inv.prefill_scratch_per_token == 0 and not any("torch path" in n for n in inv.notes)


def test_attention_models_have_none():
    from tiny_models import config_dict

    assert build_inventory(config_dict("llama-gqa"), model_id="l").prefill_scratch_per_token == 0


def test_an_unknown_chunk_scan_is_refused_not_guessed(monkeypatch):
    """A release whose torch path is neither form fitplan sizes is refused, naming the version."""
    import inspect

    from fitplan.errors import LibraryChangedError

    monkeypatch.setattr(hf, "kernels_installed", lambda packages: False)
    real = inspect.getsource
    monkeypatch.setattr(hf._inspect, "getsource", lambda obj: "def mamba2_chunk_scan(): pass"
                        if getattr(obj, "__name__", "").endswith("modeling_mamba2") else real(obj))
    with pytest.raises(LibraryChangedError, match="neither form of the Mamba-2 chunk scan"):
        build_inventory(_mamba2(), model_id="m2-unknown")


def test_the_kernel_packages_are_in_the_inventory_cache_key(monkeypatch):
    from fitplan.model.cache import inventory_cache_key

    key = inventory_cache_key({"model_type": "mamba2"}, "m", None)
    monkeypatch.setattr(hf, "kernel_presence", lambda: {"mamba_ssm": True, "causal_conv1d": True, "fla": False})
    assert inventory_cache_key({"model_type": "mamba2"}, "m", None) != key
