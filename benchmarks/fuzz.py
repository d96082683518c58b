"""Fuzz fitplan with bad input: every run must end in a plan (exit 0/1) or one error line (exit 2).

    python benchmarks/fuzz.py [--n 10000] [--seed 0] [--deadline 10] [--only TARGET] [--json OUT]

Generators (hypothesis strategies, shared with tests/test_fuzz.py) write hostile files and drive
`fitplan` in-process through click's CliRunner, and the Python API directly. `--n` inputs are
shared among the targets below by `TARGETS`; the `defaults` sweep comes on top: every causal-LM
model type of the installed transformers, from a config.json holding only its `model_type`.

- `config`: `fitplan check FOLDER --gpu ...` with a generated config.json (real catalogue configs
  with fields mutated, absurd sizes, other or unknown model types, `auto_map`, truncated or
  non-object JSON, random bytes) and sometimes a fuzzed `--gpu`/`--headroom` text;
- `api`: `fitplan.plan(FOLDER, ...)` with such a config and loosely typed keyword arguments;
- `profile-validate` / `profile-check`: `fitplan profile validate FILE` and
  `fitplan check --profile FILE --gpu ...` (plus fuzzed FITPLAN_* variables) with generated YAML:
  mutated valid profiles, wrong types, unknown keys, alias bombs, deep nesting, tags, non-UTF-8,
  truncation, random bytes, empty and oversized files;
- `hardware`: `fitplan check FOLDER --hardware FILE` with generated hardware YAML;
- `gguf` (only with `--only gguf`): `fitplan check FILE.gguf` / a folder of them, with mutated GGUF
  headers (values of every type where counts belong, huge claimed counts, deep nesting, bad tensor
  infos, truncation, flipped bytes, impossible split names; tests/fuzz_files.py);
- `cache` (only with `--only cache`): a real inventory cache entry damaged (fields edited, the
  envelope changed, bytes cut or flipped, deep JSON, a FIFO, a directory, links to /dev/zero, a
  sparse file past the cap, a forger's re-sealed digest) and read back: the inventory returned must
  be the true one (a re-sealed entry: only values of the right types and ranges get through).

The property (`Outcome.ok`): exit 0 or 1; or exit 2 with exactly one stderr line starting
`fitplan: error:`; from the API a `Plan` or a one-line `FitplanError`. Never a traceback, never
another exit code, never slower than the deadline. Peak RSS growth is reported across the run.
Exits 1 when any input breaks the property. Results for this machine: docs/robustness.md.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the harness is shared with tests/test_fuzz.py

import math  # noqa: E402
import shutil  # noqa: E402

from hypothesis import strategies as st  # noqa: E402

import fuzz_files as ff  # noqa: E402
from fuzzing import (TARGETS, Case, Outcome, Sandbox, _model_types, count_builds, default_config_case,  # noqa: E402
                     isolate_environment, message_class, rss_bytes, run_case, settle)


# -- the benchmark ----------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    from hypothesis import HealthCheck, Phase, given, seed, settings

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=10_000, help="inputs in all (default 10000)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--deadline", type=float, default=10.0, help="seconds; a slower input counts as a hang")
    ap.add_argument("--json", type=Path, default=None, help="also write the summary as JSON here")
    ap.add_argument("--only", choices=sorted([*TARGETS, *FILE_TARGETS, "defaults"]), action="append",
                    help="run only these targets (all n inputs); gguf and cache run only when named")
    args = ap.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="fitplan-fuzz-"))
    isolate_environment(work)
    box = Sandbox(work / "box")
    builds = count_builds()
    # Warm-up outside the measurement: torch/transformers imports and the planned-model inventory.
    warm = run_case(Case("hardware", (), ("check", "{M}", "--gpu=rtx4090")), box, deadline=math.inf)
    assert warm.ok, warm
    settle()
    builds.clear()
    rss0 = rss_bytes()
    t0 = time.perf_counter()

    stats: dict[str, Counter] = {}
    messages: Counter = Counter()
    failures: list[tuple[Outcome, Case]] = []
    slowest: list[tuple[float, str, Case]] = []
    jump = (0, None)
    done = 0

    def record(target: str, case: Case) -> None:
        nonlocal done, jump
        count = stats.setdefault(target, Counter())
        before, built = rss_bytes(), builds["builds"]
        out = run_case(case, box, deadline=args.deadline)
        grew = rss_bytes() - before
        count["builds"] += builds["builds"] - built
        if grew > jump[0]:
            jump = (grew, case)
        done += 1
        count["total"] += 1
        count[out.status] += 1
        if out.status == "rejected":
            messages[message_class(out.message)] += 1
        if not out.ok and len(failures) < 50:
            failures.append((out, case))
        slowest.append((out.seconds, target, case))
        slowest.sort(key=lambda s: -s[0])
        del slowest[5:]
        if done % 250 == 0:
            print(f"[{time.perf_counter() - t0:7.0f} s] {done} inputs, "
                  f"{sum(c['ok'] for c in stats.values())} ok, {sum(c['rejected'] for c in stats.values())} "
                  f"rejected, {len(failures)} failures, {builds['builds']} meta builds, "
                  f"rss +{(rss_bytes() - rss0) / 2**20:.0f} MiB", file=sys.stderr, flush=True)

    def runner(target: str, strategy: st.SearchStrategy, examples: int):
        @seed(args.seed)
        @settings(max_examples=examples, database=None, deadline=None, phases=[Phase.generate],
                  suppress_health_check=list(HealthCheck))
        @given(case=strategy)
        def run(case):
            record(target, case)

        return run

    if not args.only or "defaults" in args.only:
        # Every causal-LM architecture transformers ships, from its default config: a sweep, not random.
        for model_type in _model_types()[0]:
            record("defaults", default_config_case(model_type))
    if args.only and "cache" in args.only:
        _run_cache(args, stats, failures, record_seconds=slowest)
    chosen = {t: {**TARGETS, **FILE_TARGETS}[t] for t in (args.only or TARGETS) if t in TARGETS or t == "gguf"}
    weight = sum(share for share, _ in chosen.values()) + (FILE_TARGETS["cache"][0] if args.only and "cache" in args.only
                                                          else 0)
    for target, (share, strategy) in chosen.items():
        runner(target, strategy, max(1, round(args.n * share / weight)))()

    wall = time.perf_counter() - t0
    growth = rss_bytes() - rss0
    total = Counter()
    for c in stats.values():
        total.update(c)
    summary = {
        "inputs": total["total"], "ok": total["ok"], "rejected": total["rejected"],
        "tracebacks": total["traceback"], "hangs": total["hang"], "wrong_answers": total["wrong-answer"],
        "bad_exit": total["bad-exit"], "bad_stderr": total["bad-stderr"],
        "meta_builds": builds["builds"], "rss_growth_mib": round(growth / 2**20, 1),
        "largest_single_input_rss_jump_mib": round(jump[0] / 2**20, 1),
        "wall_s": round(wall, 1), "deadline_s": args.deadline, "seed": args.seed,
        "per_target": {t: dict(c) for t, c in stats.items()},
        "slowest": [{"seconds": round(s, 2), "target": t} for s, t, _ in slowest],
        "messages_distinct": len(messages),
        "messages_top20": messages.most_common(20),
        "messages_all": messages.most_common(),
    }
    _print_summary(summary, failures)
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    shutil.rmtree(work, ignore_errors=True)
    bad = total["traceback"] + total["hang"] + total["bad-exit"] + total["bad-stderr"] + total["wrong-answer"]
    return 1 if bad or growth > (1 << 30) else 0


FILE_TARGETS = {"gguf": (0.5, ff.gguf_cases()), "cache": (0.5, None)}


def _run_cache(args, stats: dict, failures: list, record_seconds: list) -> None:
    """Damage a real cache entry and read it back, `n * share` times: the inventory must be the true one."""
    from hypothesis import HealthCheck, Phase, given, seed, settings

    from fitplan.model import build, cache

    tiny = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 256, "max_position_embeddings": 512}
    true = cache.get_inventory(tiny, model_id="fuzz/tiny")
    path = next(cache._cache_dir().glob("*.json"))
    raw = path.read_bytes()
    original = build.build_inventory
    build.build_inventory = lambda *a, **k: true
    count = stats.setdefault("cache", Counter())
    named = [x for x in args.only if x != "defaults"]
    n = max(1, round(args.n / len(named)))  # `--n` shared evenly among the named targets

    @seed(args.seed)
    @settings(max_examples=n, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(damage=ff.entry_damage())
    def run(damage):
        ff.restore_entry(path, raw)
        ff.damage_entry(path, damage, huge=cache.MAX_ENTRY_BYTES + 1)
        t = time.perf_counter()
        try:
            got = cache.get_inventory(tiny, model_id="fuzz/tiny")
            good = ff.same_inventory(got, true) or (damage[0] == "resealed" and min(
                got.hidden_size, got.num_layers, got.vocab_size) >= 0)
            status = "ok" if good else "wrong-answer"
            msg = "" if good else f"a different inventory came back for {damage!r}"
        except Exception as exc:  # noqa: BLE001 - any exception is the bug looked for
            status, msg = "traceback", f"{type(exc).__name__}: {exc}"[:300]
        count["total"] += 1
        count[status] += 1
        record_seconds.append((time.perf_counter() - t, "cache", None))
        record_seconds.sort(key=lambda s: -s[0])
        del record_seconds[5:]
        if status != "ok" and len(failures) < 50:
            failures.append((Outcome(status, None, msg, 0.0), Case("cache", (), (repr(damage),))))

    try:
        run()
    finally:
        build.build_inventory = original
        ff.restore_entry(path, raw)


def _print_summary(s: dict, failures: list[tuple[Outcome, Case]]) -> None:
    p = print
    p(f"inputs            {s['inputs']}  (seed {s['seed']}, deadline {s['deadline_s']:g} s)")
    p(f"ok (exit 0/1)     {s['ok']}")
    p(f"rejected (exit 2) {s['rejected']}  (one 'fitplan: error:' line each)")
    p(f"tracebacks        {s['tracebacks']}")
    p(f"hangs             {s['hangs']}")
    p(f"wrong answers     {s['wrong_answers']}  (cache entries: an inventory other than the true one)")
    p(f"other bad exits   {s['bad_exit'] + s['bad_stderr']}")
    p(f"meta builds       {s['meta_builds']}  ({100 * s['meta_builds'] / max(s['inputs'], 1):.1f}% of inputs)")
    p(f"max RSS growth    {s['rss_growth_mib']} MiB  (largest single input: {s['largest_single_input_rss_jump_mib']} MiB)")
    p(f"wall time         {s['wall_s']} s")
    p("")
    p(f"{'target':18} {'total':>6} {'ok':>6} {'rejected':>9} {'failed':>7} {'meta builds':>12}")
    for t, c in s["per_target"].items():
        failed = c.get("total", 0) - c.get("ok", 0) - c.get("rejected", 0)
        p(f"{t:18} {c.get('total', 0):6} {c.get('ok', 0):6} {c.get('rejected', 0):9} {failed:7} "
          f"{c.get('builds', 0):12}")
    p("")
    p("slowest inputs: " + ", ".join(f"{x['seconds']} s ({x['target']})" for x in s["slowest"]))
    p("")
    p(f"distinct rejection messages (specifics blanked): {s['messages_distinct']}; top 20:")
    for msg, n in s["messages_top20"]:
        p(f"{n:6}  {msg}")
    for out, case in failures[:10]:
        p("")
        p(f"FAILED [{out.status}] {out.message}")
        p(f"  input: {case!r}"[:3000])
        if out.detail:
            p("  " + out.detail.strip().replace("\n", "\n  ")[-3000:])


if __name__ == "__main__":
    sys.exit(main())
