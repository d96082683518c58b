"""Hub kernels on a real GPU: peak memory and decode speed with and without them (transformers 5.25+).

    KERNELS_CACHE=DIR python benchmarks/kernels_gpu.py fetch [--cases NAME,...]          # where the Hub is
    KERNELS_CACHE=DIR HF_HUB_OFFLINE=1 python benchmarks/kernels_gpu.py run --out FILE [--cases ...] [--timeout 300]
    python benchmarks/kernels_gpu.py report FILE...

From transformers 5.25, `from_pretrained` kernelizes the model it loads on CUDA with kernels fetched
from the Hub (docs/compatibility.md, "Hub kernels"); fitplan plans the torch path. This measures what
the kernelized path holds and how fast it decodes, against the torch path, case by case:

- `fetch` (a machine with Hub access; a CPU one will do): for each case, the Hub kernel repositories
  fitplan's plan lists for a CUDA target (`plan.hub_kernels`, from transformers' own mapping), every
  build variant of each, into `KERNELS_CACHE` (the GPU machine has no Hub: carry that folder).
- `run` (the GPU machine): each case twice in fresh processes, `kernels` off and on. The model's
  config (a catalogue entry) is built with random weights on the GPU at bf16 (`from_config`), then,
  for "on", `model.set_use_kernels(True)`: the call `from_pretrained` makes after loading (5.25
  `modeling_utils`), which kernelizes with transformers' mapping; the row records which layers
  really changed their forward. A prompt of `context - 16` tokens, 16 new tokens (greedy): the peak
  is the allocator's reserved peak during generate plus what the process holds outside the
  allocator; tokens/s is 16 x batch over the decode time (generate less a timed prefill).
  fitplan's plan (bf16, headroom 0, this GPU) is recorded beside, so the ratio plan / peak of each
  path can be read off.
- `report`: one line per case: peaks, tokens/s, the ratio with and without kernels.

Results go to docs/compatibility.md ("Hub kernels") with this command. Not run yet: the first run is
the lead's (device budget).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from children import nvml_used, run_child

HERE = Path(__file__).resolve().parent
NEW_TOKENS = 16

#: name, catalogue id, context, batch: the shapes whose loads failed offline on the H200 (issue 19).
CASES = [
    ("llama3.2-1b-4k", "meta-llama/Llama-3.2-1B", 4096, 1),
    ("smollm2-1.7b-8kx4", "HuggingFaceTB/SmolLM2-1.7B", 8192, 4),
    ("falcon-7b-2k", "tiiuae/falcon-7b", 2048, 1),
    ("qwen3-8b-8k", "Qwen/Qwen3-8B", 8192, 1),
    ("olmoe-1b-7b-4k", "allenai/OLMoE-1B-7B-0924", 4096, 1),
]
CASE_BY_NAME = {c[0]: c for c in CASES}


def _names(spec: str) -> list[str]:
    return [c[0] for c in CASES] if spec == "all" else spec.split(",")


def _cuda_repos(source: str) -> list[tuple[str, str]]:
    """The Hub kernel repositories fitplan's plan for a CUDA card lists for `source` (a catalogue id)."""
    import fitplan

    use = fitplan.plan(source, gpu="h100").hub_kernels
    if not use.applicable:
        raise SystemExit(f"transformers {use.transformers} kernelizes nothing by default: nothing to measure")
    return [(r.repo_id, r.ref) for r in use.repos]


def cmd_fetch(args) -> None:
    # every build variant (the GPU's torch and CUDA differ from this machine's); writes refs/vN too,
    # which is what `kernels` reads offline
    from kernels._internals.install import install_kernel_all_variants

    if not os.environ.get("KERNELS_CACHE"):
        raise SystemExit("set KERNELS_CACHE to the folder to carry to the GPU machine")
    seen = set()
    for name in _names(args.cases):
        for repo_id, ref in _cuda_repos(CASE_BY_NAME[name][1]):
            if (repo_id, ref) in seen:
                continue
            seen.add((repo_id, ref))
            spec = {"version": int(ref[1:])} if ref.startswith("v") and ref[1:].isdigit() else {"revision": ref}
            print(f"{repo_id} {ref} -> {install_kernel_all_variants(repo_id, **spec)}", flush=True)


def cmd_child(args) -> None:
    import torch
    from transformers import AutoModelForCausalLM, CONFIG_MAPPING

    import fitplan
    from fitplan.model.source import catalogue_entry
    from fitplan.versions import lib_versions

    name, source, context, batch = CASE_BY_NAME[args.case]
    res = {"case": name, "source": source, "context": context, "batch": batch, "kernels": args.kernels,
           "versions": {**lib_versions(), "kernels": _version("kernels")}, "gpu": torch.cuda.get_device_name(0)}
    cfg = dict(catalogue_entry(source).config)
    config = CONFIG_MAPPING[cfg["model_type"]].from_dict(cfg)
    folder = tempfile.mkdtemp()
    config.save_pretrained(folder)
    plan = fitplan.plan(folder, context=context, batch=batch, precision="bf16", headroom=0)
    est = plan.decision.estimate if plan.decision else plan.choice.decisions[0].estimate
    res.update(planned=est.to_dict(), fits=plan.fits,
               hub_kernels=None if plan.hub_kernels is None else plan.hub_kernels.to_dict())
    stage = "build"
    try:
        with torch.device("cuda"):
            model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).eval()
        if args.kernels == "on":
            from kernels import get_kernelized_layers

            stage = "kernelize"
            model.set_use_kernels(True)  # what from_pretrained does after loading (5.25)
            done = get_kernelized_layers(model)
            res["kernelized_modules"] = len(done.layers) + len(done.funcs)
            res["kernel_repos"] = sorted({str(getattr(k.repo, "_repo_id", k.repo))
                                          for k in (*done.layers.values(), *done.funcs.values())})
            res["use_kernels"] = bool(model.use_kernels)
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        res["weights_allocated"] = torch.cuda.memory_allocated()
        res["outside_allocator"] = nvml_used() - torch.cuda.memory_reserved() - args.idle_used
        ids = torch.randint(10, min(config.get_text_config().vocab_size, 30000), (batch, context - NEW_TOKENS),
                            device="cuda")
        stage = "prefill"
        with torch.inference_mode():
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            model(input_ids=ids, use_cache=True)
            torch.cuda.synchronize()
            prefill_s = time.perf_counter() - t0
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        stage = "generate"
        with torch.inference_mode():
            t1 = time.perf_counter()
            model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW_TOKENS,
                           min_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=0)
            torch.cuda.synchronize()
            generate_s = time.perf_counter() - t1
        res.update(prefill_s=round(prefill_s, 3), generate_s=round(generate_s, 3),
                   tokens_per_s=round(NEW_TOKENS * batch / max(generate_s - prefill_s, 1e-6), 1),
                   peak_reserved=torch.cuda.max_memory_reserved(), peak_allocated=torch.cuda.max_memory_allocated())
        res["peak"] = res["peak_reserved"] + res["outside_allocator"]
        res["ratio"] = round(est.total_bytes / res["peak"], 4)
        res["ran"] = True
    except Exception as exc:  # noqa: BLE001 - recorded; the run goes on with the next case
        res.update(ran=False, stage=stage, error=f"{type(exc).__name__}: {' '.join(str(exc).split())[:400]}")
    print("RESULT " + json.dumps(res, default=str), flush=True)


def _version(dist: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def cmd_run(args) -> None:
    if not os.environ.get("HF_HUB_OFFLINE"):
        print("note: HF_HUB_OFFLINE is not set; kernels missing from KERNELS_CACHE would be fetched", flush=True)
    idle = nvml_used()
    for name in _names(args.cases):
        for kernels in ("off", "on"):
            env = {**os.environ, "USE_HUB_KERNELS": "YES" if kernels == "on" else "NO"}
            row = run_child([__file__, "child", "--case", name, "--kernels", kernels, "--idle-used", str(idle)],
                            {"case": name, "kernels": kernels}, timeout=args.timeout, out=args.out, env=env)
            print(summary(row), flush=True)


def summary(row: dict) -> str:
    if not row.get("ran"):
        return f"{row['case']:22} kernels {row.get('kernels', '?'):3}  FAILED at {row.get('stage', '?')}: {row.get('error')}"
    gib = 1 << 30
    extra = f", {row['kernelized_modules']} modules kernelized" if "kernelized_modules" in row else ""
    return (f"{row['case']:22} kernels {row['kernels']:3}  peak {row['peak'] / gib:6.2f} GiB  planned "
            f"{row['planned']['total_bytes'] / gib:6.2f} GiB  ratio {row['ratio']:.3f}  {row['tokens_per_s']:8.1f} tok/s"
            f"{extra}")


def cmd_report(args) -> None:
    rows = [json.loads(line) for f in args.files for line in Path(f).read_text().splitlines() if line.strip()]
    for row in rows:
        print(summary(row))
    by = {(r["case"], r["kernels"]): r for r in rows if r.get("ran")}
    for name in dict.fromkeys(r["case"] for r in rows):
        off, on = by.get((name, "off")), by.get((name, "on"))
        if off and on:
            print(f"{name:22} kernels/torch: peak x{on['peak'] / off['peak']:.3f}, "
                  f"tokens/s x{on['tokens_per_s'] / off['tokens_per_s']:.2f}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fetch")
    f.add_argument("--cases", default="all")
    r = sub.add_parser("run")
    r.add_argument("--out", required=True)
    r.add_argument("--cases", default="all")
    r.add_argument("--timeout", type=int, default=300)
    c = sub.add_parser("child")
    c.add_argument("--case", required=True)
    c.add_argument("--kernels", choices=("on", "off"), required=True)
    c.add_argument("--idle-used", type=int, default=0)
    p = sub.add_parser("report")
    p.add_argument("files", nargs="+")
    args = ap.parse_args(argv)
    {"fetch": cmd_fetch, "run": cmd_run, "child": cmd_child, "report": cmd_report}[args.cmd](args)


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parent))
    main()
