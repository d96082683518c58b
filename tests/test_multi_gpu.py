"""On a machine with two or more GPUs: a split per plan, and GPU identity against CUDA's own view.

Skips cleanly with fewer than two CUDA GPUs. Not yet run: the session that wrote it was lent no
multi-GPU machine (docs/accuracy.md, "Not measured"). Run with `python -m pytest -m gpu -q`.
"""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")]
G = 1 << 30


def test_probe_maps_visible_devices_like_cuda():
    """Reversed CUDA_VISIBLE_DEVICES: fitplan's index 0 must be the GPU CUDA calls 0 there."""
    from fitplan.hardware.probe import probe

    uuids = [g.uuid for g in probe().gpus]
    code = ("import torch, json; print(json.dumps([str(torch.cuda.get_device_properties(i).uuid) "
            "for i in range(torch.cuda.device_count())]))")
    env = {**os.environ, "CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": "1,0"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    import json

    seen = json.loads(out.stdout)
    mine = [g.uuid for g in probe(env=env).gpus]
    assert [u.removeprefix("GPU-") for u in mine] == [u.removeprefix("GPU-") for u in seen]
    assert set(mine) <= set(uuids)


def test_split_load_matches_plan_per_device(tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM

    import fitplan
    from fitplan.hardware.probe import probe
    from fitplan.model.sources import resolve

    cfg = resolve("meta-llama/Llama-2-7b-hf", offline=True).config
    with torch.device("cuda:0"):
        AutoModelForCausalLM.from_config(AutoConfig.for_model(**cfg), dtype=torch.bfloat16).save_pretrained(tmp_path)
    torch.cuda.empty_cache()
    real = probe()
    # Emulate two 12 GiB cards: bf16 7B (12.6 GiB) needs both.
    gpus = tuple(dataclasses.replace(g, total_bytes=12 * G, free_bytes=12 * G - (g.total_bytes - g.free_bytes))
                 for g in real.gpus[:2])
    ballast = [torch.empty(real.gpus[i].free_bytes - gpus[i].free_bytes, dtype=torch.uint8, device=f"cuda:{i}")
               for i in range(2)]
    hw = dataclasses.replace(real, gpus=gpus, source="emulated")
    model = fitplan.load(str(tmp_path), hardware=hw, context=2048, tokenizer=False, headroom="0.5GiB")
    plan = model.fitplan.plan
    assert plan.device_map() == "auto" and plan.precision == "bf16"
    for s in plan.decision.placement:
        measured = model.fitplan.measured_weights[f"cuda:{s.device}"]
        assert measured <= s.budget_bytes
    ids = torch.randint(10, 30000, (1, 2048 - 16), device="cuda:0")
    with torch.inference_mode():
        model.generate(input_ids=ids, max_new_tokens=16, min_new_tokens=16, do_sample=False, pad_token_id=0)
    del ballast
