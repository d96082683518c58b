"""Seeded, bounded fuzz of the file surfaces of issue 21 (GGUF headers, inventory cache entries).

Derandomized hypothesis runs, FITPLAN_FUZZ_FILES examples each (default 300 GGUF files, 200 cache
entries; about half a minute in all on 2 idle cores). No example is timed: a hang is caught by the
harness's 600 s limit, which only an input that never returns reaches, and work is checked by count
(bytes the GGUF parser pulls). benchmarks/fuzz.py `--only gguf --only cache` runs the longer campaign.
"""
from __future__ import annotations

import math
import os

import pytest
from hypothesis import HealthCheck, given, settings

import fuzz_files as ff
import fuzzing as fuzz

EXAMPLES = int(os.environ.get("FITPLAN_FUZZ_FILES", "300"))
HANG_S = 600


def _settings(n: int):
    return settings(max_examples=n, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.large_base_example, HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def box(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz-files")
    with pytest.MonkeyPatch.context() as mp:
        for key in [k for k in os.environ if k.startswith("FITPLAN_")]:
            mp.delenv(key)
        mp.setenv("FITPLAN_CACHE", str(root / "fitplan-cache"))
        mp.setenv("HF_HUB_OFFLINE", "1")
        yield fuzz.Sandbox(root / "box")


@pytest.fixture(scope="module")
def pulled():
    """Bytes the GGUF parser asks for, per input: its work, counted."""
    from fitplan.gguf import header

    seen = {"bytes": 0}
    original = header._Cursor._ensure

    def ensure(self, end):
        before = len(self._buf)
        original(self, end)
        seen["bytes"] += len(self._buf) - before

    header._Cursor._ensure = ensure
    yield seen
    header._Cursor._ensure = original


@_settings(EXAMPLES)
@given(case=ff.gguf_cases())
def test_fuzzed_gguf_files_plan_or_get_one_line(box, pulled, case):
    pulled["bytes"] = 0
    out = fuzz.run_case(case, box, deadline=math.inf, hard_limit=HANG_S)
    assert out.ok, f"[{out.status}] {out.message}\n{out.detail}"
    size = sum(len(d or b"") for _, d in case.files)
    # the parser never pulls more than the files hold (plus its first read), nor past its header cap
    from fitplan.gguf.header import MAX_HEADER_BYTES

    assert pulled["bytes"] <= size + (1 << 20) * len(case.files) and pulled["bytes"] <= len(case.files) * (
        MAX_HEADER_BYTES + (1 << 20)), pulled


# -- cache entries --------------------------------------------------------------------------------------------

TINY = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 256, "max_position_embeddings": 512}


@pytest.fixture(scope="module")
def entry(box):
    """(path, bytes, true inventory) of one real cache entry; builds after this return the true
    inventory (counted) instead of building again, so each case costs milliseconds."""
    from fitplan.model import build, cache

    true = cache.get_inventory(TINY, model_id="fuzz/tiny")
    path = next((cache._cache_dir()).glob("*.json"))
    raw = path.read_bytes()
    calls = {"n": 0}
    original = build.build_inventory

    def rebuilt(*a, **k):
        calls["n"] += 1
        return true

    build.build_inventory = rebuilt
    yield path, raw, true, calls
    build.build_inventory = original


@_settings(max(1, EXAMPLES * 2 // 3))
@given(damage=ff.entry_damage())
def test_damaged_cache_entry_never_changes_the_answer(entry, damage):
    from fitplan.model import cache

    path, raw, true, calls = entry
    ff.restore_entry(path, raw)
    ff.damage_entry(path, damage, huge=cache.MAX_ENTRY_BYTES + 1)
    before = calls["n"]
    got = cache.get_inventory(TINY, model_id="fuzz/tiny")
    if damage[0] == "resealed":
        # a forger who recomputes the digest: only values of the declared types and ranges get through
        assert got is true or all(getattr(got, f) >= 0 for f in ("hidden_size", "num_layers", "vocab_size"))
    else:
        assert ff.same_inventory(got, true), damage
        if calls["n"] > before and damage[1] != "dangling":  # rebuilt, and said so (a dangling link: no entry)
            assert any("cache entry" in n for n in got.notes), got.notes
    ff.restore_entry(path, raw)
