"""Shared pytest fixtures. Keep each group in its own marked section."""
from __future__ import annotations

import pytest


# ---- fake Hugging Face Hub (tests/hubserver.py) ------------------------------------------------------

@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    """A fake Hub on 127.0.0.1 that huggingface_hub talks to, with an empty per-test HF_HOME.

    Add repos with `fake_hub.add_repo(...)`, faults with `.fail(...)`/`.delay(...)`, and inspect
    `.requests`. No token, no offline mode, no proxy; the user's real cache is never touched.
    """
    import huggingface_hub

    from hubserver import HubServer, point_huggingface_hub_at

    with HubServer() as hub:
        point_huggingface_hub_at(monkeypatch, hub.url, tmp_path / "hf-home")
        yield hub
        huggingface_hub.close_session()  # no pooled connection outlives the server


# ---- a tiny vision-language checkpoint (LLaVA, random weights) ----------------------------------------

@pytest.fixture(scope="module")
def llava(tmp_path_factory):
    """A saved tiny LLaVA (tests/test_arch_vision.py's config), for the load and check-output tests."""
    import torch
    from transformers import AutoModelForImageTextToText

    from test_arch_vision import llava_config

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("llava")
    AutoModelForImageTextToText.from_config(llava_config(), dtype=torch.bfloat16).save_pretrained(path)
    return str(path)
