"""Re-plan stored headroom-0 rows with today's estimator, offline (issue 19, item 4).

    python benchmarks/replan.py benchmarks/results/headroom0-tf5.17.jsonl ...

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


def replan(rows: list[dict], any_version: bool = False):
    from fitplan.model import hf
    from fitplan.model.sources import resolve
    from fitplan.pipeline import get_inventory
    from fitplan.planning.estimate import Workload, estimate
    from fitplan.vocab.precision import get

    here = ".".join(hf.version().split(".")[:2])
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
        est = {a: estimate(inv, prec, work, "bfloat16", allocator=a).total_bytes for a in ("expandable", "caching")}
        yield {"case": r["case"], "tf": tf, "precision": p["chosen"], "ran_with": ran_with,
               "plan": est[ran_with], "peak": p["peak_bytes"], "recorded_plan": p["predicted_total_bytes"],
               "expandable_plan": est["expandable"],
               "floor": p["context_bytes"] + p["max_allocated_bytes"]}


def main(files: list[str]) -> None:
    any_version = "--any-version" in files
    files = [f for f in files if f != "--any-version"]
    rows = [json.loads(line) for f in files for line in open(f) if line.strip()]
    out = list(replan(rows, any_version))
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
