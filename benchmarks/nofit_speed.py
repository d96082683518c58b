"""Time `fitplan check` on a large MoE where nothing fits against a plan that fits: a no-fit answer
(the policy's table, the suggestions re-checked, the llama.cpp rows) should cost about what a fit
costs. Qwen3-235B-A22B (the shipped config, 94 layers) and the same config at 256 layers (the
deepest fitplan accepts), each cold (empty inventory cache: includes the meta-device build) and
cached, through the CLI in a fresh process as a user runs it, and in-process (imports excluded).

Run: PYTHONPATH=. python benchmarks/nofit_speed.py  (writes benchmarks/results/nofit_speed.json)
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = "Qwen/Qwen3-235B-A22B"
#: The hardware a plan fits (8 H200 hold the 94-layer model in bf16, 16 the 256-layer one) and one
#: where nothing does (one RTX 4090).
FITS = {94: "8xh200", 256: "16xh200"}
NO_FIT = "rtx4090"


def deep_config(folder: str) -> str:
    from fitplan.model.source import resolve

    cfg = dict(resolve(MODEL, offline=True).config)
    cfg["num_hidden_layers"] = 256
    cfg.pop("layer_types", None)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(cfg, f)
    return folder


def cli(model: str, gpu: str, cache: str) -> tuple[float, int]:
    env = {**os.environ, "FITPLAN_CACHE": cache, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ROOT}
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "fitplan", "check", model, "--gpu", gpu], env=env,
                       capture_output=True, text=True)
    return time.perf_counter() - t0, r.returncode


def in_process(model: str, gpu: str, cache: str) -> float:
    os.environ["FITPLAN_CACHE"] = cache
    from fitplan.pipeline import plan_model

    best = None
    for _ in range(3):
        t0 = time.perf_counter()
        plan_model(model, gpu=gpu, offline=True)
        best = min(best or 1e9, time.perf_counter() - t0)
    return best


def main() -> None:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for layers, name, model in ((94, MODEL, MODEL),
                                    (256, "qwen3_moe x 256 layers", deep_config(os.path.join(tmp, "deep")))):
            for gpu in (FITS[layers], NO_FIT):
                cache = os.path.join(tmp, f"cache-{len(rows)}")
                cold, rc = cli(model, gpu, cache)
                cached, _ = cli(model, gpu, cache)
                rows.append({"model": name, "gpu": gpu, "exit": rc, "cli_cold_s": round(cold, 2),
                             "cli_cached_s": round(cached, 2), "in_process_cached_s": round(in_process(model, gpu, cache), 3)})
                print(json.dumps(rows[-1]), flush=True)
    out = os.path.join(ROOT, "benchmarks", "results", "nofit_speed.json")
    with open(out, "w") as f:
        json.dump({"python": sys.version.split()[0], "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
