"""Build a model's `Inventory` from its config alone, the way `from_pretrained` would.

The model is instantiated on the meta device with the class the Auto class picks
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

import contextlib
import io
import warnings
from dataclasses import replace

from ..errors import InputError, LibraryChangedError, UnsupportedModelError
from .inventory import Inventory, KVLayer, TensorInfo
from . import cachelayout, hf, vision
from .source import decode_special_floats
from ..versions import lib_versions

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
            raise InputError(f"config.json: '{name}' must be a whole number or a list of them (one per layer), "
                             f"got {v!r:.60}")
        if not all(0 <= x <= limit for x in v) or not any(v):
            raise InputError(f"config.json: '{name}' = {v!r:.60} is out of range (0..{limit} per layer, one above 0); "
                             "is this a real model config?")
        return
    if isinstance(v, bool) or not isinstance(v, int):
        raise InputError(f"config.json: '{name}' must be a whole number, got {v!r:.60}")
    if not (0 if zero else 1) <= v <= limit:
        raise InputError(f"config.json: '{name}' = {v} is out of range ({0 if zero else 1}..{limit}); is this a real "
                         "model config?")


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
        raise InputError("config.json must be a JSON object")
    mt = cfg.get("model_type")
    if not isinstance(mt, str) or not mt:
        raise InputError("config.json has no 'model_type'; fitplan needs it to know the architecture")
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


@contextlib.contextmanager
def _quiet():
    """transformers logs and warns freely while building; none of it is for fitplan's user."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        hf_logging.set_verbosity(level)


def _config_object(cfg: dict, trust_remote_code: bool):
    from transformers import CONFIG_MAPPING

    model_type = cfg["model_type"]
    if model_type not in CONFIG_MAPPING:
        if cfg.get("auto_map"):
            raise UnsupportedModelError(
                f"model_type {model_type!r:.80} needs the repo's own code (trust_remote_code); fitplan only "
                "plans architectures built into transformers"
            )
        raise UnsupportedModelError(
            f"model_type {model_type!r:.80} is unknown to transformers; upgrade transformers or check config.json"
        )
    try:
        return CONFIG_MAPPING[model_type].from_dict(decode_special_floats(dict(cfg)))
    except Exception as exc:  # transformers' validation errors are of many types
        raise InputError(f"config.json is not valid for {model_type!r:.80}: {_reason(exc)}") from None


def _reason(exc: BaseException) -> str:
    """transformers' exception as one line: its messages span lines (the reason often on the second)
    and some are empty."""
    text = " ".join(str(exc).split())
    return text[:300] if text else type(exc).__name__


#: `fitplan.load()`'s names for the Auto classes fitplan plans for.
AUTO_CLASSES = {"causal-lm": "AutoModelForCausalLM", "image-text-to-text": "AutoModelForImageTextToText"}


def _mapping(auto_class: str):
    import transformers

    return getattr(transformers, AUTO_CLASSES[auto_class])._model_mapping


def default_auto_class(config) -> str:
    """The Auto class a checkpoint is meant for: image-text-to-text when its `architectures` name
    the class `AutoModelForImageTextToText` picks (a saved vision-language model: Qwen3.5, Gemma 3,
    LLaVA, ...), or when only that mapping has its config type; causal-lm otherwise."""
    causal, vlm = _mapping("causal-lm"), _mapping("image-text-to-text")
    in_causal, in_vlm = type(config) in causal, type(config) in vlm
    if in_vlm and (not in_causal or _names_class(config, vlm)):
        return "image-text-to-text"
    return "causal-lm"


def _names_class(config, mapping) -> bool:
    archs = getattr(config, "architectures", None) or []
    return hf.model_class(config, mapping).__name__ in archs


def _model_class(config, auto_class: str):
    """(model class, the config it is built from) as `AutoModelFor...from_pretrained` picks them."""
    mapping = _mapping(auto_class)
    if type(config) not in mapping:
        what = {"causal-lm": "causal-LM", "image-text-to-text": "image-text-to-text"}[auto_class]
        raise UnsupportedModelError(f"'{config.model_type}' has no {what} class in transformers "
                                    f"({AUTO_CLASSES[auto_class]} cannot load it)")
    cls = hf.model_class(config, mapping)
    return cls, hf.auto_model_config(config, cls)


def _dtype_name(dt) -> str:
    return str(dt).removeprefix("torch.")


def _tensors(model, build_dtype) -> tuple[TensorInfo, ...]:
    import torch

    keep_fp16 = hf.pattern_matcher(list(hf.keep_in_fp32_plan(model, torch.float16)))
    keep_always = hf.pattern_matcher(list(hf.keep_in_fp32_plan(model, torch.bfloat16)))
    tied_targets = hf.tied_weight_names(model)

    out = []
    named = [(n, p, False) for n, p in model.named_parameters()] + [
        (n, b, True) for n, b in model.named_buffers()
    ]
    for name, t, is_buffer in named:
        if name in tied_targets:
            continue
        if t.is_complex():  # Llama 4's rotary `freqs_ci`: held as torch.view_as_real holds it, 2 reals each
            t = torch.view_as_real(t)
        # Built under the load dtype, a tensor that came out in another dtype keeps that one.
        fixed = None if t.dtype == build_dtype else _dtype_name(t.dtype)
        keep = "always" if keep_always(name) else ("fp16" if keep_fp16(name) else None)
        out.append(
            TensorInfo(
                name=name,
                shape=tuple(int(s) for s in t.shape),
                dtype=fixed,
                keep_fp32=keep if t.is_floating_point() else None,
                buffer=is_buffer,
            )
        )
    if not any(not t.buffer and t.numel > 0 for t in out):
        raise hf.changed(f"{type(model).__name__} lists no parameters after tied weights are removed")
    return tuple(out)


@contextlib.contextmanager
def _watch_sdpa(calls: list):
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


def _probe(model, batch: int, tokens: int, calls: list, generator=None) -> list[cachelayout.Held]:
    import torch

    ids = torch.zeros((batch, tokens), dtype=torch.long, device="meta")
    with torch.no_grad(), _watch_sdpa(calls), hf.meta_autocast():
        cache = hf.forward_cache(model, ids, generator)
    return [cachelayout.Held(*entry) for entry in hf.cache_storages(cache, model)]


def _kv_layers_from_cache(model, build_dtype, generator=None) -> tuple[tuple[KVLayer, ...], bool]:
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
    probes = [_probe(model, batch, tokens, calls if i == 0 else [], generator)
              for i, (batch, tokens) in enumerate(shapes[:2])]
    layer_count = hf.config_value(text, "num_hidden_layers")
    if type(layer_count) is not int or layer_count <= 0:
        layer_count = 1 + max((h.layer for h in probes[0] if h.layer is not None), default=0)
    args = (layer_count, _dtype_name(build_dtype), build_dtype.itemsize, shapes)
    try:
        try:
            layers = cachelayout.layout(probes, *args)
        except cachelayout.NeedsConfirmation:
            layers = cachelayout.layout(probes + [_probe(model, *shapes[2], [], generator)], *args)
    except cachelayout.UnknownCache as exc:
        raise UnsupportedModelError(f"{name}'s cache (transformers {hf.version()}) is not one fitplan can size: "
                                    f"{exc}") from None
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


def _refuse_unsized(model) -> None:
    """Models whose generation keeps something fitplan does not size, refused with the reason."""
    name, version = type(model).__name__, hf.version()
    config = model.config
    if getattr(config, "is_encoder_decoder", False) is True:
        raise UnsupportedModelError(f"{name} is an encoder-decoder model: fitplan does not size its encoder output "
                                    "and cross-attention cache (seq2seq models are not planned)")
    if not model.can_generate():
        raise UnsupportedModelError(f"transformers {version} says {name} cannot generate (no generate()), so there "
                                    "is no generation for fitplan to plan")
    text = config.get_text_config(decoder=True)
    if hf.config_value(text, "cross_attention_layers"):
        raise UnsupportedModelError(f"{name} attends to the image through cross-attention layers whose cache holds "
                                    "the image's keys and values; fitplan does not size that cache")
    if hf.config_value(text, "add_cross_attention"):
        raise UnsupportedModelError(f"{name} attends to an encoder's output through cross-attention layers whose "
                                    "cache holds that output's keys and values; fitplan does not size that cache")


def _kv_layers_fallback(model, text, exc, build_dtype) -> tuple[tuple[KVLayer, ...], bool, str]:
    """When the whole model's forward fails on the meta device, or takes no cache: its decoder alone
    (`get_decoder()`: a vision-language model's language model, whose cache is the model's cache since
    images enter as embeddings, probed as its own generate() would run it; a causal LM's base model,
    through the causal LM's cache), else config fields."""
    decoder = _language_model(model)
    # BLIP-2's generate() hands the work to its language model's generate(): that one keeps the cache
    own_generate = decoder is not None and decoder.can_generate()
    if own_generate and any(part in ("crossattention", "cross_attn", "cross_attention", "encoder_attn")
                            for name, _ in decoder.named_modules() for part in name.split(".")):
        raise UnsupportedModelError(f"{type(decoder).__name__}, the language model of {type(model).__name__}, attends "
                                    "to the image through cross-attention whose cache holds the image's keys and "
                                    "values; fitplan does not size that cache")
    if decoder is not None and (own_generate or not isinstance(exc, hf.NoKVCache)):
        try:
            layers, math_sdpa = _kv_layers_from_cache(decoder, build_dtype, generator=None if own_generate else model)
        except (LibraryChangedError, UnsupportedModelError):
            raise
        except Exception as decoder_exc:  # noqa: BLE001 - the decoder's failure is the one that decides
            exc = decoder_exc
        else:
            return layers, math_sdpa, (f"KV layout read from the language model alone ({type(decoder).__name__}: "
                                       f"the whole model's meta forward failed with {type(exc).__name__})")
    return (_kv_layers_from_config(text, model, exc), False,
            f"KV layout taken from config fields (meta forward failed: {type(exc).__name__})")


def _language_model(model):
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


def _kv_layers_from_config(text_config, model, exc: BaseException) -> tuple[KVLayer, ...]:
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
                                    "with a cache") from None
    failure = f"transformers {version}: {type(exc).__name__}: {_reason(exc)[:140]}"
    if "meta" not in str(exc).lower():  # not a step the meta device cannot take: the model's own failure
        raise UnsupportedModelError(f"{cls_name} fails on this config in a generation step ({failure}), so fitplan "
                                    "cannot read its cache") from None
    why = _why_not_plain_attention(text_config)
    if not why and (hf.cache_argument(model) is None or not hf.uses_default_cache(model)):
        raise UnsupportedModelError(
            f"{cls_name}'s forward cannot run on the meta device ({failure}) and takes no DynamicCache whose layout "
            "config fields would give, so its cache cannot be sized") from None
    if why:
        raise UnsupportedModelError(
            f"{cls_name}'s forward cannot run on the meta device ({failure}) and its config {why}, so its cache "
            "cannot be sized from config fields") from None
    layers = _int_field(text_config, "decoder_layers") or _size_field(text_config, "num_hidden_layers")
    heads = _int_field(text_config, "decoder_attention_heads") or _size_field(text_config, "num_attention_heads")
    kv = _size_field(text_config, "num_key_value_heads", required=False) or heads
    head_dim = _size_field(text_config, "head_dim", required=False) or _size_field(text_config, "hidden_size") // heads
    window = hf.config_value(text_config, "sliding_window")
    window = window if isinstance(window, int) and not isinstance(window, bool) and window > 0 else None
    return tuple(KVLayer(2 * kv * head_dim, window) for _ in range(layers))


def _int_field(config, name: str) -> int | None:
    value = hf.config_value(config, name)
    return value if type(value) is int and value > 0 else None


def _why_not_plain_attention(text_config) -> str | None:
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


def _size_field(text_config, name: str, *, required: bool = True) -> int | None:
    """A whole-model size the estimate needs. A per-layer list, or a heterogeneous config's per-layer
    values, give their largest entry (the activation peak is set by the widest layer); a field that is
    missing means fitplan cannot describe this architecture."""
    value = hf.config_value(text_config, name)
    if isinstance(value, (list, tuple)) and value and all(type(v) is int or v is None for v in value):
        value = max((v for v in value if v is not None), default=None)  # None: a layer without it
    if type(value) is int and value > 0:
        return value
    unset = value in (None, 0)  # as configs write "not used"
    if unset and required:
        raise UnsupportedModelError(
            f"{text_config.model_type!r} gives no whole-model '{name}': fitplan plans decoders described by "
            "hidden_size, num_hidden_layers and vocab_size, which this architecture is not")
    if unset:
        return None
    raise InputError(f"config.json: '{name}' must be a positive whole number (or a list of them, one per layer), "
                     f"got {value!r:.40}")


def build_inventory(cfg: dict, *, model_id: str, trust_remote_code: bool = False,
                    stored_bytes: int | None = None, auto_class: str | None = None) -> Inventory:
    """The inventory of `cfg` (a config.json dict) as `auto_class` would load it ("causal-lm",
    "image-text-to-text"; None: the class the checkpoint is meant for, see `default_auto_class`).
    Raises `FitplanError`s for configs it cannot plan."""
    if auto_class == "seq2seq-lm":
        raise UnsupportedModelError("fitplan does not plan encoder-decoder models (seq2seq-lm): their encoder "
                                    "output and cross-attention cache are not sized; plan a decoder-only model")
    if auto_class is not None and auto_class not in AUTO_CLASSES:
        raise InputError(f"auto_class must be one of {', '.join(AUTO_CLASSES)}, got {auto_class!r:.40}")
    check_config_fields(cfg)
    with _quiet():
        import torch

        build_dtype = torch.bfloat16
        config = _config_object(cfg, trust_remote_code)
        auto_class = auto_class or default_auto_class(config)
        cls, build_config = _model_class(config, auto_class)
        try:
            model = hf.build_meta_model(cls, build_config, build_dtype)
        except LibraryChangedError:
            raise
        except Exception as exc:
            raise UnsupportedModelError(
                f"transformers {hf.version()} could not build {cls.__name__} from this config: {_reason(exc)}"
            ) from None
        text = model.config.get_text_config(decoder=True)
        notes: list[str] = []
        math_sdpa = False
        _refuse_unsized(model)
        try:
            kv_layers, math_sdpa = _kv_layers_from_cache(model, build_dtype)
        except (LibraryChangedError, UnsupportedModelError):
            raise
        except Exception as exc:  # a forward the meta device cannot run
            kv_layers, math_sdpa, note = _kv_layers_fallback(model, text, exc, build_dtype)
            notes.append(note)
        image_tokens = None
        if auto_class == "image-text-to-text":
            image_tokens, note = vision.image_tokens_per_image(model, config)
            notes.append(note)
        prequant = getattr(model.config, "quantization_config", None)
        method = None
        if prequant is not None:
            method = prequant.get("quant_method") if isinstance(prequant, dict) else getattr(prequant, "quant_method", None)
            method = str(getattr(method, "value", method))
        tensors = _tensors(model, build_dtype)
        if not method:  # a pre-quantized checkpoint is estimated from what it stores, not re-quantized
            packed, subclassed = hf.bnb_replaced_modules(model)
            if subclassed and not packed:
                notes.append(f"bitsandbytes quantizes none of this model's linear layers ({type(model).__name__} "
                             f"uses subclasses of nn.Linear, which transformers {hf.version()} leaves as they are): "
                             "int8 and 4-bit hold what 16-bit holds")
            tensors = tuple(
                replace(t, quantizable=True, out_features=packed[t.name]) if t.name in packed else t
                for t in tensors
            )
        hidden = _size_field(text, "hidden_size")
        inter = (_size_field(text, "intermediate_size", required=False) or _size_field(text, "ffn_dim", required=False)
                 or _size_field(text, "n_inner", required=False) or 4 * hidden)
        ckpt_dtype = cfg.get("dtype") or cfg.get("torch_dtype")
        top_k = _size_field(text, "num_experts_per_tok", required=False) or 0
        expert_inter = (_size_field(text, "moe_intermediate_size", required=False) or inter) if top_k else 0
        return Inventory(
            model_id=model_id,
            model_type=config.model_type,
            architecture=cls.__name__,
            parameters=sum(t.numel for t in tensors if not t.buffer),
            tensors=tensors,
            kv_layers=kv_layers,
            hidden_size=hidden,
            intermediate_size=inter,
            num_layers=_size_field(text, "num_hidden_layers"),
            num_attention_heads=_size_field(text, "num_attention_heads", required=False) or 0,
            vocab_size=_size_field(text, "vocab_size"),
            max_positions=getattr(text, "max_position_embeddings", None) or getattr(text, "n_positions", None),
            experts_per_token=top_k,
            expert_intermediate_size=expert_inter,
            attn_implementation="sdpa-math" if math_sdpa else str(
                getattr(model.config, "_attn_implementation", None) or "sdpa"),
            checkpoint_dtype=str(ckpt_dtype) if ckpt_dtype else None,
            prequantized=method,
            stored_bytes=stored_bytes,
            auto_class=auto_class,
            image_tokens_per_image=image_tokens,
            notes=tuple(n for n in notes if n),
            versions=lib_versions(),
        )
