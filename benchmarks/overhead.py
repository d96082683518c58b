"""fitplan's own cost, as ratios against the baselines it must beat, measured in one run.

    python benchmarks/overhead.py check [--repeat 5]      # any machine (2-core CPU is the target)
    python benchmarks/overhead.py load  [--repeat 3]      # a GPU machine

`check`: a local folder holding the config.json of a 70B model (Llama-3.1-70B-Instruct from the
catalogue). Baseline: what accelerate's `estimate-memory` does before it can answer — a fresh
Python that imports torch + transformers and builds the model on the meta device. fitplan's
first run (empty inventory cache) and repeated run (cache warm) run `fitplan check FOLDER --gpu
h100-sxm` in fresh processes. Goals: first <= 0.75x baseline; repeated < 1 s median, without
importing torch.

`load`: `fitplan.load()` vs a bare `from_pretrained` with the same arguments (a 7B-shaped
random-weight checkpoint, bf16 on one GPU). Goal: within 3%.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODEL_70B = "meta-llama/Llama-3.1-70B-Instruct"

BASELINE = """
import json, sys
import torch, transformers
from accelerate import init_empty_weights
from transformers import AutoConfig, AutoModelForCausalLM
cfg = AutoConfig.from_pretrained(sys.argv[1])
with init_empty_weights():
    AutoModelForCausalLM.from_config(cfg)
"""

NO_TORCH_CHECK = """
import sys, runpy
sys.argv = ["fitplan", "check", sys.argv[1], "--gpu", "h100-sxm", "--json"]
try:
    runpy.run_module("fitplan", run_name="__main__")
except SystemExit:
    pass
assert "torch" not in sys.modules, "the cached path imported torch"
"""


def _time(cmd: list[str], env: dict) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return time.perf_counter() - t0


def bench_check(repeat: int) -> dict:
    sys.path.insert(0, str(ROOT))
    from fitplan.model.sources import resolve

    folder = Path(tempfile.mkdtemp(prefix="fitplan-70b-"))
    (folder / "config.json").write_text(json.dumps(resolve(MODEL_70B, offline=True).config))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    py = sys.executable
    baseline, first, cached = [], [], []
    for _ in range(repeat):
        baseline.append(_time([py, "-c", BASELINE, str(folder)], env))
        cache = tempfile.mkdtemp(prefix="fitplan-cache-")
        first.append(_time([py, "-m", "fitplan", "check", str(folder), "--gpu", "h100-sxm"],
                           {**env, "FITPLAN_CACHE": cache}))
        cached.append(_time([py, "-m", "fitplan", "check", str(folder), "--gpu", "h100-sxm"],
                            {**env, "FITPLAN_CACHE": cache}))
    check = subprocess.run([py, "-c", NO_TORCH_CHECK, str(folder)], env={**env, "FITPLAN_CACHE": cache},
                           capture_output=True, text=True)
    out = {
        "baseline_median_s": statistics.median(baseline),
        "first_median_s": statistics.median(first),
        "cached_median_s": statistics.median(cached),
        "first_over_baseline": statistics.median(first) / statistics.median(baseline),
        "cached_imports_torch": check.returncode != 0 or "imported torch" in check.stderr,
        "repeat": repeat, "cpus": os.cpu_count(),
    }
    return out


def bench_load(repeat: int) -> dict:
    sys.path.insert(0, str(ROOT))
    import gc

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    import fitplan
    from fitplan.model.sources import resolve

    path = Path(tempfile.mkdtemp(prefix="fitplan-7b-"))
    cfg = resolve("meta-llama/Llama-2-7b-hf", offline=True).config
    with torch.device("cuda"):
        AutoModelForCausalLM.from_config(AutoConfig.for_model(**cfg), dtype=torch.bfloat16).save_pretrained(path)
    gc.collect()
    torch.cuda.empty_cache()
    kwargs = fitplan.plan(str(path), context=4096).from_pretrained_kwargs()
    bare, fp = [], []

    def clear():
        gc.collect()
        torch.cuda.empty_cache()

    for _ in range(repeat):
        t0 = time.perf_counter()
        m = AutoModelForCausalLM.from_pretrained(str(path), **kwargs)
        torch.cuda.synchronize()
        bare.append(time.perf_counter() - t0)
        del m
        clear()
        t0 = time.perf_counter()
        m = fitplan.load(str(path), context=4096, tokenizer=False)
        torch.cuda.synchronize()
        fp.append(time.perf_counter() - t0)
        del m
        clear()
    return {"bare_median_s": statistics.median(bare), "fitplan_median_s": statistics.median(fp),
            "fitplan_over_bare": statistics.median(fp) / statistics.median(bare), "repeat": repeat,
            "gpu": torch.cuda.get_device_name(0)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["check", "load"])
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    res = bench_check(args.repeat) if args.what == "check" else bench_load(args.repeat)
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
