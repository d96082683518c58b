"""What the GPU benchmarks that run each case in its own process share: the GPU memory NVML sees in use (which
counts the CUDA context and what the caching allocator does not), and running one case as a child whose last
`RESULT {json}` line becomes a row appended to a JSON-lines file (a failure or a timeout is a row too)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time


def nvml_used() -> int:
    """Bytes in use on the first visible GPU, as NVML counts them."""
    import pynvml

    pynvml.nvmlInit()
    h = pynvml.nvmlDeviceGetHandleByIndex(int(os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0] or 0))
    return int(pynvml.nvmlDeviceGetMemoryInfo(h).used)


def run_child(argv: list[str], row: dict, *, timeout: float, out: str, env: dict | None = None) -> dict:
    """Run `python ARGV` (a benchmark's `child` command), and append its result to `out`: the child's last
    `RESULT` line, else `row` (what names the case) with `ran: False` and why; `wall_s` added either way."""
    t0 = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=timeout, env=env)
        lines = [line[7:] for line in done.stdout.splitlines() if line.startswith("RESULT ")]
        result = json.loads(lines[-1]) if lines else {**row, "ran": False,
                                                      "error": (done.stderr or done.stdout)[-600:]}
    except subprocess.TimeoutExpired:
        result = {**row, "ran": False, "error": f"timeout after {timeout}s"}
    result["wall_s"] = round(time.perf_counter() - t0, 1)
    with open(out, "a") as f:
        f.write(json.dumps(result, default=str) + "\n")
    return result
