"""Re-plan stored headroom-0 rows with today's estimator, offline (issue 19, item 4).

    python benchmarks/replan.py benchmarks/results/headroom0-tf5.17.jsonl ...
    python benchmarks/replan.py --with-setup benchmarks/results/tight-h200-run3-tf5.17.jsonl ...

--with-setup: the rows were measured through a fitplan.load() that applies the plan's generation setup (a static
cache and a compiled decode for 16-bit weights); the re-plan sizes it in too. tight-h200-run3 and later are marked so
by their file name (`SETUP_FROM_RUN`).

For each row that ran, the model is built again on the meta device with the installed transformers
(only rows measured with that transformers major.minor are re-planned, since another version can
build another model, unless --any-version is given) and planned at the row's context, batch and precision for the allocator the row ran
with (`allocator_planned` in the row; rows from before the allocator was recorded ran with torch's
default segments, "caching"). Printed per row: the new total, the recorded NVML peak and the margin.
Rows that ran with the default allocator also get the expandable-segments plan against what any
allocator must hold, CUDA context + the allocator's allocated peak (a lower bound, not a measurement
of the expandable allocator).
"""
from __future__ import annotations

import json
import statistics
import sys

GiB = 1 << 30


def replan(rows: list[dict], any_version: bool = False, with_setup: bool = False):
    from fitplan.model import hf
    from fitplan.model.sources import resolve
    from fitplan.pipeline import get_inventory
    from fitplan.hardware.catalogue import hardware_from_gpu_flag
    from fitplan.planning import generation as G
    from fitplan.planning.estimate import Workload, sizes
    from fitplan.vocab.precision import get

    here = ".".join(hf.version().split(".")[:2])
    gpus = hardware_from_gpu_flag("h200", 0).gpus
    invs: dict = {}
    for r in rows:
        p = r.get("planned") or {}
        tf = ".".join(str(p.get("versions", {}).get("transformers", r.get("transformers_env", ""))).split(".")[:2])
        if not p.get("ran") or (tf != here and not any_version):
            continue
        if r["model"] not in invs:
            invs[r["model"]] = get_inventory(resolve(r["model"], offline=True).config, model_id=r["model"])
        inv, work, prec = invs[r["model"]], Workload(r["context"], r["batch"]), get(p["chosen"])
        ran_with = p.get("allocator_planned") or "caching"
        # with_setup: the rows generated with the setup the plan sizes in (a static cache and a compiled decode for
        # 16-bit weights on one GPU from transformers 5.17: fitplan.load() applies it since issue 20)
        gen = G.choose(inv, prec, work, gpus=gpus, placement="one-gpu", compute_dtype="bfloat16") \
            if r.get("with_setup", with_setup) else None
        est = {a: sizes(inv, prec, work, "bfloat16", allocator=a, generation=gen).estimate().total_bytes
               for a in ("expandable", "caching")}
        yield {"case": r["case"], "tf": tf, "precision": p["chosen"], "ran_with": ran_with,
               "plan": est[ran_with], "peak": p["peak_bytes"], "recorded_plan": p["predicted_total_bytes"],
               "expandable_plan": est["expandable"],
               "floor": p["context_bytes"] + p["max_allocated_bytes"]}


#: The tight-set runs from this one on went through a fitplan.load() that applies the plan's generation setup
#: (tight-h200-run3 and run4, 2026-12-05); run1 and run2 (2026-12-04) generated plainly.
SETUP_FROM_RUN = 3


def read_rows(files) -> list[dict]:
    """The rows of `files`, each marked `with_setup` when its run applied the generation setup."""
    import re

    rows = []
    for f in files:
        run = re.search(r"tight-h200-run(\d+)", str(f))
        for line in open(f):
            if line.strip():
                rows.append({**json.loads(line), **({"with_setup": int(run.group(1)) >= SETUP_FROM_RUN} if run else {})})
    return rows


def main(files: list[str]) -> None:
    any_version, with_setup = "--any-version" in files, "--with-setup" in files
    files = [f for f in files if f not in ("--any-version", "--with-setup")]
    out = list(replan(read_rows(files), any_version, with_setup))
    print("| case | tf | precision | allocator it ran with | plan then (GiB) | plan now (GiB) | NVML peak (GiB) "
          "| margin now | expandable plan (GiB) vs context + allocated peak (GiB) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for o in out:
        m = (o["plan"] - o["peak"]) / o["peak"]
        o["margin"] = m
        extra = "" if o["ran_with"] == "expandable" else (
            f"{o['expandable_plan'] / GiB:.2f} vs {o['floor'] / GiB:.2f} ({(o['expandable_plan'] - o['floor']) / o['floor']:+.1%})")
        print(f"| {o['case']} | {o['tf']} | {o['precision']} | {o['ran_with']} | {o['recorded_plan'] / GiB:.2f} "
              f"| {o['plan'] / GiB:.2f} | {o['peak'] / GiB:.2f} | {m:+.1%} | {extra} |")
    if out:
        ms = [o["margin"] for o in out]
        print(f"\n{len(out)} rows: margin now {min(ms):+.1%} to {max(ms):+.1%}, median {statistics.median(ms):+.1%}, "
              f"{sum(x < 0 for x in ms)} under the peak.")


if __name__ == "__main__":
    main(sys.argv[1:])
