"""The fuzz harness: hypothesis strategies that write hostile inputs, and the runner that judges one
case. Shared by tests/test_fuzz.py (a few hundred examples in CI) and benchmarks/fuzz.py (the
10k-input run whose results are in docs/robustness.md).

The property (`Outcome.ok`): exit 0 or 1; or exit 2 with `fitplan: error:` lines on stderr, one
(one per problem for `profile validate`); from the API a `Plan` or a one-line `FitplanError`. Never
a traceback, never another exit code, never slower than the deadline.
"""
from __future__ import annotations

import contextlib
import functools
import gc
import json
import os
import re
import resource
import shutil
import signal
import sys
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

MODELS = ROOT / "fitplan" / "data" / "models"
#: Catalogue configs by file name: the "valid-looking" starting points for config.json mutations.
REAL_CONFIGS: dict[str, dict] = {p.name: json.loads(p.read_text()) for p in sorted(MODELS.glob("*.json"))}
#: Catalogue models whose inventory builds in well under a second: profiles name these.
SMALL_MODELS = ("meta-llama/Llama-3.2-1B", "facebook/opt-125m", "openai-community/gpt2")
BASE_CONFIG = "meta-llama--Llama-3.2-1B.json"  # the folder `hardware` cases plan
PRECISIONS = ("fp32", "bf16", "fp16", "int8", "nf4", "nf4-dq", "fp4", "fp4-dq")
GPU_WORDS = ("rtx4090", "rtx3060", "a100-80gb", "h100-sxm", "t4", "v100-16gb", "l4", "RTX 4090",
             "NVIDIA A100-SXM4-80GB", "a100", "rtx9999", "cpu", "")
#: Config fields that size the model, all with the spellings various families use.
SIZE_KEYS = ("hidden_size", "num_hidden_layers", "intermediate_size", "num_attention_heads",
             "num_key_value_heads", "head_dim", "vocab_size", "max_position_embeddings", "sliding_window",
             "n_embd", "n_layer", "n_head", "n_positions", "n_inner", "ffn_dim", "word_embed_proj_dim",
             "num_local_experts", "num_experts", "num_experts_per_tok", "moe_intermediate_size",
             "num_kv_heads", "num_layers", "pad_token_id", "bos_token_id", "eos_token_id")
EDGE_INTS = (0, -1, 1, 2, 3, 7, 63, 255, 2**16, 2**24, 2**24 + 1, 2**31 - 1, 2**31, 2**53 + 1, 2**63, 2**64,
             10**9, 10**12, 10**18, 10**30, 10**100, -(2**31), -(10**12))
EDGE_STRINGS = ("", " ", "0", "16", "-1", "1e9", "1e400", "nan", "inf", "-inf", "auto", "none", "null", "true",
                "yes", "off", "24GiB", "24 GB", "-1GiB", "0B", "1e400GiB", "999999TiB", "10%", "100%", "-5%",
                "99.99%", "0.5", "1.5", "8.6", "99.9", "a.b", "rtx4090", "2x rtx4090", "0x rtx4090",
                "99999999999999999999x rtx4090", "bf16", "BF16", "int4", "quality", "fastest",
                "meta-llama/Llama-3.2-1B", "org/name", "../..", "/", "~", "é", "\t", "\u202e", "ａ")
#: YAML written as text (no Python value dumps to these): special scalars, tags, aliases, flow oddities.
RAW_YAML = (".inf", "-.inf", ".nan", "0x1F", "0o17", "1_000_000", "1e400", "2001-12-14t21:59:43.10-05:00",
            "2002-12-14", "!!binary aGVsbG8=", "!!str 5", "!!int '12'", "!!int 'x'", "!!float 'x'",
            "!!bool maybe", "!!null x", "!!timestamp nope", "!!set {a, b}", "!!omap [a: 1]",
            "!!python/name:os.system", "!!python/object/apply:os.system ['true']", "!custom x", "!<tag:x> y",
            "*nowhere", "&a [*a]", "&b {k: *b}", "{a: 1, a: 2}", "[a, [b, [c]]]", "{? [a, b] : c}",
            "{1: x, true: y, null: z}", "[]", "{}", "~", "''", '""', "'unterminated", '"\\x00"', "[1, 2",
            "{a: b", "- a", "a: b: c", "yes", "No", "ON", "0.", ".5", "+1", "-0", "1:30", "=", "<<: {}",
            "|\n  literal", ">-\n  folded")

# -- hypothesis strategies ---------------------------------------------------------------------------

_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=24)
edge_ints = st.one_of(st.sampled_from(EDGE_INTS), st.integers(), st.integers(-(2**70), 2**70))
scalars = st.one_of(
    st.none(), st.booleans(), edge_ints, st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(EDGE_STRINGS), _text,
)
#: Any JSON/YAML-representable value, nested a little: the "wrong type" in a field.
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.one_of(_text, st.sampled_from(EDGE_STRINGS)), inner, max_size=4),
), max_leaves=8)


def _one_in(draw, n: int) -> bool:
    """True about once in `n` draws (hypothesis favours small integers, so test the top one)."""
    return draw(st.integers(1, n)) == n


@dataclass(frozen=True)
class Case:
    """One generated input: the files to write, then a CLI command or an API call.

    `files` maps a path relative to the case folder to its bytes (None: make a directory there).
    `argv` and `api` may contain `{D}`, the case folder, and `{M}`, the shared planned-model folder.
    """

    target: str
    files: tuple[tuple[str, bytes | None], ...] = ()
    argv: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    api: tuple[tuple[str, Any], ...] | None = None

    def __repr__(self) -> str:  # what hypothesis prints for a failing example; keep files readable
        shown = tuple((p, b if b is None or len(b) <= 2000 else b[:2000] + b"...<%d bytes>" % len(b))
                      for p, b in self.files)
        return (f"Case(target={self.target!r}, files={shown!r}, argv={self.argv!r}, env={self.env!r}, "
                f"api={self.api!r})")


# config.json ------------------------------------------------------------------------------------

@functools.cache
def _model_types() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(causal-LM model types, all model types) known to the installed transformers."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return tuple(sorted(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)), tuple(sorted(CONFIG_MAPPING_NAMES))


model_types = st.one_of(
    st.deferred(lambda: st.sampled_from(_model_types()[0])),
    st.deferred(lambda: st.sampled_from(_model_types()[1])),
    st.sampled_from(("", "LLAMA", "llama ", "my-custom-lm", "__init__", "auto", "config")), _text,
)


@st.composite
def mutated_config(draw) -> dict:
    """A real family's config with one to three fields changed, removed or added."""
    cfg = dict(REAL_CONFIGS[draw(st.sampled_from(sorted(REAL_CONFIGS)))])
    for _ in range(draw(st.sampled_from((1, 1, 1, 2, 3)))):
        key = draw(st.one_of(st.sampled_from(sorted(cfg)), st.sampled_from(SIZE_KEYS), _text))
        op = draw(st.sampled_from(("size", "size", "size", "value", "delete", "model_type", "dtype", "nested")))
        if op == "delete":
            cfg.pop(key, None)
        elif op == "size":  # half of them plausible, so that many reach the meta build
            sized = [k for k in SIZE_KEYS if k in cfg] or list(SIZE_KEYS)
            cfg[draw(st.sampled_from(sized))] = draw(st.one_of(
                st.integers(1, 64).map(lambda k: 64 * k), st.integers(1, 4096),
                st.sampled_from((1, 2, 8, 64, 128, 256, 257, 1024)), edge_ints))
        elif op == "model_type":
            cfg["model_type"] = draw(model_types)
        elif op == "dtype":
            cfg[draw(st.sampled_from(("torch_dtype", "dtype")))] = draw(st.one_of(
                st.sampled_from(("bfloat16", "float16", "float32", "int8", "float8_e4m3fn", "bogus", "")), values))
        elif op == "nested":
            cfg[draw(st.sampled_from(("rope_scaling", "rope_parameters", "quantization_config", "text_config",
                                      "layer_types", "auto_map", "attn_implementation", "_attn_implementation")))
                ] = draw(st.one_of(values, st.fixed_dictionaries(
                    {"quant_method": st.sampled_from(("bitsandbytes", "gptq", "awq", "fp8", "nope")),
                     "load_in_4bit": st.booleans()})))
        else:
            cfg[key] = draw(values)
    return cfg


@st.composite
def synthetic_config(draw) -> Any:
    """A config written from scratch: any model type, a few size fields, random extra fields."""
    cfg = draw(st.dictionaries(st.sampled_from(SIZE_KEYS), st.one_of(edge_ints, st.integers(1, 512)), max_size=6))
    if draw(st.booleans()):
        cfg["model_type"] = draw(model_types)
    if _one_in(draw, 5):
        cfg["auto_map"] = draw(st.one_of(values, st.just({"AutoConfig": "configuration_x.XConfig",
                                                           "AutoModelForCausalLM": "modeling_x.XForCausalLM"})))
    cfg.update(draw(st.dictionaries(_text, values, max_size=3)))
    return cfg


def _json_bytes(obj: Any) -> bytes:
    return json.dumps(obj, indent=2, default=str).encode()  # NaN/Infinity stay as JSON's extensions


@st.composite
def config_bytes(draw) -> bytes:
    """config.json content: mostly JSON objects shaped like configs, some broken at the byte level."""
    kind = draw(st.sampled_from(("mutated",) * 10 + ("synthetic",) * 2 + (
        "remote", "not-object", "truncated", "bytes", "corrupt", "empty", "huge-number")))
    if kind == "mutated":
        return _json_bytes(draw(mutated_config()))
    if kind == "synthetic":
        return _json_bytes(draw(synthetic_config()))
    if kind == "remote":  # a trust_remote_code repo: unknown type, code named in auto_map
        cfg = dict(REAL_CONFIGS[draw(st.sampled_from(sorted(REAL_CONFIGS)))])
        cfg["model_type"] = draw(st.sampled_from(("my-remote-lm", "deepseek_v9", "phi3small")) | _text)
        cfg["auto_map"] = {"AutoConfig": "configuration_x.XConfig", "AutoModelForCausalLM": "modeling_x.XForCausalLM"}
        return _json_bytes(cfg)
    if kind == "not-object":
        return _json_bytes(draw(st.one_of(st.lists(values, max_size=3), scalars)))
    real = _json_bytes(REAL_CONFIGS[draw(st.sampled_from(sorted(REAL_CONFIGS)))])
    if kind == "truncated":
        return real[: draw(st.integers(0, len(real) - 1))]
    if kind == "bytes":
        return draw(st.binary(max_size=256))
    if kind == "corrupt":
        return _corrupt(draw, real)
    if kind == "empty":
        return draw(st.sampled_from((b"", b" ", b"\n", b"{}", b"[]", b"null", b"\xef\xbb\xbf{}")))
    # a number JSON cannot hold in a Python int (over 4300 digits), or an overflowing float
    digits = draw(st.sampled_from(("9" * 5000, "1e400", "-1e400", "1" + "0" * 400)))
    return real.replace(b'"hidden_size"', b'"hidden_size": ' + digits.encode() + b', "x"', 1)


def _corrupt(draw, data: bytes) -> bytes:
    """Byte-level damage to otherwise good text: bad UTF-8, BOM, NUL, CRLF, tabs, a cut."""
    how = draw(st.sampled_from(("latin1", "bom", "nul", "crlf", "tab", "cut", "invalid-start")))
    at = draw(st.integers(0, max(len(data) - 1, 0)))
    if how == "latin1":
        return data[:at] + b"\xe9" + data[at:]
    if how == "invalid-start":
        return draw(st.sampled_from((b"\xff\xfe", b"\x80", b"\xc3\x28", b"\xed\xa0\x80"))) + data
    if how == "bom":
        return b"\xef\xbb\xbf" + data
    if how == "nul":
        return data[:at] + b"\x00" + data[at:]
    if how == "crlf":
        return data.replace(b"\n", b"\r\n")
    if how == "tab":
        return data.replace(b"  ", b"\t", 1)
    return data[:at]


def _folder_layout(draw, cfg: bytes) -> tuple[tuple[str, bytes | None], ...]:
    """Usually model/config.json; sometimes no config.json, or config.json a directory."""
    layout = draw(st.sampled_from(("normal",) * 30 + ("missing", "config-is-dir")))
    if layout == "missing":
        return (("model", None),)
    if layout == "config-is-dir":
        return (("model/config.json", None),)
    return (("model/config.json", cfg),)


gpu_texts = st.one_of(
    st.sampled_from(GPU_WORDS),
    st.builds(lambda n, w, sep: f"{n}{sep}{w}", st.one_of(st.integers(-3, 20), st.sampled_from((10**6, 10**30))),
              st.sampled_from(GPU_WORDS), st.sampled_from(("x", "x ", " x ", "×", "*", "X"))),
    st.lists(st.sampled_from(GPU_WORDS), min_size=1, max_size=4).map(",".join),
    _text,
)
headroom_texts = st.one_of(st.sampled_from(EDGE_STRINGS), _text)
#: What users type as MODEL when it is not the folder: paths, ids, `~user`, control characters.
model_texts = st.one_of(
    st.builds(lambda prefix, t: prefix + t, st.sampled_from(("./", "../", "/", "~", "~/", "org/", "")), _text),
    st.sampled_from(("", " ", ".", "..", "~nosuchuser/m", "a\nb", "./a\nb", "org/x\ny", "a\x0bb", "-", "--help",
                     "meta-llama/Llama-3.2-1B", "META-LLAMA/llama-3.2-1b", "x" * 200, "org/" + "n" * 97)),
)


@st.composite
def config_cases(draw) -> Case:
    """`fitplan check FOLDER --gpu G [--headroom H]` with a generated config.json."""
    files = _folder_layout(draw, draw(config_bytes()))
    gpu = draw(st.sampled_from(("rtx4090", "rtx4090", "2xa100-80gb", "t4", "fuzz")))
    if gpu == "fuzz":
        gpu = draw(gpu_texts)
    argv = ["check", f"--gpu={gpu}", "--no-cache"]
    if _one_in(draw, 10):
        argv.append(f"--headroom={draw(headroom_texts)}")
    model = draw(model_texts) if _one_in(draw, 12) else "{D}/model"
    return Case("config", files, (*argv, "--", model))


plausible_kwargs = st.fixed_dictionaries({}, optional={
    "context": st.integers(1, 65536), "batch": st.integers(1, 16), "precision": st.sampled_from(PRECISIONS),
    "headroom": st.sampled_from(("10%", "1GiB", 0.05, 0)), "offload": st.booleans(),
    "prefer": st.sampled_from(("quality", "memory", "speed")),
})
api_kwargs = st.one_of(plausible_kwargs, st.fixed_dictionaries({}, optional={
    "context": st.one_of(st.integers(-5, 10**9), edge_ints, scalars),
    "batch": st.one_of(st.integers(-2, 100), edge_ints, scalars),
    "precision": st.one_of(st.sampled_from(PRECISIONS + ("BF16", "int4", "")), scalars),
    "min_precision": st.one_of(st.sampled_from(PRECISIONS), scalars),
    "prefer": st.one_of(st.sampled_from(("quality", "memory", "speed", "QUALITY")), scalars),
    "headroom": st.one_of(st.sampled_from(EDGE_STRINGS), scalars, st.floats(-1, 2)),
    "offload": st.one_of(st.booleans(), scalars),
    "gpu": st.one_of(gpu_texts, scalars, values),
    "revision": st.one_of(st.none(), st.just("main"), scalars),
    "offline": st.one_of(st.none(), st.booleans(), scalars),
    "token": st.one_of(st.none(), scalars),
    "hardware": st.one_of(st.just("{D}/model/config.json"), st.just("{D}"), scalars),
}))


@st.composite
def api_cases(draw) -> Case:
    """`fitplan.plan(FOLDER, **kwargs)` with a generated config.json and loosely typed arguments."""
    files = _folder_layout(draw, draw(config_bytes()))
    kwargs = draw(api_kwargs)
    if "gpu" not in kwargs and "hardware" not in kwargs and not _one_in(draw, 4):
        kwargs["gpu"] = "rtx4090"  # otherwise it probes this machine (no NVML here: CPU only)
    model = draw(st.one_of(st.just("{D}/model"), st.just("{D}/model"), st.just("{D}/model"), model_texts, scalars))
    return Case("api", files, api=(("model", model), *sorted(kwargs.items())))


# YAML: profiles and hardware files -------------------------------------------------------------------

gpu_entries = st.one_of(
    st.sampled_from(GPU_WORDS[:7]),
    st.builds(lambda n, w: f"{n}x {w}", st.integers(1, 4), st.sampled_from(GPU_WORDS[:7])),
    st.fixed_dictionaries({"gpu": st.sampled_from(GPU_WORDS[:7])},
                          optional={"free": st.sampled_from(("8GiB", "1GiB", "20000MiB")), "count": st.integers(1, 4)}),
    st.fixed_dictionaries({"name": st.sampled_from(("Test GPU", "NVIDIA L40S", "My Card")),
                           "memory": st.sampled_from(("24GiB", "48GB", "80000MiB", "12GiB")),
                           "compute_capability": st.sampled_from(("8.6", "8.9", "7.5", "9.0"))},
                          optional={"bandwidth_gbs": st.integers(100, 5000), "count": st.integers(1, 2)}),
)
hardware_dicts = st.fixed_dictionaries({"gpus": st.lists(gpu_entries, max_size=4)},
                                       optional={"cpu_ram": st.sampled_from(("16GiB", "64GiB", "512GiB", 0))})
profile_dicts = st.fixed_dictionaries({"model": st.sampled_from(SMALL_MODELS)}, optional={
    "revision": st.just("main"),
    "workload": st.fixed_dictionaries({}, optional={"context": st.integers(1, 32768), "batch": st.integers(1, 8)}),
    "hardware": st.one_of(st.just("auto"), hardware_dicts),
    "constraints": st.fixed_dictionaries({}, optional={
        "precision": st.sampled_from(PRECISIONS), "min_precision": st.sampled_from(PRECISIONS),
        "prefer": st.sampled_from(("quality", "memory", "speed")), "headroom": st.sampled_from(("10%", "1.5GiB", 0.2)),
        "offload": st.booleans()}),
})


def _paths(doc: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path into nested dicts/lists, the root included."""
    out = [prefix]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += _paths(v, prefix + (i,))
    return out


@st.composite
def mutated_yaml(draw, base: st.SearchStrategy) -> bytes:
    """A valid document with one to three things wrong: a value, a key, a type, or raw YAML syntax."""
    doc = draw(base)
    raws: list[str] = []
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(_paths(doc)))
        if not path:
            doc = {**doc, draw(st.one_of(_text, st.sampled_from(("modle", "gpu", "context", "Model")))): draw(values)}
            continue
        parent = doc
        for step in path[:-1]:
            parent = parent[step]
        op = draw(st.sampled_from(("value", "value", "raw", "delete", "unknown-key", "none")))
        if op == "delete":
            del parent[path[-1]]
        elif op == "unknown-key" and isinstance(parent, dict):
            parent[draw(st.one_of(_text, st.sampled_from(("contxt", "Batch", "gpus", "free", "count"))))] = \
                parent.pop(path[-1])
        elif op == "raw":  # a placeholder replaced by raw YAML text after dumping
            raws.append(draw(st.sampled_from(RAW_YAML)))
            parent[path[-1]] = f"RAWYAML{len(raws) - 1}END"
        else:
            parent[path[-1]] = None if op == "none" else draw(values)
    text = yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, default_flow_style=draw(st.booleans()))
    for i, raw in enumerate(raws):
        if "\n" in raw:  # a block scalar: indent its body under the placeholder's own indentation
            m = re.search(rf"^( *).*RAWYAML{i}END", text, re.M)
            indent = (m.group(1) if m else "") + "  "
            raw = raw.replace("\n  ", "\n" + indent)
        text = text.replace(f"RAWYAML{i}END", raw)
    data = text.encode()
    return _corrupt(draw, data) if _one_in(draw, 6) else data


@st.composite
def alias_bomb(draw, key: str) -> bytes:
    """"Billion laughs": each level refers to the one below `fan` times; expands to fan**levels values."""
    levels, fan = draw(st.integers(2, 12)), draw(st.integers(2, 10))
    as_map = draw(st.booleans())
    lines = ["l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for i in range(1, levels + 1):
        if as_map:
            lines.append(f"l{i}: &l{i} {{" + ", ".join(f"k{j}: *l{i - 1}" for j in range(fan)) + "}")
        else:
            lines.append(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * fan) + "]")
    lines.append(f"{key}: *l{levels}")
    if draw(st.booleans()):  # merge keys expand too
        lines.append("m: {<<: [" + ", ".join(f"*l{i}" for i in range(1, min(levels, 4) + 1)) + "]}")
    return ("\n".join(lines) + "\n").encode()


@st.composite
def deep_nesting(draw) -> bytes:
    n = draw(st.sampled_from((20, 49, 50, 51, 60, 200, 1000, 5000, 100_000)))
    style = draw(st.sampled_from(("flow-list", "flow-map", "block")))
    if style == "flow-list":
        return ("model: " + "[" * n + "]" * n + "\n").encode()
    if style == "flow-map":
        return ("model: " + "{a: " * n + "1" + "}" * n + "\n").encode()
    n = min(n, 700)  # block nesting costs n**2 bytes of indentation
    return "".join(f"{' ' * i}a{i}:\n" for i in range(n)).encode() + b" " * n + b"x\n"


def yaml_files(base: st.SearchStrategy, bomb_key: str) -> st.SearchStrategy:
    """Any YAML-ish file: mostly mutated valid documents, plus every classic way to break a parser."""
    return st.one_of(
        mutated_yaml(base), mutated_yaml(base), mutated_yaml(base), mutated_yaml(base),
        base.map(lambda d: yaml.safe_dump(d, sort_keys=False).encode()),  # valid: must plan or reject cleanly
        base.map(lambda d: yaml.safe_dump(d, sort_keys=False).encode()).flatmap(
            lambda b: st.integers(0, max(len(b) - 1, 0)).map(lambda k: b[:k])),  # truncated
        st.builds(lambda v: yaml.safe_dump(v).encode(), values),  # any structure at the top level
        alias_bomb(bomb_key), deep_nesting(),
        st.binary(max_size=300),
        _text.map(str.encode),
        st.sampled_from((b"", b"\n", b"   \n\t\n", b"# only a comment\n", b"---\n", b"~\n", b"null\n", b"...\n",
                         b"---\nmodel: a\n---\nmodel: b\n", b"\xef\xbb\xbf", b"\xff\xfe" + "a: 1".encode("utf-16-le"),
                         b"#" * (1 << 20) + b"\nmodel: x\n")),
    )


@st.composite
def profile_cases(draw, check: bool) -> Case:
    """`fitplan profile validate FILE`, or `fitplan check --profile FILE --gpu G` with FITPLAN_* noise."""
    files = (("profile.yaml", draw(yaml_files(profile_dicts, "model"))),)
    if not check:
        return Case("profile-validate", files, ("profile", "validate", "{D}/profile.yaml"))
    env = draw(st.dictionaries(
        st.sampled_from(("FITPLAN_CONTEXT", "FITPLAN_BATCH", "FITPLAN_PRECISION", "FITPLAN_MIN_PRECISION",
                         "FITPLAN_PREFER", "FITPLAN_HEADROOM", "FITPLAN_OFFLOAD", "FITPLAN_MODEL", "FITPLAN_GPU",
                         "FITPLAN_REVISION")),
        st.one_of(st.sampled_from(EDGE_STRINGS), _text), max_size=2)) if _one_in(draw, 4) else {}
    argv = ["check", "--profile", "{D}/profile.yaml"]
    if "FITPLAN_GPU" not in env or draw(st.booleans()):
        argv.append(f"--gpu={draw(st.sampled_from(('rtx4090', 'rtx3060', '2xa100-80gb')))}")
    return Case("profile-check", files, tuple(argv), env=tuple(sorted(env.items())))


@st.composite
def hardware_cases(draw) -> Case:
    """`fitplan check FOLDER --hardware FILE` for a fixed small model and a generated hardware file."""
    files = (("hw.yaml", draw(yaml_files(hardware_dicts, "gpus"))),)
    return Case("hardware", files, ("check", "{M}", "--hardware", "{D}/hw.yaml"))


def default_config_case(model_type: str) -> Case:
    """`fitplan check` of a folder whose config.json names only `model_type`: transformers' defaults."""
    return Case("defaults", (("model/config.json", _json_bytes({"model_type": model_type})),),
                ("check", "{D}/model", "--gpu=rtx4090", "--no-cache"))


#: Every target with its share of a run (the `defaults` sweep comes on top).
TARGETS: dict[str, tuple[float, st.SearchStrategy]] = {
    "config": (0.40, config_cases()),
    "api": (0.15, api_cases()),
    "profile-validate": (0.15, profile_cases(False)),
    "profile-check": (0.15, profile_cases(True)),
    "hardware": (0.15, hardware_cases()),
}

# -- running one case and judging it ------------------------------------------------------------------


class Hang(BaseException):
    """Raised by the alarm inside a case that ran past the hard limit. A BaseException, so that no
    `except Exception` in the code under test can swallow it."""


@contextlib.contextmanager
def _alarm(seconds: float):
    if seconds <= 0 or not hasattr(signal, "setitimer"):
        yield
        return

    def fire(signum, frame):
        raise Hang(f"still running after {seconds:g} s")

    old = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


@dataclass(frozen=True)
class Outcome:
    """What one case did. `status`: ok | rejected | traceback | hang | bad-exit | bad-stderr."""

    status: str
    code: int | None
    message: str
    seconds: float
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.status in ("ok", "rejected")


@dataclass
class Sandbox:
    """The folders cases write into. `model` is a small model folder `hardware` cases plan (its
    inventory cached after the first case, as a user's repeated `check` would be)."""

    root: Path
    model: Path = field(init=False)
    case: Path = field(init=False)

    def __post_init__(self):
        self.model = self.root / "planned-model"
        self.case = self.root / "case"
        self.model.mkdir(parents=True, exist_ok=True)
        (self.model / "config.json").write_text(json.dumps(REAL_CONFIGS[BASE_CONFIG]))

    def prepare(self, case: Case) -> None:
        shutil.rmtree(self.case, ignore_errors=True)
        self.case.mkdir(parents=True)
        for rel, data in case.files:
            path = self.case / rel
            if data is None:
                path.mkdir(parents=True, exist_ok=True)
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)

    def fill(self, value: Any) -> Any:
        if isinstance(value, str):
            return value.replace("{D}", str(self.case)).replace("{M}", str(self.model))
        return value


def run_case(case: Case, box: Sandbox, *, deadline: float, hard_limit: float = 120.0) -> Outcome:
    """Run `case` in this process and judge it against the property (see the module docstring)."""
    box.prepare(case)
    start = time.perf_counter()
    try:
        with _alarm(hard_limit):
            out = _run_api(case, box) if case.api is not None else _run_cli(case, box)
    except Hang as h:
        return Outcome("hang", None, str(h), time.perf_counter() - start,
                       "".join(traceback.format_exception(h)))
    seconds = time.perf_counter() - start
    if out.ok and seconds > deadline:
        return Outcome("hang", out.code, f"took {seconds:.1f} s (deadline {deadline:g} s): {out.message}", seconds)
    return Outcome(out.status, out.code, out.message, seconds, out.detail)


def _run_cli(case: Case, box: Sandbox) -> Outcome:
    from click.testing import CliRunner

    from fitplan.cli.main import main

    argv = [box.fill(a) for a in case.argv]
    result = CliRunner().invoke(main, argv, env=dict(case.env) or None)
    exc = result.exception
    if isinstance(exc, Hang):
        raise exc
    if exc is not None and not isinstance(exc, SystemExit):
        tb = "".join(traceback.format_exception(*result.exc_info)) if result.exc_info else repr(exc)
        return Outcome("traceback", result.exit_code, f"{type(exc).__name__}: {_one(exc)}", 0.0, tb)
    code, err = result.exit_code, result.stderr
    if "Traceback" in err or "Traceback" in result.stdout:
        return Outcome("traceback", code, "a traceback was printed", 0.0, err + result.stdout)
    if code in (0, 1):
        return Outcome("ok", code, "", 0.0)
    if code != 2:
        return Outcome("bad-exit", code, f"exit code {code}", 0.0, err)
    lines = err.splitlines()
    # one line per problem: `profile validate` lists every problem of a file, every other command the first
    many = case.argv[:2] == ("profile", "validate")
    if (not lines or (len(lines) != 1 and not many)
            or not all(line.startswith("fitplan: error: ") and line[16:].strip() for line in lines)):
        return Outcome("bad-stderr", code, f"stderr is not 'fitplan: error:' lines, one per problem "
                       f"({len(lines)} lines)", 0.0, err)
    return Outcome("rejected", code, lines[0][16:], 0.0)


def _run_api(case: Case, box: Sandbox) -> Outcome:
    import fitplan
    from fitplan.cli.errors import exit_code
    from fitplan.errors import FitplanError

    kwargs = {k: box.fill(v) for k, v in case.api}
    model = kwargs.pop("model")
    try:
        p = fitplan.plan(model, **kwargs)
    except FitplanError as err:
        msg = str(err)
        if "\n" in msg or not msg.strip():
            return Outcome("bad-stderr", 2, f"{type(err).__name__} message is not one line", 0.0, msg)
        return Outcome("rejected", exit_code(err), msg, 0.0)
    except Exception as exc:  # noqa: BLE001 - anything else escaping the API is the bug we look for
        return Outcome("traceback", None, f"{type(exc).__name__}: {_one(exc)}", 0.0, traceback.format_exc())
    from fitplan.planning.plan import Plan

    if not isinstance(p, Plan):
        return Outcome("bad-exit", None, f"plan() returned {type(p).__name__}", 0.0)
    return Outcome("ok", 0 if p.fits else 1, "", 0.0)


def _one(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300]


_PATTERNS = (
    (re.compile(r"(?<![\w.])(/[\w.@+-]+)+/?"), "PATH"),
    (re.compile(r"'(?:[^'\\]|\\.)*'"), "'…'"),
    (re.compile(r'"(?:[^"\\]|\\.)*"'), '"…"'),
    (re.compile(r"\b0x[0-9a-fA-F]+\b"), "0xN"),
    (re.compile(r"(?<![A-Za-z_])-?\d[\d,_.]*(e[+-]?\d+)?"), "N"),
)


def message_class(message: str) -> str:
    """An error line with its specifics (paths, quoted values, numbers) blanked, to count kinds."""
    for pattern, repl in _PATTERNS:
        message = pattern.sub(repl, message)
    return message[:160]


def rss_bytes() -> int:
    """Peak resident set size of this process so far (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def isolate_environment(root: Path) -> None:
    """No FITPLAN_* from the caller, an empty inventory cache and HF home, never the network."""
    for key in [k for k in os.environ if k.startswith("FITPLAN_")]:
        del os.environ[key]
    os.environ["FITPLAN_CACHE"] = str(root / "fitplan-cache")
    os.environ["HF_HOME"] = str(root / "hf-home")
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"


def settle() -> None:
    """After the warm-up: freeze what exists now (imports, caches) out of the cyclic GC. In a fresh
    `fitplan` process those are the only long-lived objects; in a long in-process run, every
    gen-2 collection would also walk them, and per-input times would drift up with run length
    (a 256-layer build measured 5.5-10.6 s unfrozen, 6.2-7.1 s frozen)."""
    gc.collect()
    gc.freeze()


def count_builds() -> Counter:
    """Count calls of `fitplan.model.hf.build_meta_model`: how many inputs reached a real meta build."""
    from fitplan.model import hf

    counter: Counter = Counter()
    original = hf.build_meta_model

    def counted(cls, config, dtype):
        counter["builds"] += 1
        return original(cls, config, dtype)

    hf.build_meta_model = counted
    return counter
