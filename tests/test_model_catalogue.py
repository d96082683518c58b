"""The shipped offline catalogue: real config.json files of popular models, and their index.

`fitplan check meta-llama/Llama-3.1-8B` answers offline from these files, so each one must be a
config transformers can build, and the model it builds must have the parameter count its authors
published. That count is the safety net for a mistyped or outdated config: a wrong hidden size,
layer count, expert count, head dim or vocabulary moves it by far more than the 0.5% allowed.

Models are built once each, on the meta device (no memory, about 5 s for all of them), and
counted with `num_parameters()` after `tie_weights()`, which counts a tied lm_head once.
"""
from __future__ import annotations

import functools
import json
import re
from importlib import resources

import pytest

DATA = resources.files("fitplan") / "data"
REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")
TOLERANCE = 0.005
ENTRY_KEYS = {"file", "parameters", "parameters_source", "gated"}
# Keys whose published value must survive transformers' config parsing unchanged: a key the
# config class ignored or renamed would make the meta build below describe a different model.
# (Not sliding_window: Qwen2Config drops it on purpose when use_sliding_window is false.)
STRUCTURAL = (
    "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "head_dim", "vocab_size", "num_local_experts", "num_experts",
    "num_experts_per_tok", "n_embd", "n_layer", "n_head", "ffn_dim", "word_embed_proj_dim",
    "max_position_embeddings", "n_positions", "tie_word_embeddings",
)


def _catalogue() -> dict:
    return json.loads((DATA / "model_catalogue.json").read_text(encoding="utf-8"))


def _config_files() -> set[str]:
    return {p.name for p in (DATA / "models").iterdir() if p.name.endswith(".json")}


CATALOGUE = _catalogue()


def _canonical_file(repo_id: str) -> str:
    return repo_id.replace("/", "--") + ".json"


@functools.lru_cache(maxsize=None)
def _published_config(file: str) -> dict:
    return json.loads((DATA / "models" / file).read_text(encoding="utf-8"))


@functools.lru_cache(maxsize=None)
def _meta_model(file: str):
    """The causal LM transformers builds from the published config, weights tied, on meta."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(**_published_config(file))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    model.tie_weights()
    return model


def test_catalogue_is_big_enough_to_matter():
    canonical = [r for r, e in CATALOGUE.items() if e["file"] == _canonical_file(r)]
    assert len(canonical) >= 24


@pytest.mark.parametrize("repo_id", sorted(CATALOGUE))
def test_entry_is_well_formed(repo_id):
    entry = CATALOGUE[repo_id]
    assert set(entry) == ENTRY_KEYS, repo_id
    assert REPO_ID.match(repo_id), repo_id
    assert isinstance(entry["parameters"], int) and not isinstance(entry["parameters"], bool)
    assert entry["parameters"] > 0
    assert isinstance(entry["gated"], bool)
    assert isinstance(entry["parameters_source"], str) and entry["parameters_source"].strip()


def test_every_file_is_indexed_and_every_entry_has_its_file():
    files = _config_files()
    indexed = {e["file"] for e in CATALOGUE.values()}
    assert indexed == files, {"unindexed": files - indexed, "missing": indexed - files}


def test_each_file_is_named_after_exactly_one_canonical_repo_id():
    # Aliases (a bare "gpt2") may share a file, but the file's name must come from one real id.
    for file in _config_files():
        owners = [r for r, e in CATALOGUE.items() if e["file"] == file and _canonical_file(r) == file]
        assert len(owners) == 1, (file, owners)


def test_aliases_agree_with_their_canonical_entry():
    for repo_id, entry in CATALOGUE.items():
        if entry["file"] == _canonical_file(repo_id):
            continue
        canonical = [r for r, e in CATALOGUE.items() if _canonical_file(r) == entry["file"]]
        assert len(canonical) == 1, repo_id
        assert CATALOGUE[canonical[0]] == entry, (repo_id, canonical[0])


@pytest.mark.parametrize("file", sorted(_config_files()))
def test_config_is_a_published_causal_lm_config(file):
    cfg = _published_config(file)
    assert isinstance(cfg, dict) and isinstance(cfg.get("model_type"), str), file
    archs = cfg.get("architectures")
    assert isinstance(archs, list) and len(archs) == 1, file
    # OPT-6.7b's published config names its base class; every other one names the LM class.
    assert re.search(r"(ForCausalLM|LMHeadModel|^OPTModel)$", archs[0]), (file, archs)
    # What the Hub serves: no local paths or training leftovers in the published file.
    name = cfg.get("_name_or_path")
    assert name is None or not name.startswith(("/", ".")), (file, name)
    assert "quantization_config" not in cfg, file


@pytest.mark.parametrize("file", sorted(_config_files()))
def test_transformers_builds_the_config_without_losing_fields(file):
    from transformers import AutoConfig

    cfg = _published_config(file)
    config = AutoConfig.for_model(**cfg)
    assert config.model_type == cfg["model_type"]
    for key in STRUCTURAL:
        if key in cfg:
            assert getattr(config, key) == cfg[key], (file, key)


@pytest.mark.parametrize("repo_id", sorted(CATALOGUE))
def test_meta_build_has_the_published_parameter_count(repo_id):
    entry = CATALOGUE[repo_id]
    counted = _meta_model(entry["file"]).num_parameters()
    published = entry["parameters"]
    assert abs(counted - published) <= TOLERANCE * published, (
        f"{repo_id}: transformers builds {counted:,} parameters from the shipped config, "
        f"published is {published:,} ({entry['parameters_source']})")


def _tied_files() -> list[str]:
    """Files whose model ties lm_head to the embedding (by flag, or by the class's default)."""
    tied = []
    for file in sorted(_config_files()):
        try:
            cfg = _published_config(file)
        except ValueError:  # reported by test_config_is_a_published_causal_lm_config
            continue
        if cfg.get("tie_word_embeddings") or cfg.get("model_type") in {"gpt2", "opt", "gemma2"}:
            tied.append(file)
    return tied


@pytest.mark.parametrize("file", _tied_files())
def test_tied_embeddings_are_counted_once(file):
    """Tied models (Llama 3.2, small Qwen 2.5, Gemma 2, GPT-2, OPT) would be over-counted by a
    whole vocabulary x hidden matrix if the lm_head were counted separately."""
    model = _meta_model(file)
    head, embed = model.get_output_embeddings().weight, model.get_input_embeddings().weight
    assert head is embed, file
    with_duplicates = sum(p.numel() for _, p in model.named_parameters(remove_duplicate=False))
    assert with_duplicates - model.num_parameters() == embed.numel(), file
