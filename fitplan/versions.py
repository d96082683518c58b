"""Which library versions a plan was made with, and which ones fitplan is tested with.

`TESTED` is the one statement of the version matrix: `.ci/run` reads it to build its legs, the
docs quote it, and a plan made outside it carries a note. Versions are read from package
metadata, never by importing the libraries (a cached `fitplan check` imports neither torch nor
transformers).
"""
from __future__ import annotations

import sys
from importlib import metadata

#: Libraries whose version decides what an inventory or a load holds.
LIBRARIES = ("transformers", "accelerate", "bitsandbytes", "huggingface_hub", "torch")

#: The versions CI pins, oldest first: the declared floor (pyproject.toml's ranges start there; a test
#: checks it) and what GPU images ship today (`GPU_IMAGE`). Besides these, CI's newest leg installs the
#: newest release of each library inside the declared ranges, resolved by pip when CI runs (`newest`
#: below; no version of it is written in the repository) and printed in its header. torch is the
#: exception: CI can install only its CPU build 2.13; 2.11 (+cu130) is the GPU image's, run on the GPU
#: machine for docs/accuracy.md. See `ci_legs()` and docs/compatibility.md.
TESTED: dict[str, tuple[str, ...]] = {
    "transformers": ("5.0.0", "5.17.0"),
    "accelerate": ("1.2.0", "1.15.0"),
    "bitsandbytes": ("0.47.0", "0.50.2"),
    "huggingface_hub": ("1.25.0", "1.33.0"),
    "torch": ("2.11.0", "2.13.0"),
}

#: What GPU software images ship today (2026-11: transformers 5.17 with huggingface_hub 1.33, accelerate
#: 1.15 and bitsandbytes 0.50.2), run by CI as a leg of its own.
GPU_IMAGE = {"transformers": "5.17.0", "huggingface_hub": "1.33.0", "accelerate": "1.15.0", "bitsandbytes": "0.50.2"}

#: The versions the stored GPU measurements were taken with (benchmarks/results/acc*.jsonl: 148 H100 rows that
#: docs/accuracy.md summarises). CI replays them on a leg of their own at exactly these versions, running only
#: `REPLAY_TESTS`, the tests that re-score stored measurements and recordings: on another version a model can
#: build differently, and the document's summary is checked nowhere else.
MEASURED = {"transformers": "5.24.0", "huggingface_hub": "2.4.0", "accelerate": "1.15.0", "bitsandbytes": "0.50.2"}
REPLAY_TESTS = ("tests/test_accuracy_doc.py", "tests/test_golden.py")

#: The libraries CI's newest leg resolves to their newest release inside pyproject.toml's ranges when it
#: runs (torch is held at its CPU build, `TESTED["torch"][-1]`).
NEWEST = ("transformers", "accelerate", "huggingface_hub", "bitsandbytes")

#: The upper ends of pyproject.toml's declared ranges (`transformers>=5.0,<6`; tests/test_versions.py
#: checks they agree). Inside them CI tests the newest release at every run; beyond them nothing is.
DECLARED_BELOW = {"transformers": "6"}

#: Installed into a leg without their dependencies: both depend on torch, and pip must never pull a
#: (CUDA) torch into a leg; every leg shares the main venv's CPU torch.
NO_DEPS = ("accelerate", "bitsandbytes")

#: The serving engines fitplan plans for (not dependencies): the releases whose source the engine formulas mirror,
#: oldest first (fitplan/engines/, docs/engines.md). A plan follows the newest of them at or below the release the user
#: runs (the `engine_version` option; `engine_mirror`), the newest by default. The public startup logs they are checked
#: against (tests/data/engine_logs.yaml) come from a wider range, each case naming its own: vLLM 0.9 to 0.27.1 (CUDA
#: graphs enter vLLM's budget by default from 0.21, which these formulas do not mirror; the plans say so) and SGLang
#: 0.4.3 to main of 2026.
ENGINE_MIRRORS: dict[str, tuple[str, ...]] = {"vllm": ("0.11.0", "0.19.0"), "sglang": ("0.4.9",)}
#: The release a plan mirrors when the user names none: the newest mirrored.
ENGINE_VERSIONS = {name: mirrored[-1] for name, mirrored in ENGINE_MIRRORS.items()}


def release_key(release: str) -> tuple[int, ...]:
    """An engine release as fitplan compares them: `0.19`, `v0.19.0` and `0.19.0` are (0, 19, 0)."""
    key = parse(str(release).strip().lstrip("v"))
    return key + (0,) * (3 - len(key))


def engine_mirror(engine: str, runs: str | None) -> str:
    """The mirrored release a plan for `engine` follows when the user runs release `runs` (None: the newest
    mirrored): the newest mirrored at or below it. ValueError, worded for the user, when `runs` is no version or
    predates every mirrored release."""
    mirrored = ENGINE_MIRRORS[engine]
    if runs is None:
        return mirrored[-1]
    text = str(runs).strip().lstrip("v")
    if not text or not text[0].isdigit():
        raise ValueError(f"{runs!r} is not a release number (e.g. {mirrored[-1]})")
    below = [m for m in mirrored if release_key(m) <= release_key(text)]
    if not below:
        raise ValueError(f"{engine} {text} predates the oldest release fitplan mirrors ({mirrored[0]}; mirrored: "
                         f"{', '.join(mirrored)}): plan for {mirrored[0]} or later")
    return below[-1]


def ci_legs() -> list[dict[str, str]]:
    """CI's pinned legs: the declared floors (what CI's venv is installed with), then the GPU image's
    versions (an overlay over that venv; torch is shared)."""
    floor = {lib: vs[0] for lib, vs in TESTED.items() if lib != "torch"}
    return [floor, dict(GPU_IMAGE)]


def installed(name: str) -> str | None:
    try:
        return metadata.version(name).split("+")[0]
    except metadata.PackageNotFoundError:
        return None


def lib_versions() -> dict[str, str | None]:
    """{library: installed version or None}: what goes on the record of an inventory and a plan."""
    return {name: installed(name) for name in LIBRARIES}


def parse(v: str) -> tuple[int, ...]:
    """`5.17.0`, `2.11.0+cu130`, `5.25.0.dev0` -> (major, minor, patch): how fitplan compares versions."""
    out = []
    for part in v.split("+")[0].split(".")[:3]:
        digits = "".join(ch for ch in part if ch.isdigit())
        out.append(int(digits) if digits else 0)
    return tuple(out)


def untested_notes(versions: dict[str, str | None]) -> list[str]:
    """One note per library whose installed version lies outside what CI tests: below the floor, or beyond
    the declared range. Nothing for a newer release inside the range: CI's newest leg installs the newest
    release at every run, so such a version is the one CI tests (docs/compatibility.md says what that covers)."""
    out = []
    for lib, v in versions.items():
        tested = TESTED.get(lib)
        if not v or not tested:
            continue
        lo = tested[0]
        below = DECLARED_BELOW.get(lib)
        if parse(v) < parse(lo):
            out.append(f"{lib} {v} is older than fitplan supports (tested from {lo}); upgrade it: the plan may be wrong")
        elif below is not None and parse(v) >= parse(below):
            out.append(f"{lib} {v} is beyond the range fitplan declares (<{below}) and CI tests; the plan is checked for "
                       "silent gaps, but was never tested on this version")
    return out


def fitplan_version() -> str:
    """fitplan's own version, from its package metadata (pyproject.toml states it)."""
    return installed("fitplan") or "0+unknown"


def newest_requirements() -> tuple[list[str], list[str]]:
    """What the newest leg asks pip for: each library of `NEWEST` in its declared range (from the tested
    floor up to `DECLARED_BELOW`), no version picked: (with dependencies, without: `NO_DEPS`)."""
    reqs = [f"{lib}>={TESTED[lib][0]}" + (f",<{DECLARED_BELOW[lib]}" if lib in DECLARED_BELOW else "") for lib in NEWEST]
    return ([r for r, lib in zip(reqs, NEWEST) if lib not in NO_DEPS], [r for r, lib in zip(reqs, NEWEST) if lib in NO_DEPS])


def _main(argv: list[str]) -> int:
    """For .ci/run, which reads the matrix from here before fitplan is installed (this file imports
    nothing of fitplan's). `torch`: the torch requirement of CI's venv (the CPU build); `base`: the
    declared floors, which the venv is installed with (the floor leg is the venv alone); `newest`: the
    newest leg's overlay, `RANGES WITH DEPS|RANGES WITHOUT DEPS`, pip picking the newest release in each
    range; `legs`: one line per pinned overlay leg (the GPU image), `PINS WITH DEPS|PINS WITHOUT DEPS`;
    `header NAME REQ...` prints NAME and the installed versions in one line, and fails when one differs
    from a `LIB==VERSION` REQ (the leg would not test what it says) or a `LIB>=...` one (resolved) came
    out older than the newest version a pinned leg runs."""
    pins = lambda d: " ".join(f"{lib}=={v}" for lib, v in d.items())  # noqa: E731
    split = lambda d: (pins({k: v for k, v in d.items() if k not in NO_DEPS}) + "|"  # noqa: E731
                       + pins({k: v for k, v in d.items() if k in NO_DEPS}))
    if argv[:1] == ["torch"]:
        print(f"torch=={TESTED['torch'][-1]}")
    elif argv[:1] == ["base"]:
        print(pins(ci_legs()[0]))
    elif argv[:1] == ["newest"]:
        with_deps, no_deps = newest_requirements()
        print(" ".join(with_deps) + "|" + " ".join(no_deps))
    elif argv[:1] == ["legs"]:
        for leg in ci_legs()[1:]:
            print(split(leg))
    elif argv[:1] == ["replay"]:
        print(split(MEASURED))
    elif argv[:1] == ["replay-tests"]:
        print(" ".join(REPLAY_TESTS))
    elif argv[:1] == ["header"] and len(argv) >= 2:
        have = lib_versions()
        print(f"== {argv[1]}: " + ", ".join(f"{lib} {have[lib]}" for lib in LIBRARIES), flush=True)
        wrong = [req for req in argv[2:] if "==" in req and have.get(req.split("==")[0]) != req.split("==")[1]]
        if wrong:
            print(f"CI: this leg should run {' '.join(wrong)}, but other versions are installed", file=sys.stderr)
            return 1
        # a library asked for by range was resolved: it must be at least the newest version a pinned leg runs
        ranged = [req.split(">=")[0] for req in argv[2:] if ">=" in req]
        stale = [f"{lib} {have.get(lib)} (pinned legs run {TESTED[lib][-1]})" for lib in ranged
                 if have.get(lib) is None or parse(have[lib]) < parse(TESTED[lib][-1])]
        if stale:
            print(f"CI: the newest leg resolved older releases than a pinned leg runs: {', '.join(stale)}", file=sys.stderr)
            return 1
    else:
        print("usage: python fitplan/versions.py torch|base|newest|legs|replay|replay-tests|header NAME "
              "[LIB==VERSION | LIB>=RANGE ...]",
              file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
