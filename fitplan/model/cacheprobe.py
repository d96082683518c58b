"""The cache a model keeps while generating, read off meta-device forward passes.

`kv_layers_from_cache` runs the forward through the cache `generate()` would use, at two or three
(batch, length) shapes, and hands what the cache holds to `cachelayout.layout`: keys and values
per token, recurrent and convolution state per sequence. Every fact is checked where it is taken:
each layer the config calls attention must hold keys and values, each recurrent layer a state.
Where the whole model's forward cannot run on the meta device, `kv_layers_fallback` tries its
language model alone, then config fields, and only for a config that describes plain attention;
`refuse_unsized` refuses what generation would keep that fitplan does not size (cross-attention,
an encoder's output).
"""
from __future__ import annotations

import contextlib

from ..errors import LibraryChangedError, UnsupportedModelError
from .inventory import KVLayer, dtype_name
from . import cachelayout, fields, hf

@contextlib.contextmanager
def watch_sdpa(calls: list):
    """Record how the model calls `scaled_dot_product_attention` during the meta forward.

    SDPA's fused kernels (flash, memory-efficient) need no seq x seq buffer; with an explicit
    mask and key/value heads broadcast over query heads (no `enable_gqa`), PyTorch falls back to
    the math kernel, which materialises the scores like eager attention (Falcon-7B measured
    9.7 GiB of them at 2048x4 tokens on an H100).
    """
    import torch.nn.functional as F

    real = F.scaled_dot_product_attention

    def spy(query, key, value, attn_mask=None, *args, **kwargs):
        calls.append(attn_mask is not None and key.shape[-3] != query.shape[-3]
                     and not kwargs.get("enable_gqa", False))
        return real(query, key, value, attn_mask, *args, **kwargs)

    F.scaled_dot_product_attention = spy
    try:
        yield
    finally:
        F.scaled_dot_product_attention = real


def probe(model, batch: int, tokens: int, calls: list, generator=None) -> list[cachelayout.Held]:
    import torch

    ids = torch.zeros((batch, tokens), dtype=torch.long, device="meta")
    with torch.no_grad(), watch_sdpa(calls), hf.meta_autocast():
        cache = hf.forward_cache(model, ids, generator)
    return [cachelayout.Held(*entry) for entry in hf.cache_storages(cache, model)]


def kv_layers_from_cache(model, build_dtype, generator=None) -> tuple[tuple[KVLayer, ...], bool]:
    """Two (or three) meta-device forwards, each through the cache `generate()` would use: what the
    cache holds after them is the truth about its layout (see cachelayout.py): keys and values per
    token, recurrent and convolution state per sequence.

    Also returns whether attention materialises its scores through SDPA's math fallback. Every layer
    the config calls attention must hold keys and values, and every layer it calls recurrent must
    hold a state: a layout with a missing layer would plan with a missing term.
    """
    text = model.config.get_text_config(decoder=True)
    name = type(model).__name__
    calls: list = []
    shapes = cachelayout.probe_shapes(hf.compress_rates(text))
    probes = [probe(model, batch, tokens, calls if i == 0 else [], generator)
              for i, (batch, tokens) in enumerate(shapes[:2])]
    layer_count = hf.config_value(text, "num_hidden_layers")
    if type(layer_count) is not int or layer_count <= 0:
        layer_count = 1 + max((h.layer for h in probes[0] if h.layer is not None), default=0)
    args = (layer_count, dtype_name(build_dtype), build_dtype.itemsize, shapes)
    try:
        try:
            layers = cachelayout.layout(probes, *args)
        except cachelayout.NeedsConfirmation:
            layers = cachelayout.layout(probes + [probe(model, *shapes[2], [], generator)], *args)
    except cachelayout.UnknownCache as exc:
        raise UnsupportedModelError(f"{name}'s cache (transformers {hf.version()}) is not one fitplan can size: "
                                    f"{exc}", model_type=name) from None
    expected = hf.attention_layer_count(text, layer_count)
    filled = sum(1 for k in layers if k.elements_per_token > 0)
    if filled < expected:
        raise hf.changed(f"{name}'s forward filled {filled} cache layers of the {expected} attention layers its "
                         "config names")
    stateful = hf.state_layer_count(text, layer_count)
    with_state = sum(1 for k in layers if k.state_elements or k.state_fixed_bytes)
    if with_state < stateful:
        raise hf.changed(f"{name}'s forward left a recurrent state in {with_state} cache layers of the {stateful} "
                         "recurrent layers its config names")
    if not filled and not with_state:
        raise hf.changed(f"{name}'s forward kept nothing in its cache, per token or per sequence")
    return layers, any(calls)


def refuse_unsized(model) -> None:
    """Models whose generation keeps something fitplan does not size, refused with the reason."""
    name, version = type(model).__name__, hf.version()
    config = model.config
    if getattr(config, "is_encoder_decoder", False) is True:
        raise UnsupportedModelError(f"{name} is an encoder-decoder model: fitplan does not size its encoder output "
                                    "and cross-attention cache (seq2seq models are not planned)", model_type=name)
    if not model.can_generate():
        raise UnsupportedModelError(f"transformers {version} says {name} cannot generate (no generate()), so there "
                                    "is no generation for fitplan to plan", model_type=name)
    text = config.get_text_config(decoder=True)
    if hf.config_value(text, "cross_attention_layers"):
        raise UnsupportedModelError(f"{name} attends to the image through cross-attention layers whose cache holds "
                                    "the image's keys and values; fitplan does not size that cache", model_type=name)
    if hf.config_value(text, "add_cross_attention"):
        raise UnsupportedModelError(f"{name} attends to an encoder's output through cross-attention layers whose "
                                    "cache holds that output's keys and values; fitplan does not size that cache",
                                    model_type=name)


def kv_layers_fallback(model, text, exc, build_dtype) -> tuple[tuple[KVLayer, ...], bool, str]:
    """When the whole model's forward fails on the meta device, or takes no cache: its decoder alone
    (`get_decoder()`: a vision-language model's language model, whose cache is the model's cache since
    images enter as embeddings, probed as its own generate() would run it; a causal LM's base model,
    through the causal LM's cache), else config fields."""
    decoder = language_model(model)
    # BLIP-2's generate() hands the work to its language model's generate(): that one keeps the cache
    own_generate = decoder is not None and decoder.can_generate()
    if own_generate and any(part in ("crossattention", "cross_attn", "cross_attention", "encoder_attn")
                            for name, _ in decoder.named_modules() for part in name.split(".")):
        raise UnsupportedModelError(f"{type(decoder).__name__}, the language model of {type(model).__name__}, attends "
                                    "to the image through cross-attention whose cache holds the image's keys and "
                                    "values; fitplan does not size that cache", model_type=type(model).__name__)
    if decoder is not None and (own_generate or not isinstance(exc, hf.NoKVCache)):
        try:
            layers, math_sdpa = kv_layers_from_cache(decoder, build_dtype, generator=None if own_generate else model)
        except (LibraryChangedError, UnsupportedModelError):
            raise
        except Exception as decoder_exc:  # noqa: BLE001 - the decoder's failure is the one that decides
            exc = decoder_exc
        else:
            return layers, math_sdpa, (f"KV layout read from the language model alone ({type(decoder).__name__}: "
                                       f"the whole model's meta forward failed with {type(exc).__name__})")
    return (kv_layers_from_config(text, model, exc), False,
            f"KV layout taken from config fields (meta forward failed: {type(exc).__name__})")


def language_model(model):
    """The decoder inside `model`: its `language_model` where that can generate by itself (BLIP-2's and
    InstructBLIP's generate() hand the work to it), else `get_decoder()`; None if it is `model`."""
    from torch import nn

    candidates = [getattr(model, "language_model", None), getattr(getattr(model, "model", None), "language_model", None)]
    get = getattr(model, "get_decoder", None)
    try:
        candidates.append(get() if callable(get) else None)
    except Exception:  # noqa: BLE001
        pass
    modules = [c for c in candidates if isinstance(c, nn.Module) and c is not model and hasattr(c, "forward")]
    generating = [c for c in modules if callable(getattr(c, "can_generate", None)) and c.can_generate()]
    return (generating or modules or [None])[0]


#: Config fields that say a model's cache is not plain keys and values per attention head, so the
#: config-field fallback below would size it wrong: multi-head latent attention, sparse-attention
#: indexers, linear attention, Mamba-style mixers, cross-attention to an encoder.
_NOT_PLAIN_ATTENTION = ("kv_lora_rank", "index_head_dim", "index_n_heads", "linear_attn_config", "attn_type_list",
                        "layers_block_type", "mamba_d_state", "ssm_state_size", "state_size", "compress_rates",
                        "num_kv_shared_layers", "kv_sharing_modes", "cross_attention_layers")


def kv_layers_from_config(text_config, model, exc: BaseException) -> tuple[KVLayer, ...]:
    """Fallback when the meta forward fails at a data-dependent step the meta device cannot take
    (`.item()` in an older model's mask code, `nonzero`): keys and values of `kv heads x head_dim` in
    every layer, as configs commonly name them. Only for a config that describes exactly that (every
    layer full or sliding attention, nothing of `_NOT_PLAIN_ATTENTION`, no cross-attention); anything
    else is refused, since a plan with a cache sized from the wrong fields is worse than none, and so
    is a forward that fails for another reason (it would fail on a GPU too). Encoder-family
    decoders (BART's `decoder_layers`, `decoder_attention_heads`) are read from their decoder fields."""
    version, cls_name = hf.version(), type(model).__name__
    if isinstance(exc, hf.NoKVCache):
        why = exc.args[1] if len(exc.args) > 1 else "neither takes nor returns a cache"
        raise UnsupportedModelError(f"{cls_name}'s forward (transformers {version}) {why}: fitplan plans generation "
                                    "with a cache", model_type=cls_name) from None
    failure = f"transformers {version}: {type(exc).__name__}: {hf.reason(exc)[:140]}"
    if "meta" not in str(exc).lower():  # not a step the meta device cannot take: the model's own failure
        raise UnsupportedModelError(f"{cls_name} fails on this config in a generation step ({failure}), so fitplan "
                                    "cannot read its cache", model_type=cls_name) from None
    why = why_not_plain_attention(text_config)
    if not why and (hf.cache_argument(model) is None or not hf.uses_default_cache(model)):
        raise UnsupportedModelError(
            f"{cls_name}'s forward cannot run on the meta device ({failure}) and takes no DynamicCache whose layout "
            "config fields would give, so its cache cannot be sized", model_type=cls_name) from None
    if why:
        raise UnsupportedModelError(
            f"{cls_name}'s forward cannot run on the meta device ({failure}) and its config {why}, so its cache "
            "cannot be sized from config fields", model_type=cls_name) from None
    layers = fields.int_field(text_config, "decoder_layers") or fields.size_field(text_config, "num_hidden_layers")
    heads = fields.int_field(text_config, "decoder_attention_heads") or fields.size_field(text_config, "num_attention_heads")
    kv = fields.size_field(text_config, "num_key_value_heads", required=False) or heads
    head_dim = fields.size_field(text_config, "head_dim", required=False) or fields.size_field(text_config, "hidden_size") // heads
    window = hf.config_value(text_config, "sliding_window")
    window = window if isinstance(window, int) and not isinstance(window, bool) and window > 0 else None
    return tuple(KVLayer(2 * kv * head_dim, window) for _ in range(layers))


def why_not_plain_attention(text_config) -> str | None:
    for field in _NOT_PLAIN_ATTENTION:
        if hf.config_value(text_config, field) not in (None, 0, [], ()):
            return f"sets '{field}'"
    if hf.config_value(text_config, "add_cross_attention", False):
        return "adds cross-attention to an encoder"
    types = hf.config_value(text_config, "layer_types")
    if isinstance(types, (list, tuple)):
        other = sorted({t for t in types if t not in ("full_attention", "sliding_attention")}, key=str)
        if other:
            return f"has layers of type {other[0]!r:.40}"
    if getattr(text_config, "is_heterogeneous", False) is True:
        return "is heterogeneous (sizes per layer)"
    return None
