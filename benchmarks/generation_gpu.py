"""Decode speed and peak memory of plain `generate()` against the setup fitplan chooses (issue 20).

For each shape x precision x batch: a random-weight checkpoint at the model's real shape (config.json
from fitplan's catalogue), loaded with `from_pretrained` as fitplan plans it (bf16, or bitsandbytes
int8 / nf4 / nf4 + double quant, one GPU), then

- plain: `generate()` as transformers does it by default (the model's own generation config);
- static: `generate(..., cache_implementation="static")` with the cache sized for prompt + new tokens,
  which transformers compiles (`torch.compile(mode="reduce-overhead")` of the decode step) on CUDA when
  the model and its quantizer allow it. The first call (compile included) is timed on its own.

Prompt 512 tokens, 64 new (--new-tokens), greedy, `min_new_tokens` so every run decodes all of them.
tokens/s = batch x new tokens / (generate time - the prompt's prefill time); median of --repeat runs
after the first. Peak: `torch.cuda.max_memory_reserved()` and `max_memory_allocated()` during the timed runs,
after `reset_peak_memory_stats()`; weights: `memory_allocated()` after the load.

The last case loads through `fitplan.load(..., warmup=True)` itself and records the setup it applied
and the warm-up time. Rows go to --out as JSON lines, flushed one by one; --budget-s stops starting new
cases past that many seconds, so a time-limited run returns what it measured.

    python benchmarks/generation_gpu.py --out gen-h200-tf5.17.jsonl
"""
from __future__ import annotations

import argparse
import gc
import json
import statistics
import time
from pathlib import Path

from accuracy import make_checkpoint  # a random-weight checkpoint at the real shape, as every GPU benchmark makes it

SHAPES = {"llama1b": "meta-llama/Llama-3.2-1B", "qwen8b": "Qwen/Qwen3-8B", "gemma3-1b": "google/gemma-3-1b-it",
          "olmoe": "allenai/OLMoE-1B-7B-0924"}
PRECISIONS = ("bf16", "int8", "nf4", "nf4-dq")


def quant_config(precision: str):
    import torch
    from transformers import BitsAndBytesConfig

    if precision == "bf16":
        return None
    if precision == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16,
                              bnb_4bit_use_double_quant=precision == "nf4-dq")


def _sync_time(fn) -> float:
    import torch

    torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - t0


def measure(model, batch: int, prompt: int, new: int, setup: str, repeat: int = 1) -> dict:
    import torch

    ids = torch.randint(10, 30000, (batch, prompt), device="cuda")
    mask = torch.ones_like(ids)
    kw = dict(input_ids=ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new, do_sample=False,
              pad_token_id=0)
    if setup == "static":
        kw["cache_implementation"] = "static"
    with torch.inference_mode():
        first = _sync_time(lambda: model.generate(**kw))
        prefill = statistics.median(_sync_time(lambda: model(input_ids=ids, attention_mask=mask, logits_to_keep=1))
                                    for _ in range(2))
        torch.cuda.reset_peak_memory_stats()
        times = [_sync_time(lambda: model.generate(**kw)) for _ in range(repeat)]
    gen = statistics.median(times)
    return {"setup": setup, "batch": batch, "first_call_s": round(first, 2), "generate_s": round(gen, 4),
            "prefill_s": round(prefill, 4), "decode_tokens_per_s": round(batch * new / max(gen - prefill, 1e-9), 2),
            "peak_reserved": torch.cuda.max_memory_reserved(), "peak_allocated": torch.cuda.max_memory_allocated(),
            "compiled": bool(getattr(model, "_compiled_call", None) is not None)}


def via_fitplan(args, emit) -> None:
    """Load through fitplan.load(warmup=True): the setup it applies, the warm-up time, then one generate()."""
    import torch

    import fitplan

    model_id = SHAPES[args.fitplan_load]
    path = make_checkpoint(model_id, Path(args.ckpt_dir))
    m = None
    try:
        m = fitplan.load(str(path), tokenizer=False, context=args.prompt + args.new_tokens, batch=1, precision="bf16",
                         warmup=True)
        rep = m.fitplan
        ids = torch.randint(10, 30000, (1, args.prompt), device="cuda")
        with torch.inference_mode():
            gen = _sync_time(lambda: m.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                                max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                                                do_sample=False, pad_token_id=0))
        speed = rep.plan.decision.speed
        emit({"model": model_id, "precision": "bf16", "batch": 1, "setup": "fitplan.load",
              "generation": rep.plan.generation.to_dict(), "warmup_s": rep.warmup_s, "generate_s": round(gen, 4),
              "predicted_tokens_per_s": speed.tokens_per_s if speed else None, "report": str(rep)})
    except Exception as exc:  # noqa: BLE001 - a failing load is a result
        emit({"model": model_id, "setup": "fitplan.load", "error": f"{type(exc).__name__}: {exc}"[:400]})
    del m
    gc.collect()
    torch._dynamo.reset()
    torch.cuda.empty_cache()


def main() -> None:
    import torch
    import transformers

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="llama1b,gemma3-1b,qwen8b")
    ap.add_argument("--precisions", default=",".join(PRECISIONS))
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--static", default="bf16", help="precisions whose static setup is measured too")
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--ckpt-dir", default="/dev/shm/fitplan-ckpt")
    ap.add_argument("--out", default="gen.jsonl")
    ap.add_argument("--budget-s", type=float, default=1e9)
    ap.add_argument("--fitplan-load", default="llama1b", help="shape loaded through fitplan.load(warmup=True) last")
    args = ap.parse_args()
    start = time.perf_counter()
    out = open(args.out, "a")
    import bitsandbytes

    env = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "transformers": transformers.__version__,
           "bitsandbytes": bitsandbytes.__version__}

    def emit(row):
        row = {**row, **env, "prompt": args.prompt, "new_tokens": args.new_tokens}
        out.write(json.dumps(row) + "\n")
        out.flush()
        print(json.dumps(row), flush=True)

    from transformers import AutoModelForCausalLM

    if args.fitplan_load:
        via_fitplan(args, emit)
    for shape in args.shapes.split(","):
        model_id = SHAPES[shape]
        path = make_checkpoint(model_id, Path(args.ckpt_dir))
        for prec in args.precisions.split(","):
            if time.perf_counter() - start > args.budget_s:
                emit({"model": model_id, "precision": prec, "skipped": "time budget"})
                continue
            torch.cuda.empty_cache()
            base = torch.cuda.memory_allocated()
            t0 = time.perf_counter()
            model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16, device_map={"": 0},
                                                         quantization_config=quant_config(prec))
            load_s = time.perf_counter() - t0
            weights = torch.cuda.memory_allocated() - base
            setups = ["plain"] + (["static"] if prec in args.static.split(",") else [])
            for batch in map(int, args.batches.split(",")):
                for setup in setups:
                    if time.perf_counter() - start > args.budget_s:
                        emit({"model": model_id, "precision": prec, "batch": batch, "setup": setup,
                              "skipped": "time budget"})
                        continue
                    try:
                        row = measure(model, batch, args.prompt, args.new_tokens, setup, args.repeat)
                    except Exception as exc:  # noqa: BLE001 - a failing setup is a result
                        row = {"setup": setup, "batch": batch, "error": f"{type(exc).__name__}: {exc}"[:300]}
                        torch._dynamo.reset()
                    emit({"model": model_id, "precision": prec, "load_s": round(load_s, 1), "weights": weights,
                          "default_cache_implementation": model.generation_config.cache_implementation, **row})
            del model
            gc.collect()
            torch._dynamo.reset()
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
