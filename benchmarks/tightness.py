"""Plan tightness on emulated smaller cards: zero OOMs, and no precision wasted.

Run on a GPU machine:

    python benchmarks/tightness.py --out results/tightness.jsonl

A card of M GiB is emulated on the big GPU: a ballast allocation takes the difference, so the
free memory NVML and torch report is what an M-GiB card would show with this process's CUDA
context on it. fitplan plans for that card (`Hardware` with total M, free as measured), loads
through `fitplan.load()` and generates at the planned context. Then the next-better precision
the policy rejected for size is loaded and run the same way, to show it really fails.
Per case one JSON line: the plan, whether it ran (OOM or not), and whether the rejected
better precision would have fitted (the goal: never).
"""
from __future__ import annotations

import argparse
import gc
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from accuracy import make_checkpoint  # noqa: E402

GiB = 1 << 30
CARDS = [6, 8, 12, 16, 24, 48]  # 48 only adds cases where bf16 fits everything
DEFAULT_MODELS = ["Qwen/Qwen2.5-1.5B", "microsoft/Phi-3-mini-4k-instruct", "meta-llama/Llama-3.1-8B"]
CONTEXTS = [2048, 8192]
NEW_TOKENS = 16


def _emulated(card_gib: float):
    """Allocate ballast so free memory is what a card of `card_gib` would have free; return it."""
    import torch

    from fitplan.hardware.machine import GPU, Hardware
    from fitplan.hardware.probe import probe

    free, total = torch.cuda.mem_get_info()
    context = total - free  # this process' CUDA context (and nothing else on a dedicated GPU)
    want_free = int(card_gib * GiB) - context
    ballast = torch.empty(max(free - want_free, 0), dtype=torch.uint8, device="cuda")
    free2, _ = torch.cuda.mem_get_info()
    real = probe()
    gpu = real.gpus[0]
    hw = Hardware((GPU(0, f"emulated {card_gib} GiB ({gpu.name})", int(card_gib * GiB), free2,
                       gpu.compute_capability),), real.cpu_ram_bytes, "emulated")
    return ballast, hw


def _run(path: str, hw, precision: str | None, context: int) -> dict:
    """Load and generate. With `precision`, bypass the policy (it rejected that precision): plan it
    for an unconstrained copy of the GPU and load those arguments into the emulated card."""
    import dataclasses

    import torch
    from transformers import AutoModelForCausalLM

    import fitplan

    out = {"precision": precision}
    model = hold = None
    try:
        if precision is None:
            model = fitplan.load(path, hardware=hw, context=context, tokenizer=False)
            out["precision"] = model.fitplan.plan.precision
        else:
            # The policy keeps the default headroom free; a fair test of the rejected precision
            # keeps it free too, so it is held by extra ballast while that precision runs.
            from fitplan.options import PlanOptions

            default_headroom = PlanOptions().headroom  # a share of total memory (fitplan.planning.headroom)
            hold = torch.empty(int(hw.gpus[0].total_bytes * default_headroom), dtype=torch.uint8, device="cuda")
            out["headroom_ballast_bytes"] = hold.numel()
            g = hw.gpus[0]
            roomy = dataclasses.replace(hw, gpus=(dataclasses.replace(g, total_bytes=1 << 50, free_bytes=1 << 50),))
            kwargs = fitplan.plan(path, hardware=roomy, precision=precision, context=context).from_pretrained_kwargs()
            model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
        ids = torch.randint(10, 30000, (1, context - NEW_TOKENS), device="cuda")
        with torch.inference_mode():
            model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW_TOKENS,
                           min_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=0)
        out["ran"] = True
    except torch.OutOfMemoryError:
        out["ran"], out["oom"] = False, True
    except fitplan.DoesNotFitError as exc:
        out["ran"], out["no_plan"] = False, str(exc)[:200]
    finally:
        del model, hold
        gc.collect()
        torch.cuda.empty_cache()
    return out


def main() -> None:
    import torch

    from fitplan.vocab.precision import ALL

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(DEFAULT_MODELS))
    ap.add_argument("--cards", default=",".join(map(str, CARDS)))
    ap.add_argument("--contexts", default=",".join(map(str, CONTEXTS)))
    ap.add_argument("--out", default="tightness.jsonl")
    ap.add_argument("--ckpt-dir", default="/tmp/fitplan-ckpt")
    args = ap.parse_args()
    torch.cuda.init()
    out = open(args.out, "a")
    order = [p.name for p in ALL]
    for model_id in args.models.split(","):
        path = str(make_checkpoint(model_id, Path(args.ckpt_dir)))
        for card in map(float, args.cards.split(",")):
            for context in map(int, args.contexts.split(",")):
                ballast, hw = _emulated(card)
                import fitplan

                plan = fitplan.plan(path, hardware=hw, context=context)
                row = {"model": model_id, "card_gib": card, "context": context, "plan": plan.precision}
                if plan.fits:
                    row["planned"] = _run(path, hw, None, context)
                    # the next-better precision rejected for size, if any
                    better = [d for d in plan.choice.decisions
                              if order.index(d.precision) < order.index(plan.precision) and "more than" in d.reason]
                    if better:
                        b = better[-1].precision
                        row["better"] = _run(path, hw, b, context) | {"tried": b}
                        row["better_would_fit"] = bool(row["better"].get("ran"))
                del ballast
                torch.cuda.empty_cache()
                out.write(json.dumps(row) + "\n")
                out.flush()
                print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
