"""Predicted vs measured GPU memory, per model shape, precision and workload.

Run on a GPU machine (one command; it needs only what fitplan needs):

    python benchmarks/accuracy.py measure --out results/accuracy.jsonl
    python benchmarks/accuracy.py report benchmarks/results/acc*.jsonl   # the table in docs/accuracy.md

`measure` builds random-weight checkpoints at the real shapes of catalogue models (config.json
from fitplan's catalogue, weights from `from_config`), loads each through `fitplan.load()` at
each precision, generates at each (context, batch) workload and records, per case: weights held
after load (allocator), peak allocated during generation, peak reserved, and the NVML-visible
peak of the process (CUDA context + reserved peak: the caching allocator keeps its segments, so
the device's used memory after generation is the process' peak). One JSON line per case.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DEFAULT_MODELS = [
    "Qwen/Qwen2.5-0.5B", "meta-llama/Llama-3.2-1B", "openai-community/gpt2-xl", "facebook/opt-1.3b",
    "google/gemma-2-2b", "microsoft/Phi-3-mini-4k-instruct", "allenai/OLMoE-1B-7B-0924",
    "mistralai/Mistral-7B-v0.1", "meta-llama/Llama-2-7b-hf", "tiiuae/falcon-7b",
    "meta-llama/Llama-3.1-8B", "meta-llama/Llama-2-13b-hf",
]
DEFAULT_PRECISIONS = ["bf16", "int8", "nf4", "nf4-dq", "fp4"]
DEFAULT_WORKLOADS = ["512x1", "2048x4", "4096x1"]
NEW_TOKENS = 16


def _workloads(text: str) -> list[tuple[int, int]]:
    return [tuple(int(x) for x in w.split("x")) for w in text.split(",")]


def cuda_used_bytes(i: int = 0) -> int:
    import torch

    free, total = torch.cuda.mem_get_info(i)
    return total - free


def make_checkpoint(model_id: str, root: Path) -> Path:
    """A random-weight bf16 checkpoint at `model_id`'s real shape, built on the GPU (fast)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from fitplan.model.sources import resolve

    path = root / model_id.replace("/", "--")
    if (path / "config.json").exists():
        return path
    cfg = resolve(model_id, offline=True).config
    config = AutoConfig.for_model(**{k: v for k, v in cfg.items() if k != "quantization_config"})
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(path)
    del model
    gc.collect()
    torch.cuda.empty_cache()
    return path


def measure_case(path: Path, model_id: str, precision: str, workloads, baseline: int) -> list[dict]:
    import torch

    import fitplan
    from fitplan.planning.estimate import Workload, estimate
    from fitplan.vocab.precision import get

    import json as _json

    cfg = _json.loads((Path(path) / "config.json").read_text())
    limit = cfg.get("max_position_embeddings") or cfg.get("n_positions") or 1 << 30
    workloads = [(c, b) for c, b in workloads if c <= limit] or [(min(limit, 512), 1)]
    ctx = max(c for c, _ in workloads)
    bmax = max(b for _, b in workloads)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    t0 = time.perf_counter()
    model = fitplan.load(str(path), precision=precision, context=ctx, batch=bmax, tokenizer=False, use_cache=False)
    torch.cuda.synchronize()
    load_s = time.perf_counter() - t0
    weights = torch.cuda.memory_allocated() - before
    from fitplan.runtime.measure import held_bytes

    held = held_bytes(model).get("cuda:0", 0)
    gc.collect()
    weights_after_gc = torch.cuda.memory_allocated() - before
    plan = model.fitplan.plan
    rows = []
    for context, batch in workloads:
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        ids = torch.randint(10, min(plan.inventory.vocab_size, 30000), (batch, context - NEW_TOKENS), device="cuda")
        t1 = time.perf_counter()
        with torch.inference_mode():
            model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW_TOKENS,
                           min_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=0)
        torch.cuda.synchronize()
        gen_s = time.perf_counter() - t1
        peak_alloc = torch.cuda.max_memory_allocated() - before
        peak_reserved = torch.cuda.max_memory_reserved()
        est = estimate(plan.inventory, get(precision), Workload(context, batch), plan.compute_dtype, "cuda")
        rows.append({
            "model": model_id, "architecture": plan.inventory.architecture,
            "versions": dict(plan.inventory.versions), "inventory_digest": inventory_digest(plan.inventory),
            "parameters": plan.inventory.parameters, "precision": precision, "context": context, "batch": batch,
            "predicted": est.to_dict(),
            "measured": {"weights_bytes": weights, "held_bytes": held, "weights_after_gc_bytes": weights_after_gc,
                         "peak_allocated_bytes": peak_alloc,
                         "peak_reserved_bytes": peak_reserved, "nvml_peak_bytes": baseline + peak_reserved,
                         "cuda_context_bytes": baseline},
            "load_s": load_s, "generate_s": gen_s,
        })
        print(json.dumps(rows[-1]), flush=True)
    del model
    gc.collect()
    torch.cuda.empty_cache()
    return rows


def cmd_measure(args) -> None:
    import torch

    torch.cuda.init()
    x = torch.randn(256, 256, device="cuda", dtype=torch.bfloat16)
    (x @ x).sum().item()  # load cuBLAS: part of the context every inference process carries
    del x
    torch.cuda.empty_cache()
    baseline = cuda_used_bytes()
    print(json.dumps({"cuda_context_bytes": baseline, "gpu": torch.cuda.get_device_name(0),
                      "torch": torch.__version__}), flush=True)
    out = open(args.out, "a")
    root = Path(args.ckpt_dir)
    root.mkdir(parents=True, exist_ok=True)
    for model_id in args.models.split(","):
        path = make_checkpoint(model_id, root)
        for prec in args.precisions.split(","):
            try:
                for row in measure_case(path, model_id, prec, _workloads(args.workloads), baseline):
                    out.write(json.dumps(row) + "\n")
                    out.flush()
            except Exception as exc:  # record and go on: one failing case must not hide the others
                out.write(json.dumps({"model": model_id, "precision": prec, "error": repr(exc)[:500]}) + "\n")
                print(f"FAILED {model_id} {prec}: {exc!r}"[:500], flush=True)
                gc.collect()
                torch.cuda.empty_cache()
        if args.delete_checkpoints:
            import shutil

            shutil.rmtree(path, ignore_errors=True)


def _pct(pred: int, meas: int) -> str:
    return f"{(pred - meas) / meas * 100:+.1f}%"


def inventory_digest(inv) -> str:
    """What a transformers version builds for a model, as far as memory goes: attention implementation,
    KV layout, and each tensor's shape, dtype, quantization and upcast (names left out). Versions that
    build different models for one config (Gemma-2: SDPA before 5.21, eager after; Falcon: 4-bit
    packs its layers before 5.5, not after) give different digests, and a measurement taken with one
    says nothing about an estimate made with the other."""
    import hashlib
    from dataclasses import asdict

    tensors = sorted(json.dumps({k: v for k, v in asdict(t).items() if k != "name"}, sort_keys=True)
                     for t in inv.tensors)
    # KV fields added later (per-sequence state, fixed-size entries) enter only where they are not 0,
    # so that a model whose cache did not change keeps the digest it was measured with
    kv = [{f: v for f, v in asdict(k).items() if f in ("elements_per_token", "window") or v} for k in inv.kv_layers]
    facts = {"attn": inv.attn_implementation, "kv": kv, "tensors": tensors,
             "experts": [inv.experts_per_token, inv.expert_intermediate_size]}
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:16]


def rescore(rows: list[dict]) -> list[dict]:
    """Predictions of the current estimator for measured cases (the constants may have moved
    since the measurement); adds `now` (an Estimate) to each row that has measurements, and
    `same_model`: whether the installed libraries build the model that was measured (the row's
    `inventory_digest` is today's). Re-scoring a row where it is False compares two different models."""
    from fitplan.planning.estimate import Workload, estimate
    from fitplan.pipeline import get_inventory
    from fitplan.vocab.precision import get
    from fitplan.model.sources import resolve

    invs: dict = {}
    out = []
    for r in rows:
        if "measured" not in r:
            continue
        if r["model"] not in invs:
            invs[r["model"]] = get_inventory(resolve(r["model"], offline=True).config, model_id=r["model"])
        e = estimate(invs[r["model"]], get(r["precision"]), Workload(r["context"], r["batch"]), "bfloat16")
        out.append({**r, "now": e, "same_model": r.get("inventory_digest") == inventory_digest(invs[r["model"]])})
    return out


def cmd_report(args) -> None:
    rows = rescore([json.loads(line) for f in args.results for line in open(f) if line.strip()])
    other = sorted({r["model"] for r in rows if not r["same_model"]})
    if other:  # measured with libraries that build these models differently than the installed ones
        print(f"left out, built differently by the installed libraries than when measured: {', '.join(other)}\n")
        rows = [r for r in rows if r["same_model"]]
    G = 1 << 30
    print("| model | precision | context x batch | weights pred / meas (GiB) | weights err | total pred (GiB) "
          "| NVML peak (GiB) | total vs peak |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        e, m = r["now"], r["measured"]
        print(f"| {r['model']} | {r['precision']} | {r['context']}x{r['batch']} | "
              f"{e.weights_bytes / G:.3f} / {m['weights_bytes'] / G:.3f} | {_pct(e.weights_bytes, m['weights_bytes'])} | "
              f"{e.total_bytes / G:.2f} | {m['nvml_peak_bytes'] / G:.2f} | {_pct(e.total_bytes, m['nvml_peak_bytes'])} |")
    werr = [abs(r["now"].weights_bytes - r["measured"]["weights_bytes"]) / r["measured"]["weights_bytes"] for r in rows]
    terr = [(r["now"].total_bytes - r["measured"]["nvml_peak_bytes"]) / r["measured"]["nvml_peak_bytes"] for r in rows]
    print(f"\n{len(rows)} cases, {len({r['model'] for r in rows})} models. Weights: max |error| "
          f"{max(werr) * 100:.2f}%. Total vs NVML peak: min {min(terr) * 100:+.1f}%, max {max(terr) * 100:+.1f}%, "
          f"{sum(t < 0 for t in terr)} below the peak, {sum(t > 0.10 for t in terr)} more than 10% above.")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("measure")
    m.add_argument("--models", default=",".join(DEFAULT_MODELS))
    m.add_argument("--precisions", default=",".join(DEFAULT_PRECISIONS))
    m.add_argument("--workloads", default=",".join(DEFAULT_WORKLOADS), help="CONTEXTxBATCH,...")
    m.add_argument("--out", default="accuracy.jsonl")
    m.add_argument("--ckpt-dir", default=os.environ.get("FITPLAN_BENCH_CKPT", "/tmp/fitplan-ckpt"))
    m.add_argument("--delete-checkpoints", action="store_true")
    r = sub.add_parser("report", help="table of measured cases vs the current estimator")
    r.add_argument("results", nargs="+")
    args = ap.parse_args()
    {"measure": cmd_measure, "report": cmd_report}[args.cmd](args)


if __name__ == "__main__":
    main()
