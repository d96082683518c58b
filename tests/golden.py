"""The `--json` plans the reshaping must leave byte-identical: 20 catalogue models, one command each.

`python tests/golden.py write` records them for the installed transformers (one folder per version,
`tests/data/golden/transformers-X.Y.Z/`); `tests/test_golden.py` replans each case and compares the
bytes. A change that moves a number on purpose re-records them in the same commit, saying why.
"""
from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).parent / "data" / "golden"

#: (name, arguments of `fitplan check`): dense, MoE, MLA, hybrid, sliding window, vision-language,
#: pre-quantized, absolute positions; one GPU, splits, offload, no fit; each preference.
CASES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("llama31-8b-4090", ("meta-llama/Llama-3.1-8B-Instruct", "--gpu", "rtx4090", "--context", "8192")),
    ("llama31-8b-3060-memory", ("meta-llama/Llama-3.1-8B", "--gpu", "rtx3060", "--prefer", "memory")),
    ("llama31-70b-2xa100", ("meta-llama/Llama-3.1-70B-Instruct", "--gpu", "2xa100-80gb", "--context", "4096")),
    ("llama31-70b-3060-nofit", ("meta-llama/Llama-3.1-70B-Instruct", "--gpu", "rtx3060")),
    ("llama2-13b-offload", ("meta-llama/Llama-2-13b-hf", "--gpu", "rtx3060", "--offload", "--min-precision", "bf16")),
    ("qwen3-8b-h100-batch", ("Qwen/Qwen3-8B", "--gpu", "h100", "--context", "16384", "--batch", "4")),
    ("qwen3-30b-a3b-4090", ("Qwen/Qwen3-30B-A3B", "--gpu", "rtx4090", "--context", "4096")),
    ("qwen25-7b-speed", ("Qwen/Qwen2.5-7B-Instruct", "--gpu", "l4", "--prefer", "speed")),
    ("qwen25-05b-cpu-headroom", ("Qwen/Qwen2.5-0.5B", "--gpu", "t4", "--headroom", "1.5GiB")),
    ("gemma2-9b-a100", ("google/gemma-2-9b", "--gpu", "a100-40gb", "--context", "8192")),
    ("gemma3-4b-images", ("google/gemma-3-4b-it", "--gpu", "rtx4090", "--images", "2")),
    ("gemma3-1b-t4", ("google/gemma-3-1b-it", "--gpu", "t4", "--context", "32768")),
    ("mixtral-2x3090", ("mistralai/Mixtral-8x7B-v0.1", "--gpu", "2xrtx3090", "--context", "8192")),
    ("mistral-7b-int8", ("mistralai/Mistral-7B-v0.1", "--gpu", "rtx4090", "--precision", "int8")),
    ("olmoe-a10", ("allenai/OLMoE-1B-7B-0924", "--gpu", "a10", "--context", "4096", "--batch", "2")),
    ("falcon-7b-4090", ("tiiuae/falcon-7b", "--gpu", "rtx4090")),
    ("phi3-mini-v100", ("microsoft/Phi-3-mini-4k-instruct", "--gpu", "v100-16gb", "--context", "4096", "--batch", "8")),
    ("gpt-oss-20b-h100", ("openai/gpt-oss-20b", "--gpu", "h100")),
    ("deepseek-v3-8xh100", ("deepseek-ai/DeepSeek-V3", "--gpu", "8xh100")),
    ("smollm2-17b-nf4dq", ("HuggingFaceTB/SmolLM2-1.7B", "--gpu", "rtx3060", "--precision", "nf4-dq", "--batch", "4")),
)


def folder() -> Path:
    from importlib import metadata

    return HERE / f"transformers-{metadata.version('transformers').split('+')[0]}"


#: The CPU RAM a `--gpu` plan is made with is this machine's: the recordings hold a fixed figure (the
#: development and CI machines' 24 GiB class), so they replay the same on any machine.
CPU_RAM_BYTES = 25_276_194_816


def check(args: tuple[str, ...]) -> tuple[int, str]:
    """(exit code, stdout) of `fitplan check ARGS --json`, run in this process as the CLI runs it, with the
    machine's RAM read as `CPU_RAM_BYTES` and no FITPLAN_* or allocator setting of the caller's."""
    import os
    from unittest import mock

    from click.testing import CliRunner

    from fitplan.cli import main
    from fitplan.hardware import probe

    env = {k: v for k, v in os.environ.items()
           if not k.startswith("FITPLAN_") or k == "FITPLAN_CACHE"}
    env = {k: v for k, v in env.items() if k not in ("PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF")}
    with mock.patch.object(probe, "cpu_ram_bytes", lambda: CPU_RAM_BYTES), mock.patch.dict(os.environ, env, clear=True):
        r = CliRunner().invoke(main, ["check", *args, "--json"], catch_exceptions=False)
    return r.exit_code, r.stdout


def write() -> None:
    out = folder()
    out.mkdir(parents=True, exist_ok=True)
    for name, args in CASES:
        code, text = check(args)
        (out / f"{name}.json").write_text(f"{code}\n{text}")
        print(name, code, flush=True)


if __name__ == "__main__":
    if sys.argv[1:] != ["write"]:
        sys.exit("usage: python tests/golden.py write")
    write()
