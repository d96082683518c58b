"""The shipped offline catalogue: published config.json values of popular models, their index, and `fitplan models`.

`fitplan check Qwen/Qwen3-8B` answers offline from these files, so each one must be a config
transformers can build, and the model it builds must have the parameter count its authors published
where a precise figure exists. That count is the safety net for a mistyped or outdated config: a wrong
hidden size, layer count, expert count, head dim or vocabulary moves it by far more than allowed.

Tolerance: 0.5%, or half the unit a published figure was rounded to (`parameters_rounded_to`: "117B" is
rounded to 1B, so it allows 0.5B) when that is larger; a figure rounded by more than 2.5% is too coarse
to check anything and is refused. Every entry names where its config values came from (`source`). An entry fitplan cannot plan
yet carries `fails`, the start of today's refusal; the test checks the marker stays true, so whoever
teaches fitplan that architecture updates the catalogue.

Parameter counts are fitplan's own (`build_inventory`, which counts a tied lm_head once); for entries
marked `fails`, transformers' class named in `architectures`, built on the meta device, untied.
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
MAX_ROUNDING = 0.025
ENTRY_KEYS = {"file", "source", "parameters", "parameters_source", "gated"}
OPTIONAL_KEYS = {"fails", "parameters_rounded_to"}
# Keys whose published value must survive transformers' config parsing unchanged: a key the
# config class ignored or renamed would make the meta build below describe a different model.
# (Not sliding_window: Qwen2Config drops it on purpose when use_sliding_window is false.)
STRUCTURAL = (
    "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "head_dim", "vocab_size", "num_local_experts", "num_experts",
    "num_experts_per_tok", "n_embd", "n_layer", "n_head", "ffn_dim", "word_embed_proj_dim",
    "max_position_embeddings", "n_positions", "tie_word_embeddings", "moe_intermediate_size",
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


def _catalogued_files() -> set[str]:
    return {e["file"] for e in CATALOGUE.values()}


@functools.lru_cache(maxsize=None)
def _fitplan_build(file: str):
    """fitplan's inventory of the shipped config, or the FitplanError it refuses it with, built as a plan
    builds it: with the count the checkpoint stores, where the catalogue has an exact one (it decides
    whether a tied lm_head is stored apart)."""
    from fitplan.errors import FitplanError
    from fitplan.model.build import build_inventory
    from fitplan.model.sources import catalogue_entry

    repo_id = next(r for r, e in CATALOGUE.items() if e["file"] == file) if file in _catalogued_files() else None
    stored = catalogue_entry(repo_id).stored_parameters if repo_id else None
    try:
        return build_inventory(_published_config(file), model_id=file, stored_parameters=stored)
    except FitplanError as e:
        return e


@functools.lru_cache(maxsize=None)
def _transformers_count(file: str) -> int:
    """Parameters of the class named in `architectures`, built by transformers on meta, untied, as the checkpoint
    stores them. (A meta build of Mistral3 ties lm_head by Mistral3Config's default tie_word_embeddings=True;
    loading a checkpoint that holds both keeps them apart, so a plan of these models must not trust the tie.)"""
    import torch
    import transformers
    from transformers import AutoConfig

    cfg = _published_config(file)
    config = AutoConfig.for_model(**cfg)
    with torch.device("meta"):
        model = getattr(transformers, cfg["architectures"][0])(config)
    return sum(p.numel() for _, p in model.named_parameters(remove_duplicate=False))


def _counted(file: str) -> int:
    built = _fitplan_build(file)
    return _transformers_count(file) if isinstance(built, Exception) else built.parameters


def _rounding(entry: dict) -> int:
    """Half the unit the published figure was rounded to (0 for an exact count)."""
    return entry.get("parameters_rounded_to", 0) // 2


def test_catalogue_is_big_enough_to_matter():
    canonical = [r for r, e in CATALOGUE.items() if e["file"] == _canonical_file(r)]
    assert len(canonical) >= 60


@pytest.mark.parametrize("repo_id", sorted(CATALOGUE))
def test_entry_is_well_formed(repo_id):
    entry = CATALOGUE[repo_id]
    assert ENTRY_KEYS <= set(entry) <= ENTRY_KEYS | OPTIONAL_KEYS, repo_id
    assert REPO_ID.match(repo_id), repo_id
    assert isinstance(entry["source"], str) and len(entry["source"].strip()) > 20, repo_id
    assert isinstance(entry["gated"], bool)
    p = entry["parameters"]
    if p is not None:
        assert isinstance(p, int) and not isinstance(p, bool) and p > 0
        assert isinstance(entry["parameters_source"], str) and entry["parameters_source"].strip()
        unit = entry.get("parameters_rounded_to", 1)
        assert isinstance(unit, int) and unit >= 1 and p % unit == 0, repo_id
        assert _rounding(entry) <= MAX_ROUNDING * p, f"{repo_id}: {p:,} is too coarse a figure to check a config"
    else:
        assert entry["parameters_source"] is None and "parameters_rounded_to" not in entry, repo_id
    assert "fails" not in entry or (isinstance(entry["fails"], str) and entry["fails"].strip())


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
def test_config_is_a_published_model_config(file):
    cfg = _published_config(file)
    assert isinstance(cfg, dict) and isinstance(cfg.get("model_type"), str), file
    archs = cfg.get("architectures")
    assert isinstance(archs, list) and len(archs) == 1, file
    # OPT-6.7b's published config names its base class; vision-language models their generation class.
    assert re.search(r"(ForCausalLM|LMHeadModel|ForConditionalGeneration|^OPTModel)$", archs[0]), (file, archs)
    # What the Hub serves: no local paths or training leftovers in the published file.
    name = cfg.get("_name_or_path")
    assert name is None or not name.startswith(("/", ".")), (file, name)
    if "quantization_config" in cfg:  # pre-quantized as published (gpt-oss mxfp4, DeepSeek fp8): a layout fitplan knows
        from fitplan.model.prequant import scheme_of

        assert scheme_of(cfg["quantization_config"]).known, file


@pytest.mark.parametrize("file", sorted(_config_files()))
def test_transformers_builds_the_config_without_losing_fields(file):
    from transformers import AutoConfig

    cfg = _published_config(file)
    config = AutoConfig.for_model(**cfg)
    assert config.model_type == cfg["model_type"]
    for key in STRUCTURAL:
        if key in cfg:
            assert getattr(config, key) == cfg[key], (file, key)
    for key in STRUCTURAL:  # a vision-language model's language model
        if key in cfg.get("text_config", {}):
            assert getattr(config.get_text_config(), key) == cfg["text_config"][key], (file, key)


@pytest.mark.parametrize("repo_id", sorted(CATALOGUE))
def test_fitplan_plans_it_or_the_fails_marker_says_why(repo_id):
    entry = CATALOGUE[repo_id]
    built = _fitplan_build(entry["file"])
    if "fails" in entry:
        assert isinstance(built, Exception), f"{repo_id} plans now: drop its 'fails' marker"
        assert str(built).startswith(entry["fails"]), (repo_id, str(built))
    elif _refused_before(entry["file"]):
        assert isinstance(built, Exception) and "transformers" in str(built), (repo_id, built)
    else:
        assert not isinstance(built, Exception), f"{repo_id}: {built}"


def _refused_before(file: str) -> bool:
    """A hybrid whose state a transformers 5.0 meta forward cannot read is refused there with the
    version named (docs/models.md, Known limits); 5.17 and later plan it."""
    from fitplan.model import hf

    return _published_config(file)["model_type"] == "qwen3_next" and hf.version_tuple() < (5, 17)


@pytest.mark.parametrize("repo_id", sorted(r for r, e in CATALOGUE.items() if e["parameters"] is not None))
def test_parameter_count_matches_the_published_figure(repo_id):
    entry = CATALOGUE[repo_id]
    counted, published = _counted(entry["file"]), entry["parameters"]
    allowed = max(TOLERANCE * published, _rounding(entry))
    assert abs(counted - published) <= allowed, (
        f"{repo_id}: fitplan counts {counted:,} parameters from the shipped config, published is "
        f"{published:,} ({entry['parameters_source']})")


def _tied_files() -> list[str]:
    """Files whose model ties lm_head to the embedding (by flag, or by the class's default)."""
    tied = []
    for file in sorted(_config_files()):
        cfg = _published_config(file)
        if "text_config" in cfg:
            continue
        if cfg.get("tie_word_embeddings") or cfg.get("model_type") in {"gpt2", "opt", "gemma2", "gemma3_text"}:
            tied.append(file)
    return tied


@pytest.mark.parametrize("file", _tied_files())
def test_tied_embeddings_are_counted_once(file):
    """Tied models (Llama 3.2, small Qwen, Gemma, GPT-2, OPT) would be over-counted by a whole
    vocabulary x hidden matrix if the lm_head were counted separately."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**_published_config(file)))
    model.tie_weights()
    head, embed = model.get_output_embeddings().weight, model.get_input_embeddings().weight
    assert head is embed, file
    with_duplicates = sum(p.numel() for _, p in model.named_parameters(remove_duplicate=False))
    assert with_duplicates - model.num_parameters() == embed.numel(), file
    assert _fitplan_build(file).parameters == model.num_parameters(), file


# -- fitplan models ------------------------------------------------------------------------------------

def test_models_json_is_json_only_and_lists_every_entry():
    from click.testing import CliRunner

    from fitplan.cli.main import main

    result = CliRunner().invoke(main, ["models", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)  # nothing but the JSON on stdout
    assert {r["id"] for r in rows} == set(CATALOGUE)
    oss = next(r for r in rows if r["id"] == "openai/gpt-oss-120b")
    assert oss["quantization"] == "mxfp4" and oss["parameters"] == CATALOGUE["openai/gpt-oss-120b"]["parameters"]
    assert all(r["source"] for r in rows)


def test_models_text_lines_stay_under_100_columns_and_name_each_source():
    from click.testing import CliRunner

    from fitplan.cli.main import main

    result = CliRunner().invoke(main, ["models"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert max(len(line) for line in lines) < 100
    assert sum(1 for line in lines if line.startswith("    config: ")) == len(CATALOGUE)
    assert any(line.startswith("Qwen/Qwen3-8B ") for line in lines)


def test_a_near_miss_offline_suggests_the_catalogue_id():
    from fitplan.errors import HubError
    from fitplan.model.sources import resolve

    with pytest.raises(HubError, match=r"did you mean 'openai/gpt-oss-120b'\?"):
        resolve("openai/gpt-oss-12b", offline=True)
    with pytest.raises(HubError) as err:
        resolve("someone/entirely-different", offline=True)
    assert "did you mean" not in str(err.value)
