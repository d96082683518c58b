"""`--json` stays byte-identical across a reshaping: 20 catalogue models replanned and compared with
what `tests/golden.py write` recorded on this transformers version (issue 17: behaviour does not change)."""
from __future__ import annotations

import pytest

import golden

RECORDED = golden.folder()


@pytest.mark.parametrize("name,args", golden.CASES, ids=[c[0] for c in golden.CASES])
def test_json_plan_is_byte_identical(name, args, tmp_path, monkeypatch):
    recorded = RECORDED / f"{name}.json"
    if not recorded.is_file():
        pytest.skip(f"no recording for {RECORDED.name} (recorded: the pinned legs of fitplan/versions.py)")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, text = golden.check(args)
    assert f"{code}\n{text}" == recorded.read_text()
