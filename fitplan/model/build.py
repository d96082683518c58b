"""Build a model's `Inventory` from its config alone, the way `from_pretrained` would: the recipe.

`build_inventory` refuses what fitplan does not plan and a malformed config.json (`fields.py`) before
anything is built, then has `hf.inventory()` do the transformers steps, one after another. The model is instantiated on the meta device with the class the Auto class picks
(`AutoModelForCausalLM`: for a combined text+vision config, the language model from its text
sub-config, as transformers loads it; `AutoModelForImageTextToText`: the whole vision-language
model) and transformers' own init contexts; which layers bitsandbytes packs is then decided by the
functions transformers' bnb quantizer itself calls, so it is transformers' answer, not a name
list of ours. Meta-device forward passes through the cache `generate()` would use tell what the
cache keeps per layer (cachelayout.py): keys and values per token (grouped-query heads, head
dims, sliding windows, sparse-attention indexer keys) and recurrent and convolution state per
sequence (Mamba, linear attention, short convolutions). Nothing is materialised: absurd sizes
stay arithmetic.
"""
from __future__ import annotations

from ..errors import OptionError, UnsupportedModelError
from ..vocab.classes import AUTO_CLASSES
from .inventory import Inventory
from . import fields, hf
from .sources import decode_special_floats


def build_inventory(cfg: dict, *, model_id: str, trust_remote_code: bool = False,
                    stored_bytes: int | None = None, auto_class: str | None = None,
                    stored_parameters: int | None = None) -> Inventory:
    """The inventory of `cfg` (a config.json dict) as `auto_class` would load it ("causal-lm",
    "image-text-to-text"; None: the class the checkpoint is meant for, see `default_auto_class`).
    Raises `FitplanError`s for configs it cannot plan."""
    if auto_class == "seq2seq-lm":
        raise UnsupportedModelError("fitplan does not plan encoder-decoder models (seq2seq-lm): their encoder "
                                    "output and cross-attention cache are not sized; plan a decoder-only model",
                                    model_type=cfg.get("model_type"))
    if auto_class is not None and auto_class not in AUTO_CLASSES:
        raise OptionError(f"auto_class must be one of {', '.join(AUTO_CLASSES)}, got {auto_class!r:.40}",
                          option="auto_class")
    cfg = decode_special_floats(cfg)  # as transformers reads config.json: {"__float__": "Infinity"} is a float
    fields.check_config_fields(cfg)
    with hf.quiet():
        return hf.inventory(cfg, model_id=model_id, auto_class=auto_class, trust_remote_code=trust_remote_code,
                            stored_bytes=stored_bytes, stored_parameters=stored_parameters)
