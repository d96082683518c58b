"""config.json's size fields, checked before anything is built and read after.

Absurd or malformed sizes are refused with the field's name before a meta-device build could hang
on them (`check_config_fields`); after the build, `size_field` reads a whole-model size the estimate
needs, from a per-layer list or a heterogeneous config where transformers allows one.
"""
from __future__ import annotations

from ..errors import ConfigError

#: Limits on config fields that would make even a meta-device build hang or make no sense. The
#: deepest real checkpoints have ~130 layers (Llama-3.1-405B: 126); a meta build and forward costs
#: ~20 ms per layer on a 2-core CPU, so 2048 layers took 25-40 s (benchmarks/fuzz.py), 256 take 5-7 s.
_MAX_LAYERS = 256
_MAX_DIM = 1 << 24


def _positive_int(cfg: dict, key: str, limit: int, *, per_layer: bool = False, where: str = "",
                  zero: bool = False) -> None:
    """`cfg[key]`, when present, is a whole number in 1..limit; with `per_layer`, a list of them (one
    per layer, as Gemma 3n's `intermediate_size`) is accepted too, where 0 marks a layer without it."""
    v = cfg.get(key)
    if v is None:
        return
    name = f"{where}{key}"
    if per_layer and isinstance(v, list) and v:
        if not all(type(x) is int for x in v):
            raise ConfigError(f"config.json: '{name}' must be a whole number or a list of them (one per layer), "
                             f"got {v!r:.60}", key=name)
        if not all(0 <= x <= limit for x in v) or not any(v):
            raise ConfigError(f"config.json: '{name}' = {v!r:.60} is out of range (0..{limit} per layer, one above 0); "
                             "is this a real model config?", key=name)
        return
    if isinstance(v, bool) or not isinstance(v, int):
        raise ConfigError(f"config.json: '{name}' must be a whole number, got {v!r:.60}", key=name)
    if not (0 if zero else 1) <= v <= limit:
        raise ConfigError(f"config.json: '{name}' = {v} is out of range ({0 if zero else 1}..{limit}); is this a real "
                         "model config?", key=name)


_LAYER_COUNT_KEYS = ("num_hidden_layers", "n_layer", "num_layers")
_SIZE_KEYS = ("hidden_size", "n_embd", "intermediate_size", "ffn_dim", "n_inner", "head_dim", "num_attention_heads",
              "n_head", "num_key_value_heads", "num_kv_heads", "vocab_size", "num_local_experts", "num_experts",
              "moe_intermediate_size")


#: Fields where 0 means "none" (a dense Granite-4.0-H: `num_local_experts` 0).
_ZERO_MEANS_NONE = ("num_local_experts", "num_experts", "moe_intermediate_size")


def check_config_fields(cfg: dict) -> None:
    """Reject configs that cannot describe a real model before anything is built from them.

    The sub-configs of a combined config (`text_config`, `vision_config`, ...) are checked the same
    way, and so are the entries of a heterogeneous config's `per_layer_config`."""
    if not isinstance(cfg, dict):
        raise ConfigError("config.json must be a JSON object", key=None)
    mt = cfg.get("model_type")
    if not isinstance(mt, str) or not mt:
        raise ConfigError("config.json has no 'model_type'; fitplan needs it to know the architecture",
                          key="model_type")
    _check_sizes(cfg, "")


def _check_sizes(cfg: dict, where: str, depth: int = 0) -> None:
    zero = depth > 0  # transformers' own sub-configs write 0 for "derived" (GLM-5-Next's text head_dim)
    for key in _LAYER_COUNT_KEYS:
        _positive_int(cfg, key, _MAX_LAYERS, where=where, zero=zero)
    for key in _SIZE_KEYS:
        _positive_int(cfg, key, _MAX_DIM, per_layer=True, where=where, zero=zero or key in _ZERO_MEANS_NONE)
    if depth >= 2:
        return
    for key, value in cfg.items():
        if isinstance(value, dict) and (key.endswith("_config") and key != "quantization_config"):
            if key == "per_layer_config":
                for layer, entry in value.items():
                    if isinstance(entry, dict):
                        _check_sizes(entry, f"{where}{key}.{layer}.", depth + 1)
            else:
                _check_sizes(value, f"{where}{key}.", depth + 1)
