"""Walk every model type of transformers' causal-LM and image-text-to-text mappings through fitplan.

    python benchmarks/walk_models.py [--mapping causal-lm|image-text-to-text|all] [--jobs 2]
                                     [--only TYPE,...] [--timeout 300] [--json OUT]

For each model type: transformers' own default config (`CONFIG_MAPPING[type]()`, usually a released
model's sizes) is saved with `save_pretrained` into a folder, exactly as transformers writes
config.json; transformers must itself build the model from that config on the meta device
(`AutoModelForX.from_config`), else the type is "excluded" (transformers cannot build its own
default). fitplan then reads the folder as a user's checkpoint (`fitplan.model.sources.resolve`),
builds the inventory for that Auto class and estimates every precision at 4096 tokens x 1.

Outcomes: `planned` (an inventory and estimates), `refused` (a one-line `FitplanError`: the
reason is printed and must be true), `bug` (anything else escaping, a timeout or a crash). Counts
per mapping go to stdout; `--json` writes one line per model type. Results: docs/models.md.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import signal
import sys
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

MAPPINGS = {"causal-lm": ("MODEL_FOR_CAUSAL_LM_MAPPING_NAMES", "AutoModelForCausalLM"),
            "image-text-to-text": ("MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES", "AutoModelForImageTextToText")}


class _Timeout(Exception):
    pass


def _alarm(signum, frame):
    raise _Timeout()


def model_types(mapping: str) -> list[str]:
    from transformers.models.auto import modeling_auto

    return sorted(getattr(modeling_auto, MAPPINGS[mapping][0]))


def transformers_builds(model_type: str, mapping: str):
    """(config, None) when transformers builds its own default config and model of this type on the
    meta device, else (None, why)."""
    import torch
    import transformers
    from transformers import CONFIG_MAPPING

    try:
        config = CONFIG_MAPPING[model_type]()
    except Exception as exc:  # noqa: BLE001
        return None, f"default config: {type(exc).__name__}: {' '.join(str(exc).split())[:160]}"
    auto = getattr(transformers, MAPPINGS[mapping][1])
    try:
        with torch.device("meta"):
            auto.from_config(config, dtype=torch.bfloat16)
    except Exception as exc:  # noqa: BLE001
        return None, f"{MAPPINGS[mapping][1]}.from_config: {type(exc).__name__}: {' '.join(str(exc).split())[:160]}"
    return config, None


def walk_one(model_type: str, mapping: str) -> dict:
    """One model type's outcome as a JSON-able dict."""
    import inspect

    from fitplan.errors import FitplanError
    from fitplan.model import build
    from fitplan.model.sources import resolve
    from fitplan.vocab import precision as P
    from fitplan.planning.estimate import Workload, estimate

    rec = {"mapping": mapping, "model_type": model_type}
    t0 = time.perf_counter()
    try:
        config, why = transformers_builds(model_type, mapping)
        if config is None:
            rec.update(outcome="excluded", reason=why)
            return rec
        with tempfile.TemporaryDirectory() as folder:
            config.save_pretrained(folder)
            src = resolve(folder)
            kwargs = {"model_id": model_type}
            if "auto_class" in inspect.signature(build.build_inventory).parameters:
                kwargs["auto_class"] = mapping
            inv = build.build_inventory(src.config, **kwargs)
        work = Workload(context=4096, batch=1)
        rec["total_bytes"] = {p: estimate(inv, P.get(p), work, "bfloat16").total_bytes for p in ("bf16", "nf4")}
        rec.update(outcome="planned", architecture=inv.architecture, parameters=inv.parameters,
                   auto_class=getattr(inv, "auto_class", "causal-lm"),
                   kv_elements_per_token=sum(k.elements_per_token for k in inv.kv_layers),
                   state_bytes_per_sequence=(inv.state_bytes_per_sequence(2)  # bf16
                                             if hasattr(inv, "state_bytes_per_sequence") else 0),
                   image_tokens_per_image=getattr(inv, "image_tokens_per_image", None),
                   notes=list(inv.notes))
    except FitplanError as exc:
        rec.update(outcome="refused", reason=str(exc))
    except _Timeout:
        rec.update(outcome="bug", reason="timeout")
    except Exception as exc:  # noqa: BLE001 - a bug in fitplan: report it, go on
        rec.update(outcome="bug", reason=f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}",
                   traceback=traceback.format_exc(limit=-4))
    finally:
        rec["seconds"] = round(time.perf_counter() - t0, 2)
    return rec


def _worker(jobs, results, timeout: int) -> None:
    import warnings

    warnings.simplefilter("ignore")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    signal.signal(signal.SIGALRM, _alarm)
    while True:
        job = jobs.get()
        if job is None:
            return
        signal.alarm(timeout)
        try:
            rec = walk_one(*job)
        except _Timeout:
            rec = {"mapping": job[1], "model_type": job[0], "outcome": "bug", "reason": "timeout"}
        finally:
            signal.alarm(0)
        results.put(rec)


def run(jobs_list: list[tuple[str, str]], n_jobs: int, timeout: int, out=None) -> list[dict]:
    ctx = mp.get_context("fork")
    jobs, results = ctx.Queue(), ctx.Queue()
    for j in jobs_list:
        jobs.put(j)
    procs = []
    for _ in range(n_jobs):
        jobs.put(None)
        p = ctx.Process(target=_worker, args=(jobs, results, timeout), daemon=True)
        p.start()
        procs.append(p)
    recs, seen = [], set()
    while len(recs) < len(jobs_list):
        try:
            rec = results.get(timeout=timeout + 60)
        except Exception:  # noqa: BLE001 - a worker died (segfault, OOM): the rest are reported missing
            if not any(p.is_alive() for p in procs):
                break
            continue
        recs.append(rec)
        seen.add((rec["model_type"], rec["mapping"]))
        line = f"{rec['mapping']:<19} {rec['model_type']:<28} {rec['outcome']:<9} {rec.get('seconds', '')}"
        if rec["outcome"] != "planned":
            line += f"  {rec.get('reason', '')[:160]}"
        print(line, flush=True)
        if out:
            out.write(json.dumps(rec) + "\n")
            out.flush()
    for mt, m in jobs_list:
        if (mt, m) not in seen:
            recs.append({"mapping": m, "model_type": mt, "outcome": "bug", "reason": "worker died"})
    for p in procs:
        p.join(timeout=5)
    return recs


def summary(recs: list[dict]) -> str:
    import transformers

    lines = [f"transformers {transformers.__version__}"]
    for mapping in MAPPINGS:
        mine = [r for r in recs if r["mapping"] == mapping]
        if not mine:
            continue
        c = Counter(r["outcome"] for r in mine)
        lines.append(f"{mapping}: {len(mine)} types: {c['planned']} planned, {c['refused']} refused, "
                     f"{c['excluded']} excluded (transformers cannot build its own default), {c['bug']} bugs")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mapping", default="all", choices=["all", *MAPPINGS])
    ap.add_argument("--jobs", type=int, default=max(1, min(4, os.cpu_count() or 1)))
    ap.add_argument("--only", default="", help="comma-separated model types")
    ap.add_argument("--timeout", type=int, default=300, help="seconds per model type")
    ap.add_argument("--json", help="write one JSON line per model type here")
    a = ap.parse_args(argv)
    mappings = list(MAPPINGS) if a.mapping == "all" else [a.mapping]
    only = {t for t in a.only.split(",") if t}
    jobs = [(mt, m) for m in mappings for mt in model_types(m) if not only or mt in only]
    t0 = time.perf_counter()
    with (open(a.json, "w") if a.json else open(os.devnull, "w")) as out:
        recs = run(jobs, a.jobs, a.timeout, out)
    print(summary(recs))
    print(f"{len(recs)} model types in {time.perf_counter() - t0:.0f} s")
    return 1 if any(r["outcome"] == "bug" for r in recs) else 0


if __name__ == "__main__":
    sys.exit(main())
