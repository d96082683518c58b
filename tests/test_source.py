"""Where config.json and tensor headers come from: local folder, shipped catalogue, Hub, HF cache.

Hub tests run the real huggingface_hub over real HTTP against tests/hubserver.py (the `fake_hub`
fixture); nothing in huggingface_hub is mocked. The server records every request, so the tests
check retries are bounded and that only safetensors headers, never weights, are asked for.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fitplan.model.sources import hub as hub_source
from fitplan.errors import (FitplanError, GatedModelError, HubError, InputError, ModelNotFoundError,
                            UnsupportedModelError)
from fitplan.model.sources import ModelSource, TensorHeader, catalogue_entry, read_safetensors_header, resolve
from hubserver import DTYPE_BYTES, Blob, point_huggingface_hub_at, safetensors_bytes

CONFIG = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 64,
          "intermediate_size": 128, "num_hidden_layers": 1, "num_attention_heads": 4, "vocab_size": 1000,
          "torch_dtype": "bfloat16"}
# The embedding alone is 128,000 bytes: more than the 100,000-byte prefix huggingface_hub fetches first,
# so fetching any file whole would show in the byte counts.
SHARD1 = {"model.embed_tokens.weight": ("BF16", (1000, 64)), "model.layers.0.mlp.down_proj.weight": ("BF16", (64, 128))}
SHARD2 = {"model.norm.weight": ("F32", (64,)), "lm_head.weight": ("BF16", (1000, 64))}
ALL = {**SHARD1, **SHARD2}
S1, S2 = "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"
INDEX = {"metadata": {"total_size": 0}, "weight_map": {**{k: S1 for k in SHARD1}, **{k: S2 for k in SHARD2}}}


def expected(spec: dict) -> tuple[TensorHeader, ...]:
    return tuple(TensorHeader(n, d, s, math.prod(s) * DTYPE_BYTES[d]) for n, (d, s) in spec.items())


def single_files(config=CONFIG) -> dict:
    return {"config.json": config, "model.safetensors": safetensors_bytes(ALL, {"format": "pt"}),
            "README.md": "# tiny"}


def sharded_files() -> dict:
    return {"config.json": CONFIG, "model.safetensors.index.json": INDEX,
            S1: safetensors_bytes(SHARD1), S2: safetensors_bytes(SHARD2)}


def write_folder(folder: Path, files: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        if isinstance(content, (dict, list)):
            content = json.dumps(content)
        (folder / name).write_bytes(content.encode() if isinstance(content, str) else content)
    return folder


def one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert "\n" not in msg and msg.strip() == msg and msg, msg
    return msg


def test_fixture_files_are_real_safetensors(tmp_path):
    """The hand-built files the fake Hub serves are what the safetensors library itself reads."""
    from safetensors import safe_open

    path = tmp_path / "m.safetensors"
    path.write_bytes(safetensors_bytes(ALL, {"format": "pt"}))
    with safe_open(str(path), framework="numpy") as f:
        got = {k: (f.get_slice(k).get_dtype(), tuple(f.get_slice(k).get_shape())) for k in f.keys()}
    assert got == ALL


# ---- local folders -----------------------------------------------------------------------------

def test_local_folder_single_file(tmp_path, fake_hub):
    folder = write_folder(tmp_path / "m", single_files())
    src = resolve(str(folder))
    assert (src.origin, src.revision, src.config, src.tensors) == ("local", None, CONFIG, expected(ALL))
    assert src.weight_files == ("model.safetensors",) and src.local_path == str(folder.resolve())
    assert fake_hub.requests == []  # a folder never costs a Hub request


def test_local_folder_sharded_follows_the_index(tmp_path):
    files = sharded_files()
    # Mistral-style repos also ship consolidated.safetensors: counting it too would double the size.
    files["consolidated.safetensors"] = safetensors_bytes(ALL)
    src = resolve(str(write_folder(tmp_path / "m", files)))
    assert src.tensors == expected(SHARD1) + expected(SHARD2)
    assert src.weight_files == (S1, S2)


def test_local_folder_without_index_reads_every_safetensors_file(tmp_path):
    files = {"config.json": CONFIG, "b.safetensors": safetensors_bytes(SHARD2),
             "a.safetensors": safetensors_bytes(SHARD1)}
    src = resolve(str(write_folder(tmp_path / "m", files)))
    assert src.weight_files == ("a.safetensors", "b.safetensors")
    assert src.tensors == expected(SHARD1) + expected(SHARD2)


def test_local_header_is_read_without_touching_the_data(tmp_path):
    """A 16 GiB shard (sparse: no disk used) costs one small read, counted by the kernel."""
    io_stats = Path("/proc/self/io")
    folder = write_folder(tmp_path / "big", {"config.json": CONFIG})
    big = 16 * 2**30
    raw = json.dumps({"w": {"dtype": "U8", "shape": [big], "data_offsets": [0, big]}}).encode()
    with open(folder / "model.safetensors", "wb") as f:
        f.write(len(raw).to_bytes(8, "little") + raw)
        f.truncate(8 + len(raw) + big)

    def read_bytes() -> int:
        return int(dict(line.split(": ") for line in io_stats.read_text().splitlines())["rchar"])

    before = read_bytes() if io_stats.exists() else None
    t0 = time.perf_counter()
    src = resolve(str(folder))
    elapsed = time.perf_counter() - t0
    assert src.tensors == (TensorHeader("w", "U8", (big,), big),)
    assert elapsed < 5  # reading 16 GiB, even of holes, takes far longer
    if before is not None:
        assert read_bytes() - before < 1_000_000


@pytest.mark.parametrize("content, words", [
    ((200_000_000).to_bytes(8, "little") + b"{}", "over the 100,000,000-byte limit"),
    ((12).to_bytes(8, "little") + b'{"w": {"dty', "claims 12 bytes but the file has 11"),
    ((11).to_bytes(8, "little") + b'{"w": {"dty', "header is not valid JSON"),
    ((2).to_bytes(8, "little") + b"[]", "JSON but not an object"),
    (b"\x01\x02", "only 2 bytes long"),
    (safetensors_bytes({"w": ("F32", (4,))})[:-1], "truncated"),
    ((len(b'{"w": {"dtype": "F32"}}')).to_bytes(8, "little") + b'{"w": {"dtype": "F32"}}', "data_offsets"),
])
def test_local_bad_safetensors_is_one_clear_line(tmp_path, content, words):
    folder = write_folder(tmp_path / "m", {"config.json": CONFIG, "model.safetensors": content})
    with pytest.raises(InputError) as err:
        resolve(str(folder))
    msg = one_line(err)
    assert words in msg and str(folder / "model.safetensors") in msg and "re-download" in msg


def test_header_reader_never_reads_a_huge_declared_header(tmp_path):
    path = tmp_path / "x.safetensors"
    path.write_bytes((200_000_000).to_bytes(8, "little"))
    with pytest.raises(InputError, match="over the 100,000,000-byte limit"):
        read_safetensors_header(path)


def test_folder_without_config(tmp_path):
    folder = write_folder(tmp_path / "m", {"model.safetensors": safetensors_bytes(ALL)})
    with pytest.raises(InputError) as err:
        resolve(str(folder))
    assert "has no config.json" in one_line(err)


@pytest.mark.parametrize("config, words", [
    ('{"model_type": "llama", "hidden', "is not valid JSON (Unterminated string"),
    ("[1, 2]", "must hold a JSON object, not a list"),
])
def test_local_bad_config(tmp_path, config, words):
    folder = write_folder(tmp_path / "m", {"config.json": config})
    with pytest.raises(InputError) as err:
        resolve(str(folder))
    assert words in one_line(err) and "config.json" in str(err.value)


def test_local_missing_shard_is_an_unfinished_download(tmp_path):
    files = sharded_files()
    del files[S2]
    with pytest.raises(InputError) as err:
        resolve(str(write_folder(tmp_path / "m", files)))
    assert f"lacks {S2}" in one_line(err) and "finish the download" in str(err.value)


def test_no_safetensors_means_no_headers_not_an_error(tmp_path):
    src = resolve(str(write_folder(tmp_path / "m", {"config.json": CONFIG, "pytorch_model.bin": b"\0" * 16})))
    assert src.tensors is None and src.weight_files == () and src.config == CONFIG


def test_with_tensors_false_skips_headers(tmp_path):
    src = resolve(str(write_folder(tmp_path / "m", single_files())), with_tensors=False)
    assert src.tensors is None and src.config == CONFIG


@pytest.mark.parametrize("model", ["./no-such-model", "/no/such/fitplan-model", "~/no-such-fitplan-model",
                                   "../no-such-model"])
def test_missing_path_is_not_sent_to_the_hub(model, fake_hub, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelNotFoundError) as err:
        resolve(model)
    assert f"no such folder: {model}" in one_line(err)
    assert fake_hub.requests == []


def test_a_file_is_not_a_model_folder(tmp_path):
    write_folder(tmp_path / "m", {"config.json": CONFIG})
    with pytest.raises(InputError, match="is a file, not a model folder"):
        resolve(str(tmp_path / "m" / "config.json"))


@pytest.mark.parametrize("model", ["org/name/extra", "org/bad--name", "-org/name", "org/na me", "org/x.git"])
def test_invalid_repo_id(model, fake_hub):
    with pytest.raises(InputError) as err:
        resolve(model)
    assert f"'{model}' is neither an existing folder nor a valid Hub repo id" in one_line(err)
    assert fake_hub.requests == []


# ---- the shipped catalogue ----------------------------------------------------------------------

def write_catalogue(root: Path, entries: dict, configs: dict) -> Path:
    write_folder(root / "models", configs)
    (root / "model_catalogue.json").write_text(json.dumps(entries))
    return root


def test_catalogue_lookup_is_case_insensitive(tmp_path):
    root = write_catalogue(tmp_path, {"Org/Model-7B": {"file": "Org--Model-7B.json", "parameters": 7_000_000_000,
                                                        "parameters_source": "safetensors", "gated": True}},
                           {"Org--Model-7B.json": CONFIG})
    src = catalogue_entry("org/model-7b", root)
    assert (src.origin, src.model_id, src.repo_id, src.config) == ("catalogue", "org/model-7b", "Org/Model-7B", CONFIG)
    assert (src.tensors, src.revision, src.parameters, src.gated) == (None, None, 7_000_000_000, True)
    assert catalogue_entry("org/other", root) is None
    assert catalogue_entry("org/model-7b", tmp_path / "not-shipped-yet") is None


@pytest.mark.parametrize("entries, configs, words", [
    ("{not json", {}, "model_catalogue.json"),
    ({"a/b": {"file": "../../etc.json"}}, {}, "no valid 'file'"),
    ({"a/b": {"file": "a--b.json"}}, {}, "models/a--b.json for 'a/b' is missing"),
    ({"a/b": {"file": "a--b.json", "parameters": "7B"}}, {"a--b.json": CONFIG}, "malformed"),
    ({"a/b": {"file": "a--b.json"}}, {"a--b.json": "[]"}, "must hold a JSON object"),
])
def test_corrupt_catalogue_is_reported_as_a_packaging_bug(tmp_path, entries, configs, words):
    write_folder(tmp_path / "models", configs)
    (tmp_path / "model_catalogue.json").write_text(entries if isinstance(entries, str) else json.dumps(entries))
    with pytest.raises(FitplanError) as err:
        catalogue_entry("a/b", tmp_path)
    assert words in one_line(err)


def _shipped_catalogue() -> dict:
    from importlib import resources

    f = resources.files("fitplan") / "data" / "model_catalogue.json"
    if not f.is_file():
        pytest.skip("fitplan/data/model_catalogue.json is not there yet")
    return json.loads(f.read_text(encoding="utf-8"))


def test_shipped_catalogue_answers_without_the_hub(fake_hub):
    catalogue = _shipped_catalogue()
    repo_id, entry = next(iter(catalogue.items()))
    src = resolve(repo_id.upper())
    assert (src.origin, src.repo_id, src.tensors, src.revision) == ("catalogue", repo_id, None, None)
    assert src.config == json.loads(
        (Path(hub_source.__file__).parents[2] / "data" / "models" / entry["file"]).read_text(encoding="utf-8"))
    assert src.parameters == entry.get("parameters") and src.gated == entry.get("gated")
    # Every shipped entry is readable (a broken one would fail users only for that model).
    assert all(resolve(repo).config for repo in catalogue)
    assert fake_hub.requests == []
    # A pinned revision or use_catalogue=False goes to the Hub (here: the fake one, which lacks it).
    for kwargs in ({"revision": "v2"}, {"use_catalogue": False}):
        with pytest.raises(ModelNotFoundError):
            resolve(repo_id, **kwargs)
    assert fake_hub.requests


def test_shipped_catalogue_answers_offline(fake_hub):
    repo_id = next(iter(_shipped_catalogue()))
    assert resolve(repo_id, offline=True).origin == "catalogue"
    assert fake_hub.requests == []


# ---- the Hub ------------------------------------------------------------------------------------

def test_hub_single_file(fake_hub, tmp_path):
    repo = fake_hub.add_repo("org/tiny", single_files())
    src = resolve("org/tiny")
    assert (src.origin, src.model_id, src.repo_id, src.revision) == ("hub", "org/tiny", "org/tiny", repo.sha)
    assert src.config == CONFIG and src.tensors == expected(ALL) and src.weight_files == ("model.safetensors",)
    assert src.from_cache is False and Path(src.local_path, "config.json").is_file()
    # The same files in a folder give the very same headers.
    assert resolve(str(write_folder(tmp_path / "local", single_files()))).tensors == src.tensors


def test_hub_sharded(fake_hub):
    repo = fake_hub.add_repo("org/sharded", sharded_files(), tags=("v1.0",))
    src = resolve("org/sharded", revision="v1.0")
    assert src.revision == repo.sha and src.weight_files == (S1, S2)
    assert src.tensors == expected(SHARD1) + expected(SHARD2)


def test_hub_fetches_headers_not_weights(fake_hub):
    """Shards declaring 20 GB each: only Range requests inside the first 100 kB (huggingface_hub's
    one-shot header fetch) or the declared header may ever be asked for."""
    big = 10 * 10**9
    files = {"config.json": CONFIG, "model.safetensors.index.json": INDEX}
    for name, spec in ((S1, SHARD1), (S2, SHARD2)):
        header = safetensors_bytes({k: ("BF16", (big // 2,)) for k in spec}, data=False)
        files[name] = Blob(header, len(header) + big * len(spec))
    fake_hub.add_repo("org/huge", files)
    src = resolve("org/huge")
    assert [t.nbytes for t in src.tensors] == [big] * 4
    for name in (S1, S2):
        header_len = len(files[name].prefix)
        reqs = fake_hub.requests_for(name)
        gets = [r for r in reqs if r.method == "GET"]
        assert gets and all(r.range for r in gets), reqs
        for r in gets:
            start, end = map(int, r.range.removeprefix("bytes=").split("-"))
            assert end <= max(100_000, header_len - 1), r
        assert fake_hub.content_bytes_sent(name) <= 100_001 + header_len
    assert fake_hub.requests_for("config.json", method="GET")  # config.json itself is downloaded (and cached)


def test_hub_repo_without_safetensors(fake_hub):
    fake_hub.add_repo("org/bin", {"config.json": CONFIG, "pytorch_model.bin": b"\0" * 64})
    src = resolve("org/bin")
    assert src.tensors is None and src.weight_files == () and src.config == CONFIG
    assert not fake_hub.requests_for("pytorch_model.bin")


def test_hub_with_tensors_false_asks_only_for_config(fake_hub):
    fake_hub.add_repo("org/tiny", single_files())
    assert resolve("org/tiny", with_tensors=False).tensors is None
    assert {r.filename for r in fake_hub.requests} == {"config.json"}


def test_huggingface_hub_without_a_header_timeout_is_refused_in_one_line(fake_hub, monkeypatch):
    """Before 1.25, get_safetensors_metadata took no timeout: a stalled Hub would hang fitplan for ever.
    Such a huggingface_hub is refused before any request, naming its version and where to look."""
    import huggingface_hub
    from huggingface_hub import HfApi

    from fitplan.errors import LibraryChangedError

    fake_hub.add_repo("org/tiny", single_files())
    monkeypatch.setattr(HfApi, "get_safetensors_metadata", lambda self, repo_id, *, revision=None, token=None: None)
    with pytest.raises(LibraryChangedError) as err:
        resolve("org/tiny")
    assert one_line(err) == (f"huggingface_hub {huggingface_hub.__version__}: get_safetensors_metadata takes no "
                             "timeout (added in 1.25); fitplan is tested with the versions in its "
                             "docs/compatibility.md: install one of those, or report this with the model id")
    assert fake_hub.requests == []
    assert resolve("org/tiny", with_tensors=False).config == CONFIG  # config.json alone needs no header timeout


@pytest.mark.parametrize("token", [None, "hf_someone"])
def test_hub_unknown_repo(fake_hub, token):
    """The Hub answers 401 (anonymous) or 404 (with a token), X-Error-Code: RepoNotFound."""
    with pytest.raises(ModelNotFoundError) as err:
        resolve("org/nope", token=token)
    msg = one_line(err)
    assert "no model 'org/nope' on the Hub" in msg and "check the spelling" in msg
    assert ("pass a token" in msg) == (token is None)
    assert [r.status for r in fake_hub.requests] == [404 if token else 401]  # not retried


def test_hub_gated(fake_hub):
    fake_hub.add_repo("meta/gated", single_files(), gated=True, tokens=("hf_accepted",))
    with pytest.raises(GatedModelError) as err:
        resolve("meta/gated")
    msg = one_line(err)
    assert f"accept its terms at {fake_hub.url}/meta/gated" in msg and "HF_TOKEN" in msg and "token=" in msg
    assert err.value.repo_id == "meta/gated" and err.value.status in (401, 403)  # data, not only words
    assert "--token" in err.value.render("cli")
    with pytest.raises(GatedModelError) as err:
        resolve("meta/gated", token="hf_not_accepted")
    assert "your token has no access" in one_line(err) and f"{fake_hub.url}/meta/gated" in str(err.value)
    assert [r.status for r in fake_hub.requests] == [401, 403]
    src = resolve("meta/gated", token="hf_accepted")
    assert src.tensors == expected(ALL)
    # The token went to the Hub but not to the CDN (another origin) that serves the bytes.
    assert {r.authorization for r in fake_hub.requests_for(server="hub")[2:]} == {"Bearer hf_accepted"}
    assert {r.authorization for r in fake_hub.requests_for(server="cdn")} == {None}


def test_hub_token_from_environment(fake_hub, monkeypatch):
    fake_hub.add_repo("meta/gated", single_files(), gated=True, tokens=("hf_env",))
    monkeypatch.setenv("HF_TOKEN", "hf_env")
    assert resolve("meta/gated").config == CONFIG


def test_hub_unknown_revision(fake_hub):
    fake_hub.add_repo("org/tiny", single_files())
    with pytest.raises(ModelNotFoundError) as err:
        resolve("org/tiny", revision="v9")
    assert "revision 'v9' does not exist in 'org/tiny'" in one_line(err)


def test_hub_repo_without_config(fake_hub):
    fake_hub.add_repo("org/gguf", {"model.gguf": b"GGUF", "README.md": "hi"})
    with pytest.raises(UnsupportedModelError) as err:
        resolve("org/gguf")
    assert "has no config.json" in one_line(err)


@pytest.mark.parametrize("config, words", [
    ('{"model_type": "llama", "hidden', "is not valid JSON"),
    ('"llama"', "must hold a JSON object, not a str"),
])
def test_hub_bad_config(fake_hub, config, words):
    fake_hub.add_repo("org/broken", {**single_files(), "config.json": config})
    with pytest.raises(HubError) as err:
        resolve("org/broken")
    assert words in one_line(err) and "config.json of 'org/broken'" in str(err.value)


def test_hub_rate_limit_then_success_waits_as_asked(fake_hub):
    fake_hub.add_repo("org/tiny", single_files())
    fake_hub.fail("org/tiny", "config.json", status=429, times=1, headers={"Retry-After": "1"})
    t0 = time.perf_counter()
    src = resolve("org/tiny")
    assert src.tensors == expected(ALL) and time.perf_counter() - t0 >= 1.0
    heads = [r.status for r in fake_hub.requests_for("config.json", method="HEAD")]
    assert heads == [429, 200, 200]  # our retry, then hf_hub_download's own HEAD


def test_hub_rate_limit_with_a_long_wait_fails_at_once(fake_hub):
    fake_hub.add_repo("org/tiny", single_files())
    fake_hub.fail("org/tiny", status=429, headers={"Retry-After": "3600"})
    t0 = time.perf_counter()
    with pytest.raises(HubError) as err:
        resolve("org/tiny")
    assert "(429, it asks to wait 3600 s)" in one_line(err) and "pass a token" in str(err.value)
    assert time.perf_counter() - t0 < 2 and len(fake_hub.requests) == 1


@pytest.mark.parametrize("status, headers, words", [(500, {}, "the Hub answered 500"),
                                                    (429, {"Retry-After": "0"}, "rate-limiting")])
def test_hub_persistent_errors_give_up_after_bounded_retries(fake_hub, status, headers, words):
    fake_hub.add_repo("org/tiny", single_files())
    fake_hub.fail("org/tiny", status=status, headers=headers)
    t0 = time.perf_counter()
    with pytest.raises(HubError) as err:
        resolve("org/tiny")
    assert words in one_line(err) and f"after {hub_source.ATTEMPTS} attempts" in str(err.value)
    assert len(fake_hub.requests) == hub_source.ATTEMPTS
    assert time.perf_counter() - t0 < 5


def test_hub_persistent_error_on_headers(fake_hub):
    fake_hub.add_repo("org/tiny", single_files())
    fake_hub.fail("org/tiny", "model.safetensors", status=502, headers={"Retry-After": "0"})
    with pytest.raises(HubError) as err:
        resolve("org/tiny")
    assert "the Hub answered 502" in one_line(err)
    assert len(fake_hub.requests_for("model.safetensors")) == hub_source.ATTEMPTS


def test_hub_slow_answer_times_out(fake_hub):
    fake_hub.add_repo("org/tiny", single_files())
    fake_hub.delay("org/tiny", "config.json", seconds=5)
    t0 = time.perf_counter()
    with pytest.raises(HubError) as err:
        resolve("org/tiny", timeout=0.3)
    assert "did not answer within 0.3 s" in one_line(err) and "HF_HUB_ETAG_TIMEOUT" in str(err.value)
    assert time.perf_counter() - t0 < 3
    # Each attempt was cut off by the client (the server is still "working" on them): count arrivals.
    assert [(m, f) for _, m, f in fake_hub.arrivals] == [("HEAD", "config.json")] * hub_source.ATTEMPTS


def test_hub_slow_header_download_times_out(fake_hub):
    fake_hub.add_repo("org/tiny", single_files())
    fake_hub.delay("org/tiny", "model.safetensors", seconds=5, server="cdn")
    t0 = time.perf_counter()
    with pytest.raises(HubError) as err:
        resolve("org/tiny", timeout=0.3)
    assert "did not answer within 0.3 s" in one_line(err)
    assert time.perf_counter() - t0 < 3


def test_hub_huge_header_is_refused_before_fetching_it(fake_hub):
    header = (200_000_000).to_bytes(8, "little") + b"{"
    fake_hub.add_repo("org/evil", {"config.json": CONFIG, "model.safetensors": Blob(header, 300_000_000)})
    with pytest.raises(HubError) as err:
        resolve("org/evil")
    assert "safetensors header is too big" in one_line(err)
    assert [r.range for r in fake_hub.requests_for("model.safetensors", server="cdn")] == ["bytes=0-100000"]


@pytest.mark.parametrize("header, words", [(b'{"w": {"dtype": "F32", "sha', "not json-encoded"),
                                           (b'{"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}',
                                            "needs dtype, shape and data_offsets"),
                                           (b"[1, 2]", "is not a valid header")])
def test_hub_invalid_header(fake_hub, header, words):
    fake_hub.add_repo("org/bad", {"config.json": CONFIG,
                                  "model.safetensors": len(header).to_bytes(8, "little") + header + b"\0" * 4})
    with pytest.raises(HubError) as err:
        resolve("org/bad")
    assert words in one_line(err)


def test_endpoint_that_is_not_a_hub(fake_hub, monkeypatch, tmp_path):
    """HF_ENDPOINT set to a plain static web server (a misconfigured mirror) that has the file but none
    of the Hub's headers: resolve says so instead of failing obscurely."""
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    write_folder(tmp_path / "www" / "org" / "tiny" / "resolve" / "main", {"config.json": CONFIG})
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(tmp_path / "www"))
    handler.log_message = lambda *a: None
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        point_huggingface_hub_at(monkeypatch, f"http://127.0.0.1:{server.server_address[1]}", tmp_path / "h2")
        with pytest.raises(HubError) as err:
            resolve("org/tiny")
        assert "does not answer like the Hugging Face Hub (no X-Repo-Commit header): check HF_ENDPOINT" in one_line(err)
    finally:
        server.shutdown()
        server.server_close()


# ---- offline and the local HF cache -------------------------------------------------------------

def test_offline_without_cache(fake_hub):
    fake_hub.add_repo("org/tiny", single_files())
    with pytest.raises(HubError) as err:
        resolve("org/tiny", offline=True)
    msg = one_line(err)
    assert "not in fitplan's catalogue or the local Hugging Face cache" in msg
    assert "(offline=True)" in msg and "drop offline=True" in msg and "local folder" in msg
    assert "drop --offline" in err.value.render("cli")
    assert fake_hub.requests == []


def test_offline_from_environment(fake_hub, monkeypatch, tmp_path):
    point_huggingface_hub_at(monkeypatch, fake_hub.url, tmp_path / "hf-home", offline=True)
    with pytest.raises(HubError) as err:
        resolve("org/tiny")
    assert "(HF_HUB_OFFLINE=1)" in one_line(err)
    # Asking for online while huggingface_hub was imported offline: say what blocks it.
    with pytest.raises(HubError) as err:
        resolve("org/tiny", offline=False)
    assert "unset HF_HUB_OFFLINE" in one_line(err)
    assert fake_hub.requests == []


def test_offline_blames_the_variable_that_is_set(fake_hub, monkeypatch):
    """TRANSFORMERS_OFFLINE=1 turns offline mode on too; the message names it, not HF_HUB_OFFLINE."""
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    with pytest.raises(HubError) as err:
        resolve("org/tiny")
    msg = one_line(err)
    assert "(TRANSFORMERS_OFFLINE=1)" in msg and "unset TRANSFORMERS_OFFLINE" in msg and "HF_HUB_OFFLINE" not in msg


def test_offline_uses_what_an_online_run_cached(fake_hub):
    repo = fake_hub.add_repo("org/tiny", single_files())
    online = resolve("org/tiny")
    n = len(fake_hub.requests)
    offline = resolve("org/tiny", offline=True)
    assert len(fake_hub.requests) == n  # not a single request
    assert (offline.origin, offline.revision, offline.config, offline.from_cache) == ("hub", repo.sha, CONFIG, True)
    assert offline.local_path == online.local_path
    assert offline.tensors is None  # headers came by Range request; the weights were never downloaded


def test_offline_reads_headers_of_downloaded_weights(fake_hub):
    import huggingface_hub

    fake_hub.add_repo("org/tiny", single_files())
    for name in ("config.json", "model.safetensors"):  # the user downloaded the model earlier
        huggingface_hub.hf_hub_download("org/tiny", name)
    src = resolve("org/tiny", offline=True)
    assert src.tensors == expected(ALL) and src.from_cache


def test_offline_sharded_with_only_the_index_cached(fake_hub):
    fake_hub.add_repo("org/sharded", sharded_files())
    resolve("org/sharded")  # caches config.json and the index, not the shards
    src = resolve("org/sharded", offline=True)
    assert src.config == CONFIG and src.tensors is None


def test_unreachable_hub_falls_back_to_the_cache(fake_hub):
    repo = fake_hub.add_repo("org/tiny", single_files())
    resolve("org/tiny")
    fake_hub.fail("org/tiny", status=503, headers={"Retry-After": "0"})
    src = resolve("org/tiny")
    assert src.from_cache and src.revision == repo.sha and src.config == CONFIG


# ---- the real code path, and serialisation ------------------------------------------------------

def test_env_set_before_import_gives_the_same_result(fake_hub, tmp_path):
    """In a fresh interpreter where HF_ENDPOINT/HF_HOME are set before huggingface_hub is imported
    (what a user does), resolve() gives what the in-process, monkeypatched tests see; and neither
    torch nor transformers gets imported."""
    fake_hub.add_repo("org/sharded", sharded_files())
    in_process = json.loads(json.dumps(resolve("org/sharded").to_dict()))
    code = ("import json, sys; from fitplan.model.sources import resolve; s = resolve('org/sharded').to_dict(); "
            "print(json.dumps([s, sorted(m for m in ('torch', 'transformers') if m in sys.modules)]))")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
    env.update(HF_ENDPOINT=fake_hub.url, HF_HOME=str(tmp_path / "fresh-home"), HF_HUB_DISABLE_PROGRESS_BARS="1",
               PYTHONPATH=os.pathsep.join([str(Path(hub_source.__file__).parents[3]), os.environ.get("PYTHONPATH", "")]),
               NO_PROXY="127.0.0.1,localhost")  # PYTHONPATH kept: a CI leg's library versions come from it
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    fresh, heavy = json.loads(out.stdout.splitlines()[-1])
    assert heavy == []
    assert fresh["local_path"].startswith(str(tmp_path / "fresh-home"))
    assert {**fresh, "local_path": None} == {**in_process, "local_path": None}


def test_model_source_round_trips_through_json(fake_hub):
    fake_hub.add_repo("org/sharded", sharded_files())
    src = resolve("org/sharded")
    assert ModelSource.from_dict(json.loads(json.dumps(src.to_dict()))) == src


def test_fake_hub_model_info_matches_what_it_serves(fake_hub):
    """Other tests may use model_info against the fake Hub: it agrees with the resolve endpoint."""
    import huggingface_hub

    repo = fake_hub.add_repo("org/tiny", single_files(), gated=True)
    info = huggingface_hub.model_info("org/tiny")
    assert info.sha == repo.sha and info.gated == "manual"
    assert sorted(s.rfilename for s in info.siblings) == sorted(single_files())
