"""The `fitplan` command as a real subprocess, for the tests that check exit codes and streams as users see
them (tests/test_cli.py, tests/test_engine_cli.py)."""
from __future__ import annotations

import os
import subprocess
import sys


def process_env(cache_dir) -> dict:
    """This environment with its own inventory cache, offline, and this checkout's fitplan first on the path."""
    return {**os.environ, "FITPLAN_CACHE": str(cache_dir), "HF_HUB_OFFLINE": "1",
            "PYTHONPATH": os.pathsep.join([os.path.dirname(os.path.dirname(__file__)), os.environ.get("PYTHONPATH", "")])}


def run(env, *args):
    """`python -m fitplan ARGS` under `env`: its exit code, stdout and stderr."""
    return subprocess.run([sys.executable, "-m", "fitplan", *args], env=env, capture_output=True, text=True,
                          timeout=300)
