"""Declared = tested: pyproject.toml's dependency floors are `fitplan.versions.TESTED`'s, its upper bounds
`DECLARED_BELOW`'s, and CI's pinned legs (.ci/run) are the ones `TESTED` states, read from it rather than
written twice; the newest leg resolves its versions when CI runs, and no version of it is written down."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from fitplan import versions
from fitplan.versions import DECLARED_BELOW, GPU_IMAGE, NEWEST, TESTED, ci_legs, untested_notes

ROOT = Path(__file__).resolve().parents[1]
_CI = (ROOT / ".ci" / "run").read_text()
_HELPER = re.search(r'^VERSIONS="([^"]+)"', _CI, re.M)
CI = _CI.replace("$VERSIONS", _HELPER.group(1)) if _HELPER else _CI


def _declared() -> dict[str, Requirement]:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return {canonicalize_name(r.name): r for r in map(Requirement, deps)}


@pytest.mark.parametrize("lib", sorted(TESTED))
def test_pyproject_floor_is_the_tested_floor(lib):
    req = _declared()[canonicalize_name(lib)]
    floors = [s.version for s in req.specifier if s.operator == ">="]
    assert len(floors) == 1, f"{lib}: pyproject.toml must state one '>=' floor, has {req}"
    assert Version(floors[0]) == Version(TESTED[lib][0]), (
        f"pyproject.toml says {req}, fitplan/versions.py TESTED starts {lib} at {TESTED[lib][0]}")
    assert all(Version(v) in req.specifier for v in TESTED[lib]), f"{req} excludes a version CI tests"


def test_pyproject_upper_bounds_are_the_declared_ones():
    for lib, req in _declared().items():
        caps = [s.version for s in req.specifier if s.operator == "<"]
        assert caps == ([DECLARED_BELOW[lib]] if lib in DECLARED_BELOW else []), f"{req} vs DECLARED_BELOW"


def test_every_tested_version_is_one_a_leg_installs():
    """TESTED names no version a pinned leg does not install, and the pinned legs none TESTED does not name.
    torch is the exception, said in TESTED: CI has the CPU build of the newest, the GPU image 2.11."""
    for lib, tested in TESTED.items():
        installed = {leg[lib] for leg in ci_legs() if lib in leg}
        if lib == "torch":
            assert installed == set()
            continue
        assert installed == set(tested), lib
    assert ci_legs()[0] == {lib: vs[0] for lib, vs in TESTED.items() if lib != "torch"}  # the declared floors
    assert GPU_IMAGE in ci_legs()
    assert all(list(vs) == sorted(vs, key=Version) for vs in TESTED.values()), "TESTED lists versions oldest first"
    assert set(NEWEST) == set(TESTED) - {"torch"}  # the newest leg resolves every library a pinned leg pins


def test_ci_reads_its_legs_from_tested():
    for use in ("python3 fitplan/versions.py torch", "python3 fitplan/versions.py base",
                "python3 fitplan/versions.py newest", "python3 fitplan/versions.py legs",
                "python fitplan/versions.py header"):
        assert use in CI, f".ci/run does not use '{use}'"
    pinned = re.findall(r"\b(?:transformers|accelerate|bitsandbytes|huggingface_hub|torch)\s*[=<>]=?\s*\d", CI)
    assert not pinned, f".ci/run pins versions of its own ({pinned}); they belong in TESTED"
    assert "--no-deps" in CI and set(versions.NO_DEPS) == {"accelerate", "bitsandbytes"}


def test_ci_helper_lines(capsys):
    assert versions._main(["base"]) == 0  # the venv: the declared floors, the floor leg
    assert sorted(capsys.readouterr().out.split()) == sorted(f"{lib}=={v}" for lib, v in ci_legs()[0].items())
    assert versions._main(["legs"]) == 0  # the pinned overlays beyond the floor
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(ci_legs()) - 1
    for line, leg in zip(lines, ci_legs()[1:]):
        with_deps, no_deps = (part.split() for part in line.split("|"))
        assert sorted(with_deps + no_deps) == sorted(f"{lib}=={v}" for lib, v in leg.items())
        assert all(req.split("==")[0] in versions.NO_DEPS for req in no_deps)
        assert not any(req.split("==")[0] in versions.NO_DEPS for req in with_deps)
    assert versions._main(["header", "here", "transformers==0.0.1"]) == 1  # a leg not running what it says fails
    assert "should run transformers==0.0.1" in capsys.readouterr().err


def test_the_newest_leg_asks_for_the_declared_ranges_and_refuses_an_older_resolution(capsys):
    assert versions._main(["newest"]) == 0
    with_deps, no_deps = (part.split() for part in capsys.readouterr().out.strip().split("|"))
    reqs = {Requirement(r).name: Requirement(r) for r in with_deps + no_deps}
    assert set(reqs) == set(NEWEST) and {Requirement(r).name for r in no_deps} == set(versions.NO_DEPS)
    for lib, req in reqs.items():  # no version picked: the declared range, pip picks the newest in it
        declared = _declared()[canonicalize_name(lib)]
        assert req.specifier == declared.specifier, (req, declared)
    assert versions._main(["torch"]) == 0
    assert capsys.readouterr().out.strip() == f"torch=={TESTED['torch'][-1]}"
    have = versions.installed("transformers")
    ok = Version(have) >= Version(TESTED["transformers"][-1])
    assert versions._main(["header", "newest", "transformers>=5.0.0,<6"]) == (0 if ok else 1)
    out = capsys.readouterr()
    assert out.out.startswith(f"== newest: transformers {have}, ")
    if not ok:
        assert "resolved older releases than a pinned leg runs" in out.err


def test_versions_outside_what_ci_tests_get_a_note_and_newer_releases_in_the_range_none():
    lo = TESTED["transformers"][0]
    assert untested_notes({"transformers": lo, "bitsandbytes": TESTED["bitsandbytes"][-1]}) == []
    older = untested_notes({"transformers": "4.57.6"})
    assert len(older) == 1 and older[0].startswith(f"transformers 4.57.6 is older than fitplan supports (tested from {lo})")
    # newer than every pinned leg, inside the declared range: what CI's newest leg installs at every run
    assert untested_notes({"transformers": "5.99.0", "accelerate": "9.0.0", "huggingface_hub": "3.1.0"}) == []
    beyond = untested_notes({"transformers": f"{DECLARED_BELOW['transformers']}.0.0"})
    assert len(beyond) == 1 and "beyond the range fitplan declares (<6)" in beyond[0]


@pytest.mark.parametrize("engine, runs, mirrored", [
    ("vllm", None, "0.19.0"), ("vllm", "0.19", "0.19.0"), ("vllm", "0.19.1", "0.19.0"), ("vllm", "v0.27.1", "0.19.0"),
    ("vllm", "0.18.1", "0.11.0"), ("vllm", "0.11", "0.11.0"), ("sglang", "0.5.2", "0.4.9"), ("sglang", None, "0.4.9"),
])
def test_an_engine_release_maps_to_the_newest_mirrored_at_or_below_it(engine, runs, mirrored):
    assert versions.engine_mirror(engine, runs) == mirrored
    assert versions.ENGINE_VERSIONS[engine] == versions.ENGINE_MIRRORS[engine][-1]


@pytest.mark.parametrize("runs, words", [("0.10.2", "predates the oldest release fitplan mirrors (0.11.0"),
                                         ("latest", "is not a release number"), ("", "is not a release number")])
def test_an_engine_release_before_every_mirror_or_no_release_is_refused(runs, words):
    with pytest.raises(ValueError, match=re.escape(words)):
        versions.engine_mirror("vllm", runs)
