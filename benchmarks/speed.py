"""Prefill and decode throughput per precision, the facts behind the policy's `prefer: speed`.

Run on a GPU machine:

    python benchmarks/speed.py --model meta-llama/Llama-3.1-8B --out results/speed.jsonl

Random weights at the model's real shape, loaded through `fitplan.load()` at each precision.
Prefill: one forward over a 2048-token prompt per sequence (tokens/s = batch x 2048 / time).
Decode: `generate` of 128 (--new-tokens) new tokens after a 128-token prompt, minus the prefill time of that
prompt (tokens/s = batch x new tokens / time). Median of 3 timed runs after one warm-up.
"""
from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from accuracy import make_checkpoint  # noqa: E402


def _timed(fn, repeat=3):
    import torch

    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    import torch

    import fitplan

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="meta-llama/Llama-3.1-8B")
    ap.add_argument("--precisions", default="bf16,int8,nf4,nf4-dq,fp4")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--out", default="speed.jsonl")
    ap.add_argument("--ckpt-dir", default="/tmp/fitplan-ckpt")
    ap.add_argument("--new-tokens", type=int, default=128)
    args = ap.parse_args()
    path = str(make_checkpoint(args.model, Path(args.ckpt_dir)))
    out = open(args.out, "a")
    for prec in args.precisions.split(","):
        model = fitplan.load(path, precision=prec, context=4096, batch=8, tokenizer=False)
        for batch in map(int, args.batches.split(",")):
            long = torch.randint(10, 30000, (batch, 2048), device="cuda")
            short = torch.randint(10, 30000, (batch, 128), device="cuda")
            with torch.inference_mode():
                prefill = _timed(lambda: model(input_ids=long, logits_to_keep=1))
                short_prefill = _timed(lambda: model(input_ids=short, logits_to_keep=1))
                gen = _timed(lambda: model.generate(input_ids=short, attention_mask=torch.ones_like(short),
                                                    max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False,
                                                    pad_token_id=0))
            row = {"model": args.model, "precision": prec, "batch": batch,
                   "prefill_tokens_per_s": batch * 2048 / prefill,
                   "decode_tokens_per_s": batch * args.new_tokens / max(gen - short_prefill, 1e-9), "new_tokens": args.new_tokens,
                   "gpu": torch.cuda.get_device_name(0)}
            out.write(json.dumps(row) + "\n")
            out.flush()
            print(json.dumps(row), flush=True)
        del model
        gc.collect()
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
