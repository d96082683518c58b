"""Headroom 0 on the user's transformers (issue 9): the plan's own total is all the GPU has free.

One command on a GPU machine runs every case, for each transformers install named with --env:

    python benchmarks/headroom0.py run --out-dir benchmarks/results \\
        --env /tmp/site --env /tmp/site524:/tmp/site

Each --env is a PYTHONPATH for the measuring processes, so one command compares transformers
installs; without --env the current environment is used once. Results go to
`headroom0-tf<transformers major.minor>.jsonl`, one JSON line per case (appended).
`python benchmarks/headroom0.py report FILE...` prints the tables of docs/accuracy.md, and
`python benchmarks/headroom0.py gpuinfo` records NVML's v1 and v2 memory of the idle GPU.

On the lent device machine (no network; wheels carried) the whole run, as recorded in
docs/accuracy.md, is, from the repository root with this checkout's files in .whl/bench/,
bitsandbytes 0.50.2 and the fitplan wheel in .whl/ and transformers 5.24.0 in .whl524/:

    DEADLINE=99999 HARD_STOP=99999 bash .whl/bench/benchmarks/headroom0_device.sh all pytest

(DEADLINE and HARD_STOP are seconds from its start; the defaults, 450 and 570, fit a 10-minute
call and skip, as `"skipped": "deadline"` rows, the cases they leave no time for). It installs the wheels into /tmp/site (image's transformers 5.17) and /tmp/site524 (5.24), writes
gpuinfo, runs `pytest -m gpu`, then this script with both installs. Our runs split the 13 cases
over five such calls with a case list in place of `all` (a call may last 10 minutes).

Per case (model shape from fitplan's catalogue, random weights, context x batch, precision P):

1. A measuring process plans with headroom 0 for this GPU; P's planned total is T. It does this
   through NVML and the meta device only, so it holds no CUDA context yet.
2. A second process, the ballast, allocates GPU memory until NVML's free memory is T * 1.01.
3. The measuring process then calls `fitplan.load(path, context=, batch=, headroom=0,
   tokenizer=False)` and generates 16 tokens after a prompt of context - 16 tokens for each of
   `batch` sequences. It records the precision fitplan chose (P, or its reasons), the predicted
   total, the process's peak as NVML saw it (polled device use above the level before it started,
   and CUDA context + the allocator's reserved peak, whichever is larger) and whether it ran.
4. A fresh process loads the better precision that fitplan rejected for size (of those, the one
   with the smallest planned total: the likeliest to fit in fact) with that precision's own
   `plan.from_pretrained_kwargs()` into the same held free memory, and generates the same way.
   It should not run; if it does, the plan over-estimated and wasted a precision.

Checkpoints are built once per model (with the first --env) into --ckpt-dir and deleted after
that model's cases unless --keep-checkpoints.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.append(str(HERE.parent))  # fitplan from this checkout only when no fitplan is installed

GiB = 1 << 30
MiB = 1 << 20
NEW_TOKENS = 16
HOLD_FACTOR = 1.01

#: name, model, context, batch, precision P. 7-13B and small models, contexts up to 32k, batch up to
#: 4, sliding-window models (Mistral-7B-v0.1, Gemma-2) and an MoE (OLMoE), P a mix of bf16/int8/nf4.
CASES = [
    ("qwen7b-32k-nf4", "Qwen/Qwen2.5-7B-Instruct", 32768, 1, "nf4"),
    ("mistral7b-8kx2-nf4", "mistralai/Mistral-7B-v0.1", 8192, 2, "nf4"),
    ("mistral7b-32k-int8", "mistralai/Mistral-7B-v0.1", 32768, 1, "int8"),
    ("llama3.2-1b-8kx4-nf4", "meta-llama/Llama-3.2-1B", 8192, 4, "nf4"),
    ("llama2-13b-4k-nf4", "meta-llama/Llama-2-13b-hf", 4096, 1, "nf4"),
    ("llama2-13b-4kx2-bf16", "meta-llama/Llama-2-13b-hf", 4096, 2, "bf16"),
    ("gemma2-9b-8k-int8", "google/gemma-2-9b", 8192, 1, "int8"),
    ("olmoe-4kx4-bf16", "allenai/OLMoE-1B-7B-0924", 4096, 4, "bf16"),
    ("olmoe-2k-nf4", "allenai/OLMoE-1B-7B-0924", 2048, 1, "nf4"),
    ("llama3.1-8b-16kx2-bf16", "meta-llama/Llama-3.1-8B", 16384, 2, "bf16"),
    ("qwen1.5b-32kx4-nf4", "Qwen/Qwen2.5-1.5B", 32768, 4, "nf4"),
    ("gemma2-2b-8kx4-nf4", "google/gemma-2-2b", 8192, 4, "nf4"),
    ("phi3mini-4kx4-int8", "microsoft/Phi-3-mini-4k-instruct", 4096, 4, "int8"),
]
CASE_BY_NAME = {c[0]: c for c in CASES}
DRY = os.environ.get("FITPLAN_BENCH_DRY") == "1"  # CPU rehearsal: no CUDA, plans for --gpu h100


def log(*a) -> None:
    print(time.strftime("%H:%M:%S"), *a, file=sys.stderr, flush=True)


# ---- NVML --------------------------------------------------------------------------------------

def _nvml():
    import pynvml

    pynvml.nvmlInit()
    return pynvml, pynvml.nvmlDeviceGetHandleByIndex(0)


def nvml_free_used() -> tuple[int, int]:
    if DRY:
        return 0, 0
    nv, h = _nvml()
    m = nv.nvmlDeviceGetMemoryInfo(h)
    return int(m.free), int(m.used)


def nvml_process_bytes(pid: int) -> int | None:
    """NVML's per-process used GPU memory, or None where the driver does not say."""
    try:
        nv, h = _nvml()
        for p in nv.nvmlDeviceGetComputeRunningProcesses(h):
            if p.pid == pid and p.usedGpuMemory is not None:
                return int(p.usedGpuMemory)
    except Exception:  # noqa: BLE001 - a missing figure is recorded as None
        return None
    return None


class Poller:
    """Polls the device's NVML used memory in a thread; `peak` is the highest value seen."""

    def __init__(self, interval: float = 0.002):
        self.peak = 0
        self.interval = interval
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        if DRY:
            return
        nv, h = _nvml()
        while not self._stop.is_set():
            self.peak = max(self.peak, int(nv.nvmlDeviceGetMemoryInfo(h).used))
            time.sleep(self.interval)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()


# ---- gpuinfo -----------------------------------------------------------------------------------

def cmd_gpuinfo(args) -> None:
    """NVML v1/v2 memory of the idle GPU, then after a CUDA context and a cuBLAS product; torch's total."""
    import pynvml as nv

    nv.nvmlInit()
    h = nv.nvmlDeviceGetHandleByIndex(0)

    def snap() -> dict:
        v1 = nv.nvmlDeviceGetMemoryInfo(h)
        v2 = nv.nvmlDeviceGetMemoryInfo(h, version=nv.nvmlMemory_v2)
        return {"v1": {"total": v1.total, "free": v1.free, "used": v1.used},
                "v2": {"total": v2.total, "reserved": v2.reserved, "free": v2.free, "used": v2.used}}

    out = {"name": nv.nvmlDeviceGetName(h), "driver": nv.nvmlSystemGetDriverVersion(),
           "cuda_driver_version": nv.nvmlSystemGetCudaDriverVersion(), "idle": snap()}
    import torch

    out["torch"] = torch.__version__
    out["torch_total_memory"] = torch.cuda.get_device_properties(0).total_memory
    out["after_get_device_properties"] = snap()
    torch.zeros(1, device="cuda")
    torch.cuda.synchronize()
    out["after_zeros"] = snap()
    x = torch.randn(256, 256, device="cuda", dtype=torch.bfloat16)
    (x @ x).sum().item()
    out["after_cublas"] = snap()
    out["process_bytes"] = nvml_process_bytes(os.getpid())
    out["torch_mem_get_info"] = list(torch.cuda.mem_get_info())
    text = json.dumps(out, default=str)
    print(text, flush=True)
    if args.out:
        Path(args.out).write_text(text + "\n")


# ---- ballast server ----------------------------------------------------------------------------

def cmd_ballast(args) -> None:
    """Reads `hold BYTES` / `release` / `status` lines; answers one JSON line each.

    `hold` frees the old ballast and allocates until NVML's free memory is BYTES (never below it:
    each allocation is rounded down to 2 MiB, the driver's granularity)."""
    chunks: list = []
    if not DRY:
        import torch

        torch.zeros(1, device="cuda")
    while True:
        line = sys.stdin.readline()
        if not line:
            break
        cmd, *rest = line.split()
        if cmd in ("hold", "release"):
            chunks.clear()
            if not DRY:
                gc.collect()
                torch.cuda.empty_cache()
        if cmd == "hold" and not DRY:
            target = int(rest[0])
            for _ in range(12):
                free, _used = nvml_free_used()
                if free < target and chunks:  # the driver took more than asked: give the last one back
                    size = chunks.pop().numel()
                    torch.cuda.empty_cache()
                    short = -(-(target - free) // (2 * MiB)) * (2 * MiB)
                    if size - short >= 2 * MiB:
                        chunks.append(torch.empty(size - short, dtype=torch.uint8, device="cuda"))
                    continue
                extra = (free - target) // (2 * MiB) * (2 * MiB)
                if extra < 2 * MiB:
                    break
                chunks.append(torch.empty(extra, dtype=torch.uint8, device="cuda"))
        free, used = nvml_free_used()
        print(json.dumps({"free": free, "used": used, "chunks": len(chunks)}), flush=True)


class Ballast:
    def __init__(self, env: dict):
        self.p = subprocess.Popen([sys.executable, __file__, "ballast"], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True, env=env)

    def ask(self, line: str) -> dict:
        self.p.stdin.write(line + "\n")
        self.p.stdin.flush()
        return json.loads(self.p.stdout.readline())

    def close(self) -> None:
        self.p.stdin.close()
        self.p.wait(timeout=60)


# ---- checkpoints -------------------------------------------------------------------------------

def cmd_build(args) -> None:
    from accuracy import make_checkpoint

    # accuracy.py puts the checkout first on sys.path; keep an installed fitplan first
    root = str(HERE.parent)
    sys.path[:] = [p for p in sys.path if p != root] + [root]

    t0 = time.perf_counter()
    path = make_checkpoint(args.model, Path(args.ckpt_dir)) if not DRY else args.model
    print("RESULT " + json.dumps({"path": str(path), "build_s": round(time.perf_counter() - t0, 1)}), flush=True)


# ---- the measuring process ---------------------------------------------------------------------

def _is_oom(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


def _versions() -> dict:
    from fitplan.versions import lib_versions

    return lib_versions()


def _decisions(plan) -> list[dict]:
    return [{"precision": d.precision, "fits": d.fits, "total_bytes": d.estimate.total_bytes,
             "reason": d.reason} for d in plan.choice.decisions]


def _better(plan) -> str | None:
    """Among the precisions above the chosen one that were rejected for size, the one with the
    smallest planned total (the likeliest to fit in fact); None when none was rejected for size."""
    from fitplan.vocab.precision import ALL

    order = [p.name for p in ALL]
    cands = [d for d in plan.choice.decisions if not d.fits and "more than" in d.reason
             and order.index(d.precision) < order.index(plan.precision)]
    if not cands:
        return None
    return min(cands, key=lambda d: (d.estimate.total_bytes, order.index(d.precision))).precision


def _plan_here(path: str, context: int, batch: int, precision: str | None = None):
    import fitplan

    kw = {"gpu": "h100"} if DRY else {}
    return fitplan.plan(path, context=context, batch=batch, headroom=0, precision=precision, **kw)


def _dry_hw(free: int):
    import dataclasses

    from fitplan.hardware.resolve import resolve_hardware

    hw = resolve_hardware("h100", None)
    return dataclasses.replace(hw, gpus=(dataclasses.replace(hw.gpus[0], free_bytes=free),))


def _handshake(need: int) -> dict:
    """Tell the parent the bytes to hold free; wait until it says the ballast is in place."""
    print("NEED " + json.dumps({"need": need}), flush=True)
    return json.loads(sys.stdin.readline())


def _generate(model, batch: int, context: int, vocab: int) -> float:
    import torch

    t0 = time.perf_counter()
    if DRY:
        return 0.0
    ids = torch.randint(10, max(11, min(vocab, 30000)), (batch, context - NEW_TOKENS), device="cuda")
    with torch.inference_mode():
        model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW_TOKENS,
                       min_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=0)
    torch.cuda.synchronize()
    return time.perf_counter() - t0


def _peaks(base_used: int, poller: Poller) -> dict:
    """The process's peak: NVML-polled device use above the level before the process touched the
    GPU, and the CUDA context (NVML's per-process figure less the allocator's reserve) + the
    allocator's reserved peak. The larger is `peak_bytes`."""
    if DRY:
        return {"peak_bytes": 0}
    import torch

    free, used = nvml_free_used()
    reserved_now = torch.cuda.memory_reserved()
    proc = nvml_process_bytes(os.getpid())
    context = (proc if proc is not None else used - base_used) - reserved_now
    out = {"poll_peak_bytes": max(poller.peak - base_used, 0),
           "max_reserved_bytes": torch.cuda.max_memory_reserved(),
           "max_allocated_bytes": torch.cuda.max_memory_allocated(),
           "process_bytes_end": proc, "device_used_end_above_base": used - base_used,
           "context_bytes": context}
    out["reserved_plus_context_bytes"] = out["max_reserved_bytes"] + context
    out["peak_bytes"] = max(out["poll_peak_bytes"], out["reserved_plus_context_bytes"])
    return out


def cmd_child(args) -> None:
    """One measuring process: `--role planned` (fitplan.load) or `--role better` (its kwargs)."""
    import fitplan

    res: dict = {"role": args.role, "versions": _versions(), "fitplan_file": fitplan.__file__}
    t0 = time.perf_counter()
    plan0 = _plan_here(args.path, args.context, args.batch)  # all precisions at headroom 0
    res["plan_s"] = round(time.perf_counter() - t0, 2)
    res["estimates"] = _decisions(plan0)
    if args.role == "warm":  # only fills the inventory cache (no CUDA), before the cases
        print("RESULT " + json.dumps(res), flush=True)
        return
    want = args.precision
    est = {d.precision: d.estimate.total_bytes for d in plan0.choice.decisions}
    if want not in est:
        res["error"] = f"no estimate for {want}"
        print("RESULT " + json.dumps(res), flush=True)
        return
    need = int(est[want] * HOLD_FACTOR) if args.role == "planned" else 0
    res["hold"] = _handshake(need)
    import torch

    res["cuda_initialized_before_load"] = bool(torch.cuda.is_initialized())
    free0, base_used = nvml_free_used()
    res["nvml_free_before_load"] = free0
    model = None
    stage = "load"
    with Poller() as poller:
        try:
            t1 = time.perf_counter()
            if args.role == "planned":
                if not DRY:
                    model = fitplan.load(args.path, context=args.context, batch=args.batch, headroom=0, tokenizer=False)
                    plan = model.fitplan.plan
                else:  # rehearsal: the catalogue's H100 with the held free memory
                    plan = fitplan.plan(args.path, context=args.context, batch=args.batch, headroom=0,
                                        hardware=_dry_hw(res["hold"]["target"]))
                res["chosen"] = plan.precision
                res["predicted_total_bytes"] = plan.decision.placement[0].total_bytes
                res["predicted"] = plan.decision.estimate.to_dict()
                res["reason"] = plan.decision.reason
                res["decisions"] = _decisions(plan)
                res["better"] = _better(plan)
                res["notes"] = plan.notes
                res["budget_bytes"] = plan.decision.placement[0].budget_bytes
                if model is not None:
                    res["measured_weights"] = model.fitplan.measured_weights
            else:
                import dataclasses

                from transformers import AutoModelForCausalLM

                from fitplan.hardware.probe import probe

                hw = probe() if not DRY else None
                if hw is not None:  # plan the rejected precision as if the GPU were empty: its own kwargs
                    g = hw.gpus[0]
                    hw = dataclasses.replace(hw, gpus=(dataclasses.replace(g, free_bytes=g.total_bytes),))
                bp = fitplan.plan(args.path, context=args.context, batch=args.batch, headroom=0,
                                  precision=want, **({"hardware": hw} if hw else {"gpu": "h100"}))
                res["chosen"] = want
                res["predicted_total_bytes"] = bp.decision.placement[0].total_bytes
                res["predicted"] = bp.decision.estimate.to_dict()
                if not DRY:
                    model = AutoModelForCausalLM.from_pretrained(args.path, **bp.from_pretrained_kwargs())
                    model.eval()
            res["load_s"] = round(time.perf_counter() - t1, 2)
            stage = "generate"
            vocab = plan0.inventory.vocab_size
            res["generate_s"] = round(_generate(model, args.batch, args.context, vocab), 2)
            res["ran"] = True
        except fitplan.DoesNotFitError as exc:
            res.update(ran=False, no_plan=str(exc)[:400])
        except Exception as exc:  # noqa: BLE001 - OOM is an outcome; anything else is recorded too
            res.update(ran=False, oom=_is_oom(exc), stage=stage, error=f"{type(exc).__name__}: {str(exc)[:400]}")
    res.update(_peaks(base_used, poller))
    print("RESULT " + json.dumps(res, default=str), flush=True)


# ---- the orchestrator --------------------------------------------------------------------------

def _run_child(cmd: list[str], env: dict, timeout: float, on_need=None) -> dict:
    """Run a child; answer its NEED line with on_need(bytes); return its RESULT (or an error)."""
    import queue

    p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    lines: queue.Queue = queue.Queue()

    def pump() -> None:
        for line in p.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    end = time.monotonic() + timeout
    result = None
    try:
        while True:
            left = end - time.monotonic()
            if left <= 0:
                return {"error": f"timed out after {timeout:.0f}s", "ran": False, **({"partial": result} if result else {})}
            try:
                line = lines.get(timeout=min(left, 5))
            except queue.Empty:
                continue
            if line is None:
                break
            if line.startswith("NEED "):
                reply = on_need(json.loads(line[5:])["need"]) if on_need else {}
                p.stdin.write(json.dumps(reply) + "\n")
                p.stdin.flush()
            elif line.startswith("RESULT "):
                result = json.loads(line[7:])
            else:
                sys.stderr.write(line)
        p.wait(timeout=max(end - time.monotonic(), 1))
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    if result is None:
        return {"error": f"exit status {p.returncode}, no result", "ran": False}
    return result


def _envs(args) -> list[dict]:
    out = []
    for pp in args.env or [None]:
        env = dict(os.environ, PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
        if pp is not None:
            env["PYTHONPATH"] = pp
        out.append(env)
    return out


def _tf_version(env: dict) -> str:
    code = "from importlib.metadata import version; print(version('transformers'))"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          check=True).stdout.strip()


def _wait_free(ballast: Ballast, target: int, tries: int = 20) -> dict:
    """After a child exits its memory returns to the driver; wait until free is back at the hold."""
    st = ballast.ask("status")
    for _ in range(tries):
        if st["free"] >= target - 4 * MiB:
            break
        time.sleep(0.5)
        st = ballast.ask("status")
    return st


def run_case(case, path: str, env: dict, ballast: Ballast, child_timeout) -> dict:
    name, model_id, context, batch, precision = case
    me = [sys.executable, __file__, "child", "--path", path, "--context", str(context), "--batch", str(batch)]
    row = {"case": name, "model": model_id, "context": context, "batch": batch, "precision_asked": precision}
    held: dict = {}

    def hold(need: int) -> dict:
        held["target"] = need
        held.update(ballast.ask(f"hold {need}"))
        return dict(held)

    t0 = time.perf_counter()
    planned = _run_child(me + ["--role", "planned", "--precision", precision], env, child_timeout(), hold)
    row["planned"] = planned
    row["hold_free_bytes"] = held.get("free")
    row["hold_target_bytes"] = held.get("target")
    better = planned.get("better")
    if better and "target" in held:
        st = _wait_free(ballast, held["target"])
        row["better"] = _run_child(me + ["--role", "better", "--precision", better], env, child_timeout(),
                                   lambda need: st)
        row["better"]["tried"] = better
    row["case_s"] = round(time.perf_counter() - t0, 1)
    ballast.ask("release")
    return row


def cmd_run(args) -> None:
    t_start = time.monotonic()
    names = [c[0] for c in CASES] if args.cases == "all" else args.cases.split(",")
    cases = [CASE_BY_NAME[n] for n in names]
    envs = _envs(args)
    labels = [_tf_version(e) for e in envs]
    log("transformers per env:", labels)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {lab: open(out_dir / f"headroom0-tf{'.'.join(lab.split('.')[:2])}.jsonl", "a") for lab in labels}
    for lab, env in zip(labels, envs):  # a separate inventory cache per install
        env["XDG_CACHE_HOME"] = f"/tmp/fitplan-bench-cache-{lab}"
    ballast = Ballast(envs[0])
    ballast.ask("release")

    def child_timeout() -> float:  # no child runs past the hard stop
        return max(min(args.child_timeout, args.hard_stop_s - (time.monotonic() - t_start)), 1)

    by_model: dict[str, list] = {}
    for c in cases:
        by_model.setdefault(c[1], []).append(c)
    try:
        for model_id, mcases in by_model.items():
            left = args.deadline_s - (time.monotonic() - t_start)
            if left < args.min_case_s * len(envs):
                log(f"skipping {model_id}: {left:.0f}s left before the deadline")
                for c in mcases:
                    for lab in labels:
                        files[lab].write(json.dumps({"case": c[0], "model": model_id, "skipped": "deadline"}) + "\n")
                continue
            log("building", model_id)
            built = _run_child([sys.executable, __file__, "build", "--model", model_id, "--ckpt-dir", args.ckpt_dir],
                               envs[0], child_timeout())
            log("built", built)
            if "path" not in built:
                continue
            # inventories for every install at once (CPU and meta device only), so cases start sooner
            warm = [subprocess.Popen([sys.executable, __file__, "child", "--role", "warm", "--path", built["path"],
                                      "--context", "512", "--batch", "1", "--precision", "bf16"], env=env,
                                     stdout=subprocess.DEVNULL) for env in envs]
            for w in warm:
                w.wait(timeout=child_timeout())
            for c in mcases:
                for lab, env in zip(labels, envs):
                    left = args.deadline_s - (time.monotonic() - t_start)
                    if left < args.min_case_s:
                        row = {"case": c[0], "model": model_id, "skipped": "deadline"}
                    else:
                        row = run_case(c, built["path"], env, ballast, child_timeout)
                        row["checkpoint_build_s"] = built.get("build_s")
                    row["transformers_env"] = lab
                    files[lab].write(json.dumps(row, default=str) + "\n")
                    files[lab].flush()
                    log(summary_line(row))
            if not args.keep_checkpoints and not DRY:
                shutil.rmtree(built["path"], ignore_errors=True)
    finally:
        ballast.close()
        for f in files.values():
            f.close()
    log(f"done in {time.monotonic() - t_start:.0f}s")


# ---- report ------------------------------------------------------------------------------------

def _g(b) -> str:
    return "-" if b is None else f"{b / GiB:.2f}"


def summary_line(r: dict) -> str:
    if "skipped" in r:
        return f"{r['case']}: skipped ({r['skipped']})"
    p, b = r.get("planned", {}), r.get("better")
    s = (f"{r['case']} [tf {r.get('transformers_env')}]: chose {p.get('chosen')} pred {_g(p.get('predicted_total_bytes'))} "
         f"peak {_g(p.get('peak_bytes'))} ran={p.get('ran')} {p.get('error', '')}")
    if b:
        s += f" | better {b.get('tried')} ran={b.get('ran')} peak {_g(b.get('peak_bytes'))} {b.get('error', '')[:80]}"
    return s + f" ({r.get('case_s')}s)"


def _margin(run: dict) -> str:
    pred, peak = run.get("predicted_total_bytes"), run.get("peak_bytes")
    return f"{(pred - peak) / peak * 100:+.1f}%" if run.get("ran") and pred and peak else "-"


def _outcome(run: dict) -> str:
    if run.get("ran"):
        return "yes"
    if run.get("oom"):
        return f"no, OOM at {run.get('stage')}"
    return f"no: {run.get('error') or run.get('no_plan')}"


def report_rows(rows: list[dict]) -> list[str]:
    """The docs table: one row per case; margin = (predicted - peak) / peak."""
    out = ["| case | context x batch | precision chosen | predicted total (GiB) | measured peak (GiB) | margin "
           "| ran? | next-better precision tried (its planned total) | did it run? (peak GiB) |",
           "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "skipped" in r:
            out.append(f"| {r['case']} | | skipped: {r['skipped']} | | | | | | |")
            continue
        p, b = r["planned"], r.get("better")
        chosen = p.get("chosen") or "none"
        if chosen != r["precision_asked"]:
            chosen += f" (case: {r['precision_asked']})"
        ran = "yes" if p.get("ran") else f"**{_outcome(p)}**"
        if b:
            btxt = f"{b['tried']} ({_g(b.get('predicted_total_bytes'))})"
            bran = (f"**yes ({_g(b.get('peak_bytes'))}, margin {_margin(b)})**" if b.get("ran") else _outcome(b))
        else:
            btxt, bran = "none rejected for size", "-"
        out.append(f"| {r['case']} | {r['context']}x{r['batch']} | {chosen} | {_g(p.get('predicted_total_bytes'))} "
                   f"| {_g(p.get('peak_bytes'))} | {_margin(p)} | {ran} | {btxt} | {bran} |")
    done = [r for r in rows if "planned" in r]
    ok = [r for r in done if r["planned"].get("ran")]
    m = [(r["planned"]["predicted_total_bytes"] - r["planned"]["peak_bytes"]) / r["planned"]["peak_bytes"] for r in ok]
    tried = [r for r in done if r.get("better")]
    wasted = [r["case"] for r in tried if r["better"].get("ran")]
    out.append("")
    out.append(f"{len(done)} cases: {len(ok)} ran at headroom 0, {len(done) - len(ok)} did not; "
               f"{sum(x < 0 for x in m)} went under the plan; margin {min(m) * 100:+.1f}% to {max(m) * 100:+.1f}%, "
               f"{sum(x > 0.10 for x in m)} above +10%. Next-better precision tried in {len(tried)} cases, "
               f"ran in {len(wasted)}{': ' + ', '.join(wasted) if wasted else ''}.")
    return out


def cmd_report(args) -> None:
    for f in args.results:
        rows = [json.loads(line) for line in open(f) if line.strip()]
        print(f"\n{f} (transformers {rows[0].get('transformers_env')})\n")
        print("\n".join(report_rows(rows)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--cases", default="all", help="comma-separated case names, or 'all': " + ",".join(CASE_BY_NAME))
    r.add_argument("--env", action="append", help="PYTHONPATH for the measuring processes (repeat to compare installs)")
    r.add_argument("--out-dir", default="benchmarks/results")
    r.add_argument("--ckpt-dir", default="/tmp/fitplan-ckpt")
    r.add_argument("--keep-checkpoints", action="store_true")
    r.add_argument("--deadline-s", type=float, default=1e9, help="start no case after this many seconds")
    r.add_argument("--min-case-s", type=float, default=60, help="time a case needs at least (deadline check)")
    r.add_argument("--child-timeout", type=float, default=240)
    r.add_argument("--hard-stop-s", type=float, default=1e9, help="kill any child still running after this many seconds")
    c = sub.add_parser("child")
    c.add_argument("--role", choices=("planned", "better", "warm"), required=True)
    c.add_argument("--path", required=True)
    c.add_argument("--context", type=int, required=True)
    c.add_argument("--batch", type=int, required=True)
    c.add_argument("--precision", required=True)
    b = sub.add_parser("build")
    b.add_argument("--model", required=True)
    b.add_argument("--ckpt-dir", required=True)
    sub.add_parser("ballast")
    g = sub.add_parser("gpuinfo")
    g.add_argument("--out")
    rp = sub.add_parser("report")
    rp.add_argument("results", nargs="+")
    args = ap.parse_args()
    {"run": cmd_run, "child": cmd_child, "build": cmd_build, "ballast": cmd_ballast, "gpuinfo": cmd_gpuinfo,
     "report": cmd_report}[args.cmd](args)


if __name__ == "__main__":
    main()
