"""Every private transformers name fitplan uses, in one place, per version, and checked where taken.

fitplan builds models the way `from_pretrained` would, which means calling transformers' own
helpers, some of them private. Their names, signatures and behaviour move between releases inside
the range fitplan declares (`transformers>=5.0,<6`); users' GPU images ship older releases than CI
would pick by itself. So nothing else in fitplan imports a private transformers name: it asks this
module, which

- picks the call that is right on the installed version by looking at the installed code (a
  signature, an attribute), or by a version gate where behaviour changed without a visible trace;
- checks each answer where it is taken (a meta forward must fill the cache fitplan handed it, a
  model must have parameters, the bitsandbytes rule must pack some linear layer or give a reason
  fitplan knows) and raises `LibraryChangedError`, one line naming the installed
  version and what to do, instead of letting a silent zero into a plan.

Facts per version, each found by reading that version's source (and tested in CI on the versions
`fitplan.versions.TESTED` names, see .ci/run and docs/compatibility.md):

| what | before | from | after |
|---|---|---|---|
| keep-in-fp32 plan | `model.dtype_plan`, at every dtype (5.0) | 5.1 | `_get_dtype_plan(dtype)` |
| GPT-2's attention | a bool causal-mask buffer per layer | 5.2 | none (counted as the built model holds it) |
| `get_init_context` arguments | 3 (`dtype, is_quantized, _is_ds_init_called`) | 5.3 | 4 (`+ allow_all_kernels`) |
| `maybe_autocast("meta")` (every rotary embedding) | asks torch, which refuses "meta": the meta forward fails | 5.4 | a nullcontext |
| `validate_architecture` on configs | none: such a config builds | 5.4 | invalid configs refused |
| bnb replaces | any `nn.Linear` subclass, `Conv1D` | 5.5 | exact `nn.Linear`, `Conv1D` |
| OPT's meta forward | an all-ones mask is tested with `.item()`: fails, KV from config fields (exact for OPT) | 5.18 | runs |
| Gemma-2's default attention (read off the built model) | SDPA (`_supports_sdpa` True) | 5.21 | eager (SDPA has no softcapping) |
| cache argument of `forward` | `past_key_values` | 5.24 | `cache` (`past_key_values` a deprecated alias) |

A causal LM's `forward` also takes `**kwargs`, so an unknown keyword is accepted silently (5.17
takes `cache=`, ignores it and builds its own cache): the argument is chosen from the signature,
never by trying one and catching `TypeError`.

Facts behind the cache and state probes, combined configs and heterogeneous configs, read in
the sources of 5.0, 5.17 and 5.24 (the releases CI runs; releases between them are not read one
by one, so a difference there shows up as a refusal from the checks, not a wrong plan):

| what | 5.0 | 5.17 | 5.24 |
|---|---|---|---|
| Auto class on a combined config | `get_text_config()` when the picked class is the text config's | same, and copies `quantization_config` | same as 5.17 |
| Mamba-style cache argument | `cache_params`, a per-model cache class (`MambaCache`, `HybridMambaAttentionDynamicCache`, ...) | `cache_params` / `past_key_values`: `DynamicCache` with linear-attention layers | `cache` |
| models that make their own cache (`_supports_default_dynamic_cache` False) | `_is_stateful` models, reformer, minimax, xlnet, lfm2 | minimax (not M2/M3), rwkv, xlstm, reformer, xlnet | same as 5.17 |
| `maybe_autocast(device_type="meta")` | raises (torch has no "meta" autocast): `meta_autocast` | returns `nullcontext()` | same |
| heterogeneous configs (`per_layer_config`, per-layer fields raise on the global config) | none | yes | yes |
| sparse-attention indexer keys (`DynamicIndexedLayer.indexer_keys`) | no such models | yes | yes |

Why one module (~1800 lines): this is the model stage's only contact with torch and transformers
(tests/test_layout.py holds the rest of the package to that), so a new transformers release is checked
against this one file, and everything read off a built model happens in one place, in one pass:
`inventory()` builds the model on the meta device and reads, one after another, its tensors, the cache
its `generate()` keeps (probe forwards; `cachelayout.py`, pure, turns what the cache held into a
layout), the tokens one image takes, which weights a pre-quantized method converts (its scheme is
parsed in `prequant.py`, pure), its Hub kernels and its position table. Each subsystem has its own
section, keyed by version: the meta build (`build`, `tensors`, `tied_apart`: which class an Auto class
picks, the init contexts, the dtype plan, weight tying); the cache and its storages; the prefill
scratch of kernel-less state-space paths; the tensor-parallel plan and its sharding styles
(`tensor_parallel_rules`); the Hub-kernel mapping of 5.25 (`hub_kernels`) and the kernels the mxfp4 and fp8
integrations fetch (`mxfp4_kernel_repo`, `fp8_kernel_repo`, asked of the installed code), what they need on the
target (`fp8_needs_triton`: 5.0's fp8 module imports triton; `mxfp4_on_cpu`: what keeps mxfp4 packed on the CPU,
run through the installed quantizer); config fields of a built
config; image tokens; pre-quantized conversion. Split into modules, each would still reach into the
same private names and the same built model, and the reading of one model would climb in and out of
several files instead of running down one.
"""
from __future__ import annotations

import contextlib as _contextlib
import inspect as _inspect
import io as _io
import re
import warnings as _warnings
from dataclasses import dataclass, replace
from importlib import metadata
from typing import Any

from .. import calibration as C
from ..errors import ConfigError, LibraryChangedError, UnsupportedModelError
from ..versions import parse as parse_version
from ..vocab.classes import AUTO_CLASSES
from . import cachelayout
from .inventory import KVLayer, TensorInfo, dtype_name
from .prequant import DEQUANTIZED_CONFIGS, Scheme, scheme_of, stores_each_weight

#: First release whose bitsandbytes replacement skips subclasses of nn.Linear (Falcon's FalconLinear).
EXACT_LINEAR_SINCE = (5, 5)


def version() -> str:
    """The installed transformers version, from its metadata (no import)."""
    return metadata.version("transformers")


def version_tuple() -> tuple[int, ...]:
    """The installed transformers version as fitplan compares versions (`fitplan.versions.parse`)."""
    return parse_version(version())


def reason(exc: BaseException) -> str:
    """transformers' exception as one line: its messages span lines (the reason often on the second)
    and some are empty."""
    text = " ".join(str(exc).split())
    return text[:300] if text else type(exc).__name__


def changed(what: str) -> LibraryChangedError:
    """The one-line refusal for a transformers helper that no longer behaves as fitplan reads it."""
    return LibraryChangedError(library="transformers", version=version(), what=what)


def model_class(config, mapping):
    """The class an Auto class picks for `config` (transformers' `_get_model_class`)."""
    from transformers.models.auto.auto_factory import _get_model_class

    return _get_model_class(config, mapping)


def build_meta_model(cls, config, dtype):
    """`cls(config)` under the init contexts `from_pretrained` uses (meta device, `dtype`). No quantizer runs
    (`is_quantized` False): a pre-quantized config builds the float model, which `mark_converted` marks."""
    from transformers.utils.generic import ContextManagers

    params = _inspect.signature(cls.get_init_context).parameters
    names = [p for p in params if p not in ("self", "cls")]
    if names[:3] != ["dtype", "is_quantized", "_is_ds_init_called"]:
        raise changed(f"PreTrainedModel.get_init_context takes ({', '.join(names)})")
    args = (dtype, False, False) + (None,) * (len(names) - 3)
    with ContextManagers(cls.get_init_context(*args)):
        model = cls(config)
    if not any(True for _ in model.parameters()):
        raise changed(f"{cls.__name__} was built with no parameters")
    return model


def keep_in_fp32_plan(model, dtype) -> dict:
    """{module pattern: dtype} that `from_pretrained` upcasts when loading in `dtype`.

    From 5.1 the model computes it per dtype (`_get_dtype_plan`); 5.0 keeps one plan built at
    init (`model.dtype_plan`) and applies it at every dtype.
    """
    if hasattr(model, "_get_dtype_plan"):
        return dict(model._get_dtype_plan(dtype) or {})
    plan = getattr(model, "dtype_plan", None)
    if not isinstance(plan, dict):
        raise changed("a model has neither _get_dtype_plan nor dtype_plan")
    return dict(plan)


def pattern_matcher(patterns: list[str]):
    """A predicate over parameter names, matching as `from_pretrained` matches its dtype plan."""
    if not patterns:
        return lambda name: False
    from transformers.core_model_loading import build_glob_alternation

    alt = build_glob_alternation(list(patterns))[0]
    return lambda name: alt.search(name) is not None


def tied_weight_names(model) -> set[str]:
    """Names of parameters that are tied to another (dropped: they share its storage)."""
    return set(getattr(model, "all_tied_weights_keys", {}) or {})


def bnb_replaced_modules(model, skip_modules=None) -> tuple[dict[str, int], list[str]]:
    """Which modules transformers' bitsandbytes quantizer replaces, by transformers' own functions.

    `Bnb4BitHfQuantizer`/`Bnb8BitHfQuantizer._process_model_before_weight_loading` compute the skip
    list with `get_modules_to_not_convert` and hand it to `replace_with_bnb_linear`, which replaces
    a module when `should_convert_module` allows it and it is a `Conv1D` or a linear layer (exactly
    `nn.Linear` from 5.5, any subclass before). The same calls are made here without importing
    bitsandbytes (1-2 s of start-up). Returns ({weight name: out_features}, names of linear layers
    left out only because they subclass nn.Linear) so a plan can say why 4-bit saves nothing.
    `skip_modules` is a serialized checkpoint's `llm_int8_skip_modules` (None: transformers' default skips).
    """
    import transformers
    from torch import nn
    from transformers.pytorch_utils import Conv1D
    from transformers.quantizers.base import HfQuantizer
    from transformers.quantizers.quantizers_utils import should_convert_module

    exact = parse_version(transformers.__version__) >= EXACT_LINEAR_SINCE
    skip = HfQuantizer.get_modules_to_not_convert(model, list(skip_modules) if skip_modules is not None else None,
                                                  model._keep_in_fp32_modules)
    if not isinstance(skip, list):
        raise changed(f"get_modules_to_not_convert returned {type(skip).__name__}, not a list")
    packed: dict[str, int] = {}
    subclassed: list[str] = []
    for name, m in model.named_modules():
        if not should_convert_module(name, skip):
            continue
        if isinstance(m, Conv1D):
            packed[f"{name}.weight"] = int(m.weight.shape[1])
        elif isinstance(m, nn.Linear):
            if exact and type(m) is not nn.Linear:
                subclassed.append(name)
            else:
                packed[f"{name}.weight"] = int(m.out_features)
    if not packed and not subclassed and any(isinstance(m, (nn.Linear, Conv1D)) for m in model.modules()):
        raise changed(f"its bitsandbytes rule (should_convert_module, skip list {skip[:4]}) would leave every linear "
                      f"layer of {type(model).__name__} unquantized, and fitplan cannot tell why")
    return packed, subclassed


def auto_model_config(config, model_class):
    """The config `model_class` is built from when an Auto class picked it for `config`.

    Every release from 5.0 to 5.24 (`_BaseAutoModelClass.from_config` and `.from_pretrained`)
    switches to `config.get_text_config()` when the picked class is the text sub-config's model
    (Qwen3.5, Llama 4, ...: `AutoModelForCausalLM` loads only the language model); from 5.17 the
    parent's `quantization_config` is copied onto the text config (fitplan sizes a pre-quantized
    checkpoint from what it stores, so it is carried over here on every version).
    """
    sub = getattr(config, "sub_configs", None)
    if not isinstance(sub, dict):
        raise changed(f"{type(config).__name__}.sub_configs is {type(sub).__name__}, not a dict")
    text_cls = sub.get("text_config")
    if text_cls is None or getattr(model_class, "config_class", None) != text_cls:
        return config
    text = config.get_text_config()
    if type(text) is not text_cls:
        raise changed(f"{type(config).__name__}.get_text_config() gave {type(text).__name__}, not {text_cls.__name__}")
    quant = getattr(config, "quantization_config", None)
    if quant is not None:
        text.quantization_config = quant
    return text


#: Keywords under which a model's `forward` takes a `Cache`: `cache` (5.24), `past_key_values`
#: (5.0-5.23), `cache_params` (Mamba-style models, 5.0-5.23).
_CACHE_ARGUMENTS = ("cache", "past_key_values", "cache_params")
#: Output fields under which a forward returns the cache (or RWKV's state) it used or made.
_CACHE_OUTPUTS = ("cache", "past_key_values", "cache_params", "state")


def cache_argument(model) -> str | None:
    """The keyword under which this model's `forward` takes a `Cache` object, read off its signature;
    None for models that take none (RWKV's `state`, models without a cache)."""
    params = _inspect.signature(model.forward).parameters
    return next((name for name in _CACHE_ARGUMENTS if name in params), None)


class NoKVCache(Exception):
    """The model's forward neither takes nor returns a cache: generation keeps nothing fitplan can read."""


def new_cache(config):
    """An empty `DynamicCache` for `config`, as `generate()` makes one."""
    from transformers import DynamicCache

    return DynamicCache(config=config.get_text_config(decoder=True))


def uses_default_cache(model) -> bool:
    """Whether `generate()` hands this model a `DynamicCache` (`_supports_default_dynamic_cache`, a
    class method on every 5.x release); when not (MiniMax, RWKV, xLSTM; Mamba-style models on 5.0),
    the model makes its own cache in its forward or in `prepare_inputs_for_generation`."""
    probe = getattr(model, "_supports_default_dynamic_cache", None)
    if not callable(probe):
        raise changed(f"{type(model).__name__} has no _supports_default_dynamic_cache")
    return bool(probe())


#: First release whose generate() hands every model its cache as `cache=`.
CACHE_KEYWORD_SINCE = (5, 24)


def generate_cache_keyword(model) -> str:
    """The keyword `generate()` hands a `DynamicCache` to this model's forward under: `cache` from
    5.24; before, `cache_params` for classes named after Mamba (5.0 also FalconH1), else
    `past_key_values` (`_prepare_cache_for_generation` of 5.0 and 5.17)."""
    v = parse_version(version())
    if v >= CACHE_KEYWORD_SINCE:
        return "cache"
    name = type(model).__name__.lower()
    if "mamba" in name or (v < (5, 1) and "falconh1" in name):
        return "cache_params"
    return "past_key_values"


def forward_cache(model, input_ids, generator=None):
    """One forward pass; returns the cache it filled, made the way `generate()` makes it.

    A `DynamicCache` passed under the keyword from the signature must come back with layers
    (5.17's causal LMs accept an unknown `cache=` silently and fill a cache of their own); a model
    that makes its own cache must return it. Anything else is refused: a plan without its cache
    would miss a term. `generator` is the model whose `generate()` decides the cache when `model`
    is a part of it (a vision-language model's language model).
    """
    name = type(model).__name__
    arg = cache_argument(model)
    default_cache = uses_default_cache(generator or model)
    if generator is None and default_cache:
        arg = generate_cache_keyword(model)
        if arg not in _inspect.signature(model.forward).parameters:
            raise NoKVCache(name, f"takes no '{arg}', the keyword generate() hands the cache under, and keeps "
                                  "none across steps")
    if arg is not None and default_cache:
        cache = new_cache(model.config)
        model(input_ids=input_ids, use_cache=True, **{arg: cache})
        if not getattr(cache, "layers", None):
            raise changed(f"{name}'s forward left the cache fitplan passed it without layers, so the KV layout "
                          "cannot be read")
        return cache
    out = model(input_ids=input_ids, use_cache=True)
    for field in _CACHE_OUTPUTS:
        cache = out.get(field) if hasattr(out, "get") else getattr(out, field, None)
        if cache is not None:
            return cache
    raise NoKVCache(name)


def cache_storages(cache, model=None):
    """Every tensor storage a cache holds: [(layer index or None, path, nbytes, dtype, window, in_module)].

    Walks `cache.layers` (one entry per decoder layer on every 5.x `DynamicCache`) and whatever else
    the cache object holds (MiniMax's `linear_cache`, RWKV's state list, 5.0's per-model caches)
    through lists, dicts and transformers' own objects; then, with `model`, the tensors its modules
    keep as plain attributes after the forward (RecurrentGemma keeps its recurrent and convolution
    states there, not in the cache), with the layer index their module's name gives. A storage is
    counted once, as its bytes (a sliding layer's keys right after prefill are a view into the
    whole prompt's storage, and DeepSeek-V4's values are its keys).
    """
    import re

    import torch
    from torch import nn
    from transformers import PreTrainedConfig

    seen_objects: set[int] = set()
    storages: list = []  # held, so that ids stay unique while walking
    out = []

    def add(tensor, layer, path, window, in_module):
        st = tensor.untyped_storage()
        if any(st is s for s in storages):
            return
        storages.append(st)
        out.append((layer, path, int(st.nbytes()), dtype_name(tensor.dtype), window, in_module))

    def walk(obj, layer, path, window, depth):
        if isinstance(obj, torch.Tensor):
            add(obj, layer, path, window, False)
            return
        if depth > 6 or id(obj) in seen_objects or isinstance(obj, (nn.Module, PreTrainedConfig)):
            return
        if isinstance(obj, dict):
            items = list(obj.items())
        elif isinstance(obj, (list, tuple)):
            items = list(enumerate(obj))
        elif type(obj).__module__.startswith("transformers.") and hasattr(obj, "__dict__"):
            items = list(vars(obj).items())
            w = getattr(obj, "sliding_window", None)
            window = int(w) if type(w) is int and w > 0 else window
        else:
            return
        seen_objects.add(id(obj))
        for key, value in items:
            walk(value, layer, path + (key,), window, depth + 1)

    layers = getattr(cache, "layers", None)
    if isinstance(layers, list):
        seen_objects.add(id(cache))
        for i, layer in enumerate(layers):
            walk(layer, i, ("layers", i), None, 1)
        rest = {k: v for k, v in vars(cache).items() if k != "layers"}
        for key, value in rest.items():
            walk(value, None, (key,), None, 1)
    else:
        walk(cache, None, (), None, 0)
    if model is not None:
        index = re.compile(r"\.(\d+)(?:\.|$)")
        for name, module in model.named_modules():
            for attr, value in vars(module).items():
                if isinstance(value, torch.Tensor) and not isinstance(value, nn.Parameter):
                    m = index.search(name)
                    add(value, int(m.group(1)) if m else None, ("module", name, attr), None, True)
    return out


#: Layer types (`layer_types`, `layers_block_type`) whose layers keep keys and values.
_ATTENTION_TYPES = ("hybrid", "hybrid_sliding")
#: Layer types whose layers keep a recurrent or convolution state per sequence.
_STATE_TYPES = ("linear_attention", "conv", "hybrid", "hybrid_sliding", "mamba", "mamba2", "recurrent", "ssm")


def config_value(config, name: str, default=None):
    """`getattr(config, name, default)`, except that on a heterogeneous config (5.17+) a per-layer
    attribute, whose global read raises, comes back as the list of its per-layer values."""
    try:
        return getattr(config, name, default)
    except AttributeError:
        return default
    except Exception:  # noqa: BLE001 - AmbiguousGlobalPerLayerAttributeError (a RuntimeError)
        values = per_layer_values(config, name)
        if values is None:
            raise
        return values


def _layer_types(text_config, num_layers: int):
    for field in ("layer_types", "layers_block_type"):
        types = config_value(text_config, field)
        if isinstance(types, (list, tuple)) and len(types) == num_layers and all(isinstance(t, str) for t in types):
            return list(types)
    return None


def attention_layer_count(text_config, num_layers: int) -> int:
    """How many decoder layers keep keys and values, from `layer_types` (or `layers_block_type`)
    where the config has it; 0 for a config with no attention heads at all (a state-space model)."""
    heads = config_value(text_config, "num_attention_heads")
    if not (any(type(h) is int and h > 0 for h in heads) if isinstance(heads, list) else heads):
        return 0
    types = _layer_types(text_config, num_layers)
    count = num_layers
    if types is not None:
        count = sum(1 for t in types if ("attention" in t and "linear" not in t) or t in _ATTENTION_TYPES)
    shared = config_value(text_config, "num_kv_shared_layers", 0)  # Gemma 3n: the last layers reuse earlier KV
    return count - (shared if isinstance(shared, int) and 0 <= shared < count else 0)


def state_layer_count(text_config, num_layers: int) -> int:
    """How many decoder layers the config says keep a recurrent or convolution state (Mamba, linear
    attention, short convolutions): from `layer_types`/`layers_block_type`; every layer of a model
    with no attention heads; else 0 (unknown: the probe's own finding stands)."""
    types = _layer_types(text_config, num_layers)
    if types is not None:
        return sum(1 for t in types if t in _STATE_TYPES)
    return num_layers if not config_value(text_config, "num_attention_heads") else 0


def per_layer_values(config, name: str) -> list | None:
    """`name` of each layer of a heterogeneous config (5.17+: `per_layer_config`, whose global value
    raises `AmbiguousGlobalPerLayerAttributeError`); None where the config is not heterogeneous."""
    if getattr(config, "is_heterogeneous", False) is not True:
        return None
    view = getattr(config, "per_layer_config", None)
    if view is None:
        raise changed(f"{type(config).__name__} is heterogeneous but has no per_layer_config")
    try:
        values = [getattr(layer, name, None) for layer in view]
    except Exception as exc:  # noqa: BLE001
        raise changed(f"{type(config).__name__}.per_layer_config cannot be read ({type(exc).__name__})") from None
    if not values:
        raise changed(f"{type(config).__name__}.per_layer_config lists no layers")
    return values


def compress_rates(text_config) -> list[int]:
    """Token-pooling rates of a model whose cache keeps one compressed entry per so many tokens
    (DeepSeek-V4's `compress_rates`, a dict by layer type); [] for others."""
    rates = config_value(text_config, "compress_rates")
    if isinstance(rates, dict):
        rates = list(rates.values())
    if not isinstance(rates, (list, tuple)):
        return []
    return [r for r in rates if type(r) is int and r > 0]


@_contextlib.contextmanager
def meta_autocast():
    """During a meta-device forward, `torch.autocast("meta")` is a no-op instead of an error.

    Rotary embeddings force fp32 with `maybe_autocast(device_type=x.device.type, enabled=False)`;
    5.17 and later return `nullcontext()` for "meta" there, 5.0 asks torch, which knows no autocast
    for "meta" and raises ("unknown device type for autocast"), so every meta forward fails. This
    gives 5.0 what later releases do; it changes nothing else (there is no autocast on meta).
    """
    import torch

    real_enabled, real_autocast = torch.is_autocast_enabled, torch.autocast

    def is_enabled(*args, **kwargs):
        device = args[0] if args else kwargs.get("device_type")
        return False if device == "meta" else real_enabled(*args, **kwargs)

    def autocast(device_type, *args, **kwargs):
        return _contextlib.nullcontext() if device_type == "meta" else real_autocast(device_type, *args, **kwargs)

    torch.is_autocast_enabled, torch.autocast = is_enabled, autocast
    try:
        yield
    finally:
        torch.is_autocast_enabled, torch.autocast = real_enabled, real_autocast


#: Kernel packages transformers runs instead of the torch path of state-space and linear-attention
#: layers. 5.17 and 5.24 take, per function, Hub kernels when `use_kernels=True` was asked (fitplan's
#: load does not ask), else the package, else torch (`use_kernel_func_from_hub_with_fallback`); 5.0's
#: Mamba layers take their fast path only when both Mamba packages import (`is_fast_path_available`).
SSM_KERNELS = ("mamba_ssm", "causal_conv1d")
LINEAR_ATTENTION_KERNELS = ("fla",)


def kernels_installed(packages: tuple[str, ...]) -> bool:
    from importlib.util import find_spec

    return all(find_spec(p) is not None for p in packages)


#: The package `attn_implementation="flash_attention_2"` needs (fitplan.planning.generation chooses it).
FLASH_ATTENTION_KERNELS = ("flash_attn",)


def kernel_presence() -> dict[str, bool]:
    """Which kernel packages are installed: part of what an inventory depends on (its cache key)."""
    return {p: kernels_installed((p,)) for p in SSM_KERNELS + LINEAR_ATTENTION_KERNELS + FLASH_ATTENTION_KERNELS}


def _mamba2_scan_form(mixer) -> str:
    """How the installed torch path of a Mamba-2 chunk scan contracts C and B, read off its module's
    source: "broadcast" (5.0-5.17: `C[..., None, :, :] * B[..., None, :, :, :]`, a (batch, chunks,
    chunk, chunk, heads, state) fp32 product, then `M[..., None] * hidden_states`, one with head_dim
    in place of state) or "einsum" (5.24: `einsum("bclhn,bcshn->bclsh")`, no state-sized product)."""
    import sys

    source = _inspect.getsource(sys.modules[type(mixer).__module__])
    if "bclhn,bcshn" in source:
        return "einsum"
    if "G_intermediate" in source or "C[:, :, :, None, :, :] * B[:, :, None, :, :, :]" in source:
        return "broadcast"
    raise changed(f"{type(mixer).__name__}'s module holds neither form of the Mamba-2 chunk scan fitplan sizes")


def prefill_scratch(model) -> tuple[int, str | None]:
    """(bytes per token of one sequence, what) that the widest state-space or linear-attention layer
    holds at once during a prefill on transformers' torch path, used when the kernel packages are not
    installed; (0, None) when every such layer runs a kernel or the model has none. fp32 throughout,
    as the torch paths compute:

    - Mamba-2 chunk scan (Mamba-2, Falcon-H1, Nemotron-H, Zamba2, Bamba, Granite-4.0-H), chunk l,
      heads h, state n, head_dim p: "broadcast" form l*h*(n + p + 3) + h*p*n (the state-sized and
      the head_dim-sized products, the scores, the decay and the chunk states, all live at once:
      Mamba-2 at 1k tokens held both products on an H100, transformers 5.17); "einsum" form
      `calibration.MAMBA2_EINSUM_COPIES`*l*h;
    - Mamba selective scan (Mamba, Falcon-Mamba, Jamba): `calibration.SELECTIVE_SCAN_COPIES` copies of
      intermediate*state;
    - gated delta rule (Qwen3-Next, Qwen3.5): `calibration.GATED_DELTA_COPIES` value-sized copies
      (num_v_heads*head_v_dim).
    """
    ssm_kernels, delta_kernels = kernels_installed(SSM_KERNELS), kernels_installed(LINEAR_ATTENTION_KERNELS)
    forms: dict[type, str] = {}  # one read of each mixer class's module source, not one per layer
    best, what = 0, None
    for _, m in model.named_modules():
        if _int_attrs(m, "chunk_size", "num_heads", "ssm_state_size", "head_dim"):
            if ssm_kernels:
                continue
            if type(m) not in forms:
                forms[type(m)] = _mamba2_scan_form(m)
            form = forms[type(m)]
            l, h, n, p = m.chunk_size, m.num_heads, m.ssm_state_size, m.head_dim
            per = (l * h * (n + p + 3) + h * p * n if form == "broadcast" else C.MAMBA2_EINSUM_COPIES * l * h) * 4
            kind = f"Mamba-2 chunk scan ({form})"
        elif _int_attrs(m, "ssm_state_size", "intermediate_size", "time_step_rank"):
            if ssm_kernels:
                continue
            per, kind = C.SELECTIVE_SCAN_COPIES * m.intermediate_size * m.ssm_state_size * 4, "Mamba selective scan"
        elif _int_attrs(m, "num_v_heads", "head_v_dim"):
            if delta_kernels:
                continue
            per, kind = C.GATED_DELTA_COPIES * m.num_v_heads * m.head_v_dim * 4, "gated delta rule"
        else:
            continue
        if per > best:
            best, what = per, f"{type(m).__name__}: {kind}"
    return best, what


def _int_attrs(module, *names: str) -> bool:
    """Whether `module` holds each of `names` as a nonzero int (a mixer's sizes)."""
    return all(type(v := getattr(module, n, None)) is int and v for n in names)


# Tensor parallelism (`from_pretrained` under torchrun). Read in the sources of 5.0, 5.17 and 5.24:
#
# | what | 5.0 | 5.17 | 5.24 |
# |---|---|---|---|
# | code | `integrations/tensor_parallel.py`: each rank slices its share while loading (`shard_and_distribute_module`) | `distributed/tensor_parallel.py`: DTensor placeholders before loading (`apply_tensor_parallelism`) | same as 5.17, plans expanded per module |
# | argument | `tp_plan="auto"` (+ `tp_size`) | `distributed_config=DistributedConfig(tp_size=N, tp_plan="auto")` (`tp_plan=` deprecated) | same as 5.17 |
# | model plan | config's `base_model_tp_plan` + children's `_tp_plan` (the causal-LM class's own `lm_head` rule is dropped: lm_head replicated) | + the class's `_tp_plan` (`lm_head`: `colwise_gather_output`) | + `embed_tokens`: `embedding_rowwise` (vocabulary split) when the plan is not empty |
# | colwise | weight dim -2, a 1-D bias split too | dim ndim-2; an `nn.Embedding` on dim 1 | dim ndim-2 |
# | rowwise | weight dim -1, a 1-D bias replicated | dim -1, bias replicated; an `nn.Embedding` on dim 0 | dim -1, bias replicated |
# | uneven split | `ceil(n / N)` rows per rank, the last ones fewer (`get_tensor_shard`), but the forward then fails: refused | torch's `Shard`: the same chunks; a gathered colwise output must divide (`validate_param`) | torch's `Shard`, any split |
# | a tied lm_head | the embedding's rule (the one tensor loaded) | the rule of the last module holding it (lm_head) | same as 5.17 |
#
# Each rule is read off the installed style object (its class, and whether it overrides the
# sharding method at all); a style fitplan does not know is refused, never planned as replicated.

class NoTensorParallelPlan(Exception):
    """The model has no tensor-parallel plan in the installed transformers."""


class UnplannedTensorParallelStyle(Exception):
    """The model's TP plan uses a style fitplan does not plan on the installed release (5.0's MoE
    router and per-expert loading, a style added after 5.24)."""


def _tp_code():
    """("dtensor", module) from 5.17 on, ("loader", module) on 5.0: where the installed release shards."""
    try:
        from transformers.distributed import tensor_parallel as tp
    except ImportError:
        tp = None
    if tp is not None and hasattr(tp, "apply_tensor_parallelism") and hasattr(tp, "TensorParallelLayer"):
        return "dtensor", tp
    from transformers.integrations import tensor_parallel as tp

    if hasattr(tp, "shard_and_distribute_module") and hasattr(tp, "ALL_PARALLEL_STYLES"):
        return "loader", tp
    raise changed("neither distributed.tensor_parallel.apply_tensor_parallelism nor "
                  "integrations.tensor_parallel.shard_and_distribute_module is there")


def tensor_parallel_kwargs(world_size: int) -> dict:
    """The `from_pretrained` arguments that load with the model's own TP plan over `world_size` ranks:
    `distributed_config` where the installed `DistributedConfig` has `tp_size` (5.17 on), else
    `tp_plan="auto"` (5.0, where `distributed_config` carries no TP size)."""
    from dataclasses import fields as _fields

    try:
        from transformers.distributed import DistributedConfig
    except ImportError:
        DistributedConfig = None
    if DistributedConfig is not None and "tp_size" in {f.name for f in _fields(DistributedConfig)}:
        return {"distributed_config": DistributedConfig(tp_size=world_size, tp_plan="auto")}
    return {"tp_plan": "auto", "tp_size": world_size}


def _style_lookup():
    """transformers' own matcher of a parameter name against a plan (`layers.*.mlp.up_proj`)."""
    for where, name in (("transformers.distributed.parallel_utils", "_get_parameter_plan"),
                        ("transformers.distributed.tensor_parallel", "_get_parameter_tp_plan"),
                        ("transformers.integrations.tensor_parallel", "_get_parameter_tp_plan")):
        try:
            module = __import__(where, fromlist=[name])
        except ImportError:
            continue
        if hasattr(module, name):
            return getattr(module, name)
    raise changed("no _get_parameter_plan / _get_parameter_tp_plan to match a TP plan")


def _tp_rule(kind: str, tp, style: str, module, param: str, ndim: int) -> tuple:
    """("shard", dim) | ("shard_even", dim) | ("strided", dim, split_factor) | ("replicate",) for one
    parameter, as the installed style object shards it ("shard_even": the release refuses an uneven split)."""
    import torch

    styles = tp.ALL_PARALLEL_STYLES
    if style not in styles:
        raise changed(f"TP style {style!r} of the model's plan is not in ALL_PARALLEL_STYLES")
    obj = styles[style]
    is_a = lambda name: isinstance(obj, getattr(tp, name, ()))  # noqa: E731 - a class the release may lack
    if kind == "loader":
        if is_a("PackedColwiseParallel"):
            return ("strided", ndim - 2, 2)
        if is_a("PackedRowwiseParallel"):
            return ("strided", ndim - 1, 2) if ndim > 1 else ("replicate",)
        if ndim > 2 and (is_a("ColwiseParallel") or is_a("RowwiseParallel")):
            raise UnplannedTensorParallelStyle(f"TP style {style!r} on a {ndim}-D tensor ({param}), which 5.0 loads "
                                               "per expert")
        # 5.0 loads uneven shards but its forward then fails (a rowwise input of 107 of 320 columns
        # meets a DTensor of another split): "shard_even", refused unless the ranks divide evenly
        if is_a("ColwiseParallel"):
            return ("shard_even", 0 if ndim == 1 else ndim - 2)
        if is_a("RowwiseParallel"):
            return ("replicate",) if ndim == 1 else ("shard_even", ndim - 1)
        if is_a("ReplicateParallel") or is_a("GatherParallel") or is_a("SequenceParallel"):
            return ("replicate",)
        raise UnplannedTensorParallelStyle(f"TP style {style!r} ({type(obj).__name__})")
    if type(obj).shard_param is tp.TensorParallelLayer.shard_param:
        return ("replicate",)  # the style hooks the forward only; the parameter stays whole
    embedding_aware = not hasattr(tp, "EmbeddingParallel")  # 5.17: colwise/rowwise special-case nn.Embedding
    is_embedding = isinstance(module, torch.nn.Embedding)
    if is_a("PackedColwiseParallel"):
        return ("shard", 0) if ndim == 1 else ("strided", ndim - 2, obj.split_factor)
    if is_a("PackedRowwiseParallel"):
        return ("replicate",) if ndim == 1 else ("strided", ndim - 1, obj.split_factor)
    if is_a("ColwiseParallel"):
        from torch.distributed.tensor import Replicate

        # 5.17 refuses a gathered colwise output its ranks cannot split evenly (`validate_param`)
        even = (type(obj).validate_param is not tp.TensorParallelLayer.validate_param
                and isinstance(getattr(obj, "output_layouts", None), Replicate))
        return ("shard_even" if even else "shard", 1 if embedding_aware and is_embedding else max(ndim - 2, 0))
    if is_a("RowwiseParallel"):
        if embedding_aware and is_embedding:
            return ("shard", 0)
        return ("replicate",) if param == "bias" else ("shard", ndim - 1)
    if is_a("EmbeddingParallel"):
        return ("shard", obj.shard_dim)
    raise UnplannedTensorParallelStyle(f"TP style {style!r} ({type(obj).__name__})")


def tensor_parallel_rules(model) -> dict[str, tuple[str | None, tuple]]:
    """{parameter name: (style or None, rule)} for every parameter of `model` (a meta build of the
    class `from_pretrained` will load), as the installed release shards it under `tp_plan="auto"`.
    A tied weight is listed once, under the name `named_parameters()` keeps (the inventory's).
    Raises `NoTensorParallelPlan` when the model's plan is empty."""
    kind, tp = _tp_code()
    plan = dict(getattr(model, "tp_plan", None) or {})
    if not plan:
        raise NoTensorParallelPlan(type(model).__name__)
    lookup = _style_lookup()
    modules = dict(model.named_modules())
    groups: dict[int, list[str]] = {}
    params = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(p), []).append(name)
        params[name] = p
    out = {}
    for names in groups.values():
        styled = [n for n in names if lookup(n, plan, is_weight=True) is not None]
        # 5.0 shards the one tensor it loads (the kept name); from 5.17 each module holding it is
        # sharded in module order, so the last rule wins
        chosen = names[0] if kind == "loader" else (styled[-1] if styled else names[0])
        style = lookup(chosen, plan, is_weight=True)
        owner, _, param = chosen.rpartition(".")
        rule = ("replicate",) if style is None else _tp_rule(kind, tp, style, modules.get(owner), param,
                                                             params[chosen].dim())
        out[names[0]] = (style, rule)
    if not any(rule[0] != "replicate" for _, rule in out.values()):
        raise changed(f"the TP plan of {type(model).__name__} shards none of its parameters")
    return out


def mxfp4_kernels() -> tuple[bool, bool]:
    """(triton >= 3.4.0, kernels in transformers' accepted range) in this environment: transformers' own checks."""
    from transformers.utils.import_utils import is_kernels_available, is_triton_available

    return bool(is_triton_available("3.4.0")), bool(is_kernels_available())


def mxfp4_kernel_repo() -> tuple[str, str]:
    """(repo id, ref) of the Hub kernel that the installed transformers fetches to keep mxfp4 (gpt-oss) packed on
    a GPU: `replace_with_mxfp4_linear` calls `hub_kernels.get_kernel` before it swaps any module (5.0:
    "kernels-community/triton_kernels" at main; 5.17..5.25: "kernels-community/gpt-oss-triton-kernels", version 1).
    Read by calling it with `get_kernel` replaced by a recorder, so the answer is that version's own, not a copy.
    `ref` is "v1" for a version (as `kernel_cached` takes it), else the revision ("main" when none)."""
    import torch
    from transformers import Mxfp4Config
    from transformers.integrations import mxfp4

    def run():
        with quiet():
            mxfp4.replace_with_mxfp4_linear(torch.nn.Module(), quantization_config=Mxfp4Config())

    return _kernel_asked_by("replace_with_mxfp4_linear", run, [])


def fp8_kernel_repo() -> tuple[str, str] | None:
    """(repo id, ref) of the Hub kernel that the installed transformers' `FP8Linear.forward` fetches to run fp8
    weights on a GPU (5.17 .. 5.25: `load_finegrained_fp8_kernel` -> `lazy_load_kernel("finegrained-fp8")`,
    "kernels-community/finegrained-fp8" version 4; FP8Experts go through the same loader), or None where its fp8
    layers run on their own triton kernels and fetch nothing (5.0, whose module imports triton at the top).
    Read by running one tiny FP8Linear forward on the CPU with `get_kernel` replaced by a recorder (and DeepGEMM,
    the optional faster path tried first on Hopper, left out; the recorder stops it before any matmul, so no GPU
    is touched), so the answer is that version's own."""
    import torch

    try:
        from transformers.integrations import finegrained_fp8 as fp8
    except ImportError as exc:
        if _missing_module(exc) == "triton":  # 5.0: its own triton kernels, no Hub kernel
            return None
        raise changed(f"its fp8 integration does not import ({' '.join(str(exc).split())[:120]})") from None
    if "lazy_load_kernel" not in fp8.__dict__ and "triton" in fp8.__dict__:
        return None  # 5.0 with triton installed: its own triton kernels (not run here: they would touch the GPU)
    from transformers.integrations import hub_kernels

    enabled = hub_kernels.__dict__.get("_kernels_enabled")  # a bool to 5.24, a function from 5.25
    patches = [(hub_kernels, "is_kernels_available", lambda *a, **k: True),
               (hub_kernels, "_kernels_enabled", (lambda: True) if callable(enabled) else True),
               (fp8, "is_kernels_available", lambda *a, **k: True), (fp8, "is_deepgemm_loadable", lambda *a, **k: False),
               (fp8, "_FINEGRAINED_FP8", None)]
    lazy = fp8.__dict__.get("lazy_load_kernel")
    if lazy is not None:  # a fresh module mapping: a kernel already loaded would answer without asking
        patches.append((fp8, "lazy_load_kernel", lambda name, mapping=None: lazy(name, {})))

    def run():
        layer = fp8.FP8Linear(in_features=128, out_features=128, block_size=(128, 128))
        with quiet(), torch.no_grad():
            layer(torch.zeros(1, 128, dtype=torch.bfloat16))

    return _kernel_asked_by("FP8Linear.forward", run, [(m, n, v) for m, n, v in patches if n in m.__dict__])


class _KernelAsked(Exception):
    """Raised by the recorder standing in for `hub_kernels.get_kernel`: the kernel was asked for, nothing fetched."""


def _kernel_asked_by(what: str, run, patches: list) -> tuple[str, str]:
    """(repo id, ref) of the one Hub kernel `run()` (transformers' `what`) asks `hub_kernels.get_kernel` for, read
    by putting a recorder in its place (and `patches`, (module, name, value) each, for the time of the call). `ref`
    is "v1" for a version (as `kernel_cached` takes it), else the revision ("main" when none). A call that fails
    otherwise, or asks for anything but one kernel repo, is a transformers that no longer works as read here."""
    from transformers.integrations import hub_kernels

    asked: list[tuple] = []

    def recorder(repo_id, revision=None, version=None, *args, **kwargs):
        asked.append((repo_id, kwargs.get("revision", revision), kwargs.get("version", version)))
        raise _KernelAsked

    patches = [(hub_kernels, "get_kernel", recorder), *patches]
    saved = [(mod, name, mod.__dict__[name]) for mod, name, _ in patches]
    for mod, name, value in patches:
        setattr(mod, name, value)
    try:
        run()
    except _KernelAsked:
        pass
    except Exception as exc:  # noqa: BLE001 - any other failure means the path no longer works as read here
        raise changed(f"{what} did not ask for its Hub kernel ({type(exc).__name__}: "
                      f"{' '.join(str(exc).split())[:120]})") from None
    finally:
        for mod, name, value in saved:
            setattr(mod, name, value)
    if len(asked) != 1 or not isinstance(asked[0][0], str) or "/" not in asked[0][0]:
        raise changed(f"{what} asked hub_kernels.get_kernel for {asked!r}, not one kernel repo")
    repo_id, revision, ver = asked[0]
    return repo_id, f"v{ver}" if ver is not None else (revision or "main")


def _missing_module(exc: BaseException) -> str | None:
    """The module a failed import missed, through transformers' lazy-module wrapping (`__cause__`)."""
    while exc is not None:
        if isinstance(exc, ModuleNotFoundError) and exc.name:
            return exc.name
        exc = exc.__cause__ or exc.__context__
    return None


def fp8_needs_triton() -> tuple[bool, bool]:
    """(whether the installed transformers' fp8 integration imports triton at its top, so that no fp8 checkpoint
    loads without triton, dequantized or not; whether triton is installed here). 5.0's
    `integrations/finegrained_fp8.py` runs `import triton` as it is imported (its own triton kernels); from 5.17 it
    imports no triton (it fetches a Hub kernel instead). Read off that module's source, its module-level imports
    (not inside functions), without importing it or torch; triton here as transformers' own `is_triton_available`
    finds it (`find_spec`). A module that cannot be found is a transformers that no longer works as read here."""
    import ast
    import importlib.util

    spec = importlib.util.find_spec("transformers.integrations.finegrained_fp8")
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        raise changed("its fp8 integration (transformers.integrations.finegrained_fp8) has no source to read")
    with open(spec.origin, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    top: list = []
    todo = list(tree.body)
    while todo:  # module level, through `if is_torch_available():` and try blocks, not into defs or classes
        node = todo.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            top.append(node)
        elif isinstance(node, (ast.If, ast.Try, ast.With)):
            todo += [n for part in ("body", "orelse", "finalbody", "handlers") for n in getattr(node, part, [])]
        elif isinstance(node, ast.ExceptHandler):
            todo += node.body
    names = [a.name for n in top if isinstance(n, ast.Import) for a in n.names]
    names += [n.module for n in top if isinstance(n, ast.ImportFrom) and n.module and not n.level]
    needs = any(name.split(".")[0] == "triton" for name in names)
    return needs, importlib.util.find_spec("triton") is not None


class _Reached(Exception):
    """Raised where a transformers method reaches the point past which it has decided what is read here."""


def mxfp4_on_cpu() -> tuple[str, bool, bool] | None:
    """What the installed transformers needs to keep a pre-quantized mxfp4 checkpoint (gpt-oss) packed on a machine
    without a GPU: None where it never does (5.0: no GPU seen, it dequantizes); else (the triton release it asks
    for, whether it asks for the `kernels` package, whether it also needs `use_kernels=True`): 5.17 .. 5.24
    ("3.5.0", True, True), 5.25 ("3.5.0", True, False). Read by running its `Mxfp4HfQuantizer` as on a machine
    without CUDA or XPU, with triton and `kernels` reported present (what it asks for recorded), up to where it
    has decided whether to dequantize (`use_kernels=False`, the default before 5.25, then nothing is swapped),
    so the answer is that version's own."""
    import torch
    from transformers import Mxfp4Config
    from transformers.quantizers import quantizer_mxfp4 as qm

    asked: dict = {}

    def triton(min_version="0.0.0"):
        asked["triton"] = str(min_version)
        return True

    def kernels(*args, **kwargs):
        asked["kernels"] = True
        return True

    def reached(*args, **kwargs):
        raise _Reached

    patches = [(qm, "is_triton_available", triton), (qm, "is_kernels_available", kernels),
               (qm, "get_current_accelerator", lambda *a, **k: None),
               (torch.cuda, "is_available", lambda: False), (torch.xpu, "is_available", lambda: False),
               (torch.accelerator, "current_accelerator", lambda *a, **k: None)]
    patches = [(m, n, v) for m, n, v in patches if hasattr(m, n)]
    saved = [(m, n, getattr(m, n)) for m, n, _ in patches]
    quantizer = qm.Mxfp4HfQuantizer(Mxfp4Config(), pre_quantized=True)
    quantizer.get_modules_to_not_convert = reached  # called once the dequantize decision is made, before any swap
    for m, n, v in patches:
        setattr(m, n, v)
    try:
        with quiet():
            quantizer.validate_environment(device_map="cpu")
            if quantizer.quantization_config.dequantize:
                return None
            model = torch.nn.Module()
            model._keep_in_fp32_modules = None  # what a PreTrainedModel without fp32 modules holds
            try:
                quantizer._process_model_before_weight_loading(model, use_kernels=False)
            except _Reached:
                pass
    except Exception as exc:  # noqa: BLE001 - any failure means the quantizer no longer works as read here
        raise changed(f"Mxfp4HfQuantizer did not run as on a CPU machine ({type(exc).__name__}: "
                      f"{' '.join(str(exc).split())[:120]})") from None
    finally:
        for m, n, v in saved:
            setattr(m, n, v)
    if "triton" not in asked:
        raise changed("Mxfp4HfQuantizer keeps mxfp4 packed on the CPU without asking for triton")
    return asked["triton"], bool(asked.get("kernels")), bool(quantizer.quantization_config.dequantize)


def dequantized_config(method: str):
    """The `quantization_config` that loads a pre-quantized checkpoint of `method` ("mxfp4", "fp8") dequantized to
    bf16, fetching and running no kernel: a loading attribute transformers merges into the checkpoint's own config
    (`Mxfp4Config` / `FineGrainedFP8Config` `(dequantize=True)`, 5.0 .. 5.25)."""
    import transformers

    return getattr(transformers, DEQUANTIZED_CONFIGS[method])(dequantize=True)


def from_pretrained_kwargs(data: dict) -> dict:
    """A plan's from_pretrained arguments as data (`Plan.kwargs_as_data()`) in the objects transformers takes:
    torch dtypes, a `BitsAndBytesConfig` (or a pre-quantized method's config with `dequantize=True`), integer GPU
    indices in `max_memory`."""
    import torch
    from transformers import BitsAndBytesConfig

    kw = dict(data)
    kw["dtype"] = getattr(torch, data["dtype"])
    q = data.get("quantization_config")
    if q is not None and q.get("dequantize"):
        kw["quantization_config"] = dequantized_config(q["quant_method"])
    elif q is not None:
        if "bnb_4bit_compute_dtype" in q:
            q = {**q, "bnb_4bit_compute_dtype": getattr(torch, q["bnb_4bit_compute_dtype"])}
        kw["quantization_config"] = BitsAndBytesConfig(**q)
    if data.get("max_memory") is not None:
        kw["max_memory"] = {int(k) if k.isdigit() else k: v for k, v in data["max_memory"].items()}
    return kw


# -- the model on the meta device, as `from_pretrained` builds it ------------------------------------------

@_contextlib.contextmanager
def quiet():
    """transformers logs and warns freely while building; none of it is for fitplan's user."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        with _warnings.catch_warnings(), _contextlib.redirect_stderr(_io.StringIO()):
            _warnings.simplefilter("ignore")
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
                "plans architectures built into transformers", model_type=model_type
            )
        raise UnsupportedModelError(
            f"model_type {model_type!r:.80} is unknown to transformers; upgrade transformers or check config.json",
            model_type=model_type
        )
    try:
        return CONFIG_MAPPING[model_type].from_dict(dict(cfg))
    except Exception as exc:  # transformers' validation errors are of many types
        raise ConfigError(f"config.json is not valid for {model_type!r:.80}: {reason(exc)}", key=None) from None


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
    return model_class(config, mapping).__name__ in archs


def _model_class(config, auto_class: str):
    """(model class, the config it is built from) as `AutoModelFor...from_pretrained` picks them."""
    mapping = _mapping(auto_class)
    if type(config) not in mapping:
        what = {"causal-lm": "causal-LM", "image-text-to-text": "image-text-to-text"}[auto_class]
        raise UnsupportedModelError(f"'{config.model_type}' has no {what} class in transformers "
                                    f"({AUTO_CLASSES[auto_class]} cannot load it)", model_type=config.model_type)
    cls = model_class(config, mapping)
    return cls, auto_model_config(config, cls)


@dataclass(frozen=True)
class Built:
    """A config built on the meta device as the Auto class `auto_class` builds it: `whole` when that is the
    class the checkpoint is meant for (the model it stores, all of it)."""

    config: Any
    cls: type
    model: Any
    auto_class: str
    whole: bool


def build(cfg: dict, auto_class: str | None, dtype, trust_remote_code: bool = False) -> Built:
    """`cfg` (a config.json dict) built on the meta device in `dtype` with the class `auto_class` picks (None:
    the class the checkpoint is meant for, `default_auto_class`). Call inside `quiet()`."""
    config = _config_object(cfg, trust_remote_code)
    default = default_auto_class(config)
    chosen = auto_class or default
    cls, build_config = _model_class(config, chosen)
    try:
        model = build_meta_model(cls, build_config, dtype)
    except LibraryChangedError:
        raise
    except Exception as exc:
        raise UnsupportedModelError(
            f"transformers {version()} could not build {cls.__name__} from this config: {reason(exc)}",
            model_type=cls.__name__) from None
    return Built(config, cls, model, chosen, auto_class in (None, default))


def quant_method(model) -> str | None:
    """The `quant_method` of a pre-quantized checkpoint's config (an enum's value as its string), else None."""
    quant = getattr(model.config, "quantization_config", None)
    if quant is None:
        return None
    method = quant.get("quant_method") if isinstance(quant, dict) else getattr(quant, "quant_method", None)
    return str(getattr(method, "value", method))


def tied_apart(model, stored_parameters: int | None) -> list[str]:
    """The weights transformers ties by this config (lm_head to the input embeddings) that the
    checkpoint stores apart, so that loading keeps them apart: `from_pretrained` (5.0-5.24,
    `PreTrainedModel.tie_weights(missing_keys=...)`) does not tie a pair whose both halves the
    checkpoint holds (Magistral-Small-2509: Mistral3Config ties by default, the checkpoint has its own
    lm_head, 1.3 GB in bf16). Decided by the count the checkpoint stores: closer to the model with
    the tied weights counted twice than once means stored apart. [] when the count is unknown.

    `model` is the float model (`build_meta_model` runs no quantizer), so for a pre-quantized checkpoint the
    stored count compares with it only where the method stores each weight as one element
    (`fitplan.model.prequant.stores_each_weight`: fp8, int8; RedHatAI's Mistral-Small-3.1 W8A8 keeps its own
    bf16 lm_head); `inventory` asks nothing of this for packed ones."""
    tied = tied_weight_names(model)
    if not tied or stored_parameters is None:
        return []
    named = list(model.named_parameters(remove_duplicate=False))  # the meta build may or may not have tied them
    once = sum({id(p): p.numel() for n, p in named if n not in tied}.values())
    twice = once + sum(p.numel() for n, p in named if n in tied)
    if abs(stored_parameters - twice) < abs(stored_parameters - once):
        return sorted(tied)
    return []


def tensors(model, build_dtype, apart: list[str] = ()) -> tuple[TensorInfo, ...]:
    """Every parameter and buffer as the loaded model holds it; a tied weight once, unless it is in
    `apart` (see `tied_apart`)."""
    import torch

    keep_fp16 = pattern_matcher(list(keep_in_fp32_plan(model, torch.float16)))
    keep_always = pattern_matcher(list(keep_in_fp32_plan(model, torch.bfloat16)))
    tied_targets = tied_weight_names(model) - set(apart)

    out = []
    params = list(model.named_parameters())
    listed = {n for n, _ in params}
    params += [(n, p) for n, p in model.named_parameters(remove_duplicate=False) if n in apart and n not in listed]
    named = [(n, p, False) for n, p in params] + [(n, b, True) for n, b in model.named_buffers()]
    for name, t, is_buffer in named:
        if name in tied_targets:
            continue
        if t.is_complex():  # Llama 4's rotary `freqs_ci`: held as torch.view_as_real holds it, 2 reals each
            t = torch.view_as_real(t)
        # Built under the load dtype, a tensor that came out in another dtype keeps that one.
        fixed = None if t.dtype == build_dtype else dtype_name(t.dtype)
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
        raise changed(f"{type(model).__name__} lists no parameters after tied weights are removed")
    return tuple(out)



# -- Hub kernels ------------------------------------------------------------------------------------------
#
# From 5.25 `from_pretrained` defaults to `use_kernels=True` (unless `USE_HUB_KERNELS` says no) and
# `kernels` is a dependency: after loading it calls `kernelize(model, device=<the model's device>,
# mode=INFERENCE)`, which, for every module whose class carries a `kernel_layer_name` (e.g.
# `LlamaRMSNorm` -> "RMSNorm") and every function attached with `use_kernelized_func` (rotary ->
# "rotary_pos_emb"), looks the name up in transformers' own mapping
# (`integrations/hub_kernels.get_kernel_mapping_transformers()`: {name: {device: repo | {Mode: repo}}})
# and fetches that Hub repository (`kernels-community/rotary`, version 2, ...). On the CPU the mapping
# names no repository, so nothing is fetched; on CUDA with the Hub offline and a repository not in the
# local kernel cache, kernels raises ValueError inside from_pretrained (5.25 with kernels 0.19: its
# `KernelizeFallback.ALL` falls back only on FileNotFoundError).

#: First release whose from_pretrained kernelizes by default (`use_kernels` None -> True).
HUB_KERNELS_DEFAULT_SINCE = (5, 25)


def kernelizes_by_default() -> bool:
    """Whether the installed transformers kernelizes a model in `from_pretrained` unless told not to."""
    return version_tuple() >= HUB_KERNELS_DEFAULT_SINCE


def kernels_disabled_by_env() -> bool:
    """`USE_HUB_KERNELS` set to a false value: from_pretrained kernelizes nothing (5.25's `_kernels_enabled`)."""
    import os

    return os.environ.get("USE_HUB_KERNELS", "YES").strip().upper() in ("0", "NO", "FALSE", "OFF", "N")


def hub_kernels(model, device_types=("cuda", "cpu")):
    """[(device type, layer name, repo id, ref, min cc, max cc)]: each Hub kernel repository `kernelize` would
    fetch for this (meta) model in inference mode on each of `device_types`, from transformers' own mapping
    of the installed version (`ref` "v2" for a version, else the revision; cc bounds as major*10+minor, None
    when any card takes it). None when the installed transformers does not kernelize by default (before 5.25)
    or has no `kernels` package: then nothing is fetched and the answer is "not applicable"."""
    if not kernelizes_by_default():
        return None
    from transformers.utils.import_utils import is_kernels_available

    if not is_kernels_available():
        return None
    try:
        from kernels import Mode
        from kernels._internals.layer.repos import _select_repository
        from transformers.integrations.hub_kernels import get_kernel_mapping_transformers
    except ImportError as exc:
        raise changed(f"its Hub kernel mapping cannot be read ({exc})") from None
    mapping = get_kernel_mapping_transformers()
    if not isinstance(mapping, dict) or not mapping:
        raise changed(f"get_kernel_mapping_transformers() gave {type(mapping).__name__} with no kernels")
    names: list[str] = []
    for module in model.modules():
        layer = getattr(type(module), "kernel_layer_name", None)
        if isinstance(layer, str) and layer not in names and _kernel_condition(module):
            names.append(layer)
        for func in getattr(module, "_kernel_funcs", {}).values():
            layer = getattr(type(func), "kernel_layer_name", None)
            if isinstance(layer, str) and layer not in names:
                names.append(layer)
    out = []
    for name in names:
        for device, entry in (mapping.get(name) or {}).items():
            dtype = device if isinstance(device, str) else getattr(device, "type", None)
            if dtype not in device_types:
                continue
            props = getattr(device, "properties", None)
            lo, hi = getattr(props, "min_capability", None), getattr(props, "max_capability", None)
            repo = entry
            if isinstance(entry, dict):
                picked = _select_repository(entry, mode=Mode.INFERENCE)
                if picked is None:
                    continue
                repo = picked[0]
            repo_id, rev, ver = (getattr(repo, a, None) for a in ("_repo_id", "_revision", "_version"))
            if not isinstance(repo_id, str) or (rev is None and ver is None):
                raise changed(f"its kernel mapping's {name!r} entry is a {type(repo).__name__} without a repo id and a "
                              "version or revision")
            out.append((dtype, name, repo_id, f"v{ver}" if ver is not None else str(rev), lo, hi))
    return out


def _kernel_condition(module) -> bool:
    """A layer's `kernel_condition` (kernels' `use_kernel_forward_from_hub(condition=)`), which kernelize asks
    before swapping it; a condition the meta module cannot answer counts as met (the kernel is listed)."""
    cond = getattr(type(module), "kernel_condition", None)
    if not callable(cond):
        return True
    try:
        return bool(cond(module))
    except Exception:  # noqa: BLE001 - a condition that needs real tensors
        return True


def kernel_cached(repo_id: str, ref: str) -> bool:
    """Whether a Hub kernel repository at `ref` ("v2", a branch or a commit) is in the local kernel cache,
    where `kernels` looks for it offline (`KERNELS_CACHE`, else the Hub cache: `kernels--ORG--NAME/refs/REF`
    naming a commit whose `snapshots/COMMIT` is there)."""
    try:
        from kernels._internals._versions import _cached_refs_dir
    except ImportError:
        return False
    refs = _cached_refs_dir(repo_id)
    commit = ref if re.fullmatch(r"[0-9a-f]{40}", ref) else None
    if commit is None:
        try:
            commit = (refs / ref).read_text().strip()
        except OSError:
            return False
    return bool(commit) and (refs.parent / "snapshots" / commit).is_dir()


def hub_offline() -> bool:
    """Whether `kernels` will look only in its local cache: it reads `huggingface_hub.constants.HF_HUB_OFFLINE`
    (kernels 0.19 `_internals/load.py`), set from `HF_HUB_OFFLINE` when huggingface_hub is imported."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def fetch_kernel(repo_id: str, ref: str) -> str | None:
    """Download a Hub kernel repository into the local kernel cache now, before any weight is read, with
    `kernels.install_kernel` (public); None when it is there, else why not (the Hub unreachable, ...)."""
    try:
        from kernels import install_kernel

        spec = {"version": int(ref[1:])} if re.fullmatch(r"v\d+", ref) else {"revision": ref}
        install_kernel(repo_id, **spec)
    except Exception as exc:  # noqa: BLE001 - network and Hub errors of many types; one line for the note
        return " ".join(str(exc).split())[:160] or type(exc).__name__
    return None


# -- config fields of a built config -----------------------------------------------------------------------

def int_field(config, name: str) -> int | None:
    value = config_value(config, name)
    return value if type(value) is int and value > 0 else None


def size_field(text_config, name: str, *, required: bool = True) -> int | None:
    """A whole-model size the estimate needs. A per-layer list, or a heterogeneous config's per-layer
    values, give their largest entry (the activation peak is set by the widest layer); a field that is
    missing means fitplan cannot describe this architecture."""
    value = config_value(text_config, name)
    if isinstance(value, (list, tuple)) and value and all(type(v) is int or v is None for v in value):
        value = max((v for v in value if v is not None), default=None)  # None: a layer without it
    if type(value) is int and value > 0:
        return value
    unset = value in (None, 0)  # as configs write "not used"
    if unset and required:
        raise UnsupportedModelError(
            f"{text_config.model_type!r} gives no whole-model '{name}': fitplan plans decoders described by "
            "hidden_size, num_hidden_layers and vocab_size, which this architecture is not",
            model_type=text_config.model_type)
    if unset:
        return None
    raise ConfigError(f"config.json: '{name}' must be a positive whole number (or a list of them, one per layer), "
                     f"got {value!r:.40}", key=name)


# -- the cache a generate() would use, read off meta-device forwards (cachelayout.py reads the layout) -----

@_contextlib.contextmanager
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


def probe(model, batch: int, tokens: int, calls: list, generator=None) -> list:
    import torch

    ids = torch.zeros((batch, tokens), dtype=torch.long, device="meta")
    with torch.no_grad(), watch_sdpa(calls), meta_autocast():
        cache = forward_cache(model, ids, generator)
    return [cachelayout.Held(*entry) for entry in cache_storages(cache, model)]


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
    shapes = cachelayout.probe_shapes(compress_rates(text))
    probes = [probe(model, batch, tokens, calls if i == 0 else [], generator)
              for i, (batch, tokens) in enumerate(shapes[:2])]
    layer_count = config_value(text, "num_hidden_layers")
    if type(layer_count) is not int or layer_count <= 0:
        layer_count = 1 + max((h.layer for h in probes[0] if h.layer is not None), default=0)
    args = (layer_count, dtype_name(build_dtype), build_dtype.itemsize, shapes)
    try:
        try:
            layers = cachelayout.layout(probes, *args)
        except cachelayout.NeedsConfirmation:
            layers = cachelayout.layout(probes + [probe(model, *shapes[2], [], generator)], *args)
    except cachelayout.UnknownCache as exc:
        raise UnsupportedModelError(f"{name}'s cache (transformers {version()}) is not one fitplan can size: "
                                    f"{exc}", model_type=name) from None
    expected = attention_layer_count(text, layer_count)
    filled = sum(1 for k in layers if k.elements_per_token > 0)
    if filled < expected:
        raise changed(f"{name}'s forward filled {filled} cache layers of the {expected} attention layers its "
                         "config names")
    stateful = state_layer_count(text, layer_count)
    with_state = sum(1 for k in layers if k.state_elements or k.state_fixed_bytes)
    if with_state < stateful:
        raise changed(f"{name}'s forward left a recurrent state in {with_state} cache layers of the {stateful} "
                         "recurrent layers its config names")
    if not filled and not with_state:
        raise changed(f"{name}'s forward kept nothing in its cache, per token or per sequence")
    return layers, any(calls)


def refuse_unsized(model) -> None:
    """Models whose generation keeps something fitplan does not size, refused with the reason."""
    name, tf = type(model).__name__, version()
    config = model.config
    if getattr(config, "is_encoder_decoder", False) is True:
        raise UnsupportedModelError(f"{name} is an encoder-decoder model: fitplan does not size its encoder output "
                                    "and cross-attention cache (seq2seq models are not planned)", model_type=name)
    if not model.can_generate():
        raise UnsupportedModelError(f"transformers {tf} says {name} cannot generate (no generate()), so there "
                                    "is no generation for fitplan to plan", model_type=name)
    text = config.get_text_config(decoder=True)
    if config_value(text, "cross_attention_layers"):
        raise UnsupportedModelError(f"{name} attends to the image through cross-attention layers whose cache holds "
                                    "the image's keys and values; fitplan does not size that cache", model_type=name)
    if config_value(text, "add_cross_attention"):
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
    if decoder is not None and (own_generate or not isinstance(exc, NoKVCache)):
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
    tf, cls_name = version(), type(model).__name__
    if isinstance(exc, NoKVCache):
        why = exc.args[1] if len(exc.args) > 1 else "neither takes nor returns a cache"
        raise UnsupportedModelError(f"{cls_name}'s forward (transformers {tf}) {why}: fitplan plans generation "
                                    "with a cache", model_type=cls_name) from None
    failure = f"transformers {tf}: {type(exc).__name__}: {reason(exc)[:140]}"
    if "meta" not in str(exc).lower():  # not a step the meta device cannot take: the model's own failure
        raise UnsupportedModelError(f"{cls_name} fails on this config in a generation step ({failure}), so fitplan "
                                    "cannot read its cache", model_type=cls_name) from None
    why = why_not_plain_attention(text_config)
    if not why and (cache_argument(model) is None or not uses_default_cache(model)):
        raise UnsupportedModelError(
            f"{cls_name}'s forward cannot run on the meta device ({failure}) and takes no DynamicCache whose layout "
            "config fields would give, so its cache cannot be sized", model_type=cls_name) from None
    if why:
        raise UnsupportedModelError(
            f"{cls_name}'s forward cannot run on the meta device ({failure}) and its config {why}, so its cache "
            "cannot be sized from config fields", model_type=cls_name) from None
    layers = int_field(text_config, "decoder_layers") or size_field(text_config, "num_hidden_layers")
    heads = int_field(text_config, "decoder_attention_heads") or size_field(text_config, "num_attention_heads")
    kv = size_field(text_config, "num_key_value_heads", required=False) or heads
    head_dim = size_field(text_config, "head_dim", required=False) or size_field(text_config, "hidden_size") // heads
    window = config_value(text_config, "sliding_window")
    window = window if isinstance(window, int) and not isinstance(window, bool) and window > 0 else None
    return tuple(KVLayer(2 * kv * head_dim, window) for _ in range(layers))


def why_not_plain_attention(text_config) -> str | None:
    for field in _NOT_PLAIN_ATTENTION:
        if config_value(text_config, field) not in (None, 0, [], ()):
            return f"sets '{field}'"
    if config_value(text_config, "add_cross_attention", False):
        return "adds cross-attention to an encoder"
    types = config_value(text_config, "layer_types")
    if isinstance(types, (list, tuple)):
        other = sorted({t for t in types if t not in ("full_attention", "sliding_attention")}, key=str)
        if other:
            return f"has layers of type {other[0]!r:.40}"
    if getattr(text_config, "is_heterogeneous", False) is True:
        return "is heterogeneous (sizes per layer)"
    return None


# -- image tokens of a vision-language model ---------------------------------------------------------------

#: Side in pixels of the image a dynamic-resolution model's count is given for.
REFERENCE_PIXELS = 1024
#: Config fields (on the top-level config) that state the image tokens outright.
_COUNT_FIELDS = ("mm_tokens_per_image", "image_seq_length", "num_image_tokens", "num_query_tokens")


def image_tokens_per_image(model, config) -> tuple[int | None, str]:
    """(tokens one image adds to the context, a note for the plan saying how it was found)."""
    import torch

    with torch.no_grad():
        found = _pixtral_tokens(config) or _image_probe(model, config)
    if found is not None:
        tokens, how = found
        return tokens, f"one image adds {tokens} tokens to the context ({how}); the images option counts them"
    for field in _COUNT_FIELDS:
        value = getattr(config, field, None)
        if type(value) is int and value > 0:
            return value, (f"one image adds {value} tokens to the context (config '{field}'); the images option "
                           "counts them")
    return None, ("fitplan cannot tell how many context tokens an image takes on this model: add them to the "
                  "context yourself (see docs/models.md)")


def _features_fn(model):
    fn = getattr(model, "get_image_features", None)
    if fn is None:
        fn = getattr(getattr(model, "model", None), "get_image_features", None)
    return fn if callable(fn) else None


def _text_hidden(config) -> int | None:
    text = config.get_text_config(decoder=True)
    value = getattr(text, "hidden_size", None)
    return value if type(value) is int and value > 0 else None


def _image_count(out, hidden: int) -> int | None:
    """Image tokens in what `get_image_features` returned for one image: the rows of the projected
    features (last dimension the language model's hidden size)."""
    import torch

    candidates = []
    if isinstance(out, torch.Tensor) or isinstance(out, (list, tuple)):
        candidates.append(out)
    else:
        for field in ("pooler_output", "image_embeds", "last_hidden_state"):
            value = getattr(out, field, None)
            if value is not None:
                candidates.append(value)
    for value in candidates:
        tensors = list(value) if isinstance(value, (list, tuple)) else [value]
        if tensors and all(isinstance(t, torch.Tensor) and t.dim() >= 2 and t.shape[-1] == hidden for t in tensors):
            return sum(t.numel() // hidden for t in tensors)
    return None


def _image_probe(model, config) -> tuple[int, str] | None:
    import torch

    fn = _features_fn(model)
    vision = getattr(config, "vision_config", None)
    hidden = _text_hidden(config)
    if fn is None or vision is None or hidden is None:
        return None
    params = _inspect.signature(fn).parameters
    channels = getattr(vision, "num_channels", None) or getattr(vision, "in_channels", None) or 3
    dtype = next(model.parameters()).dtype
    size = getattr(vision, "image_size", None)
    if isinstance(size, (list, tuple)) and len(size) == 2 and size[0] == size[1]:
        size = size[0]
    attempts = []
    if "image_grid_thw" in params:
        return _grid_tokens(vision)
    if type(size) is int and size > 0:
        image = torch.zeros((1, channels, size, size), dtype=dtype, device="meta")
        base = f"one {size}x{size} image, the vision tower's native size"
        if "image_sizes" in params:
            kwargs = dict(pixel_values=image, image_sizes=torch.tensor([[size, size]], dtype=torch.long))
            attempts.append((kwargs, base + "; larger images are tiled and take more"))
        elif "pixel_attention_mask" in params:
            kwargs = dict(pixel_values=image[:, None], pixel_attention_mask=torch.ones((1, 1, size, size),
                                                                                       dtype=torch.bool))
            attempts.append((kwargs, base + "; larger images are split and take more"))
        else:
            attempts.append((dict(pixel_values=image), base))
    for kwargs, how in attempts:
        try:
            out = fn(**kwargs)
        except Exception:  # noqa: BLE001 - a vision tower the meta device cannot run: the config may say
            continue
        tokens = _image_count(out, hidden)
        if tokens:
            return tokens, how
    return None


def _pixtral_tokens(config) -> tuple[int, str] | None:
    """Pixtral vision towers (Mistral 3: Mistral Small 3.1/3.2, Magistral; Pixtral-12B through LLaVA):
    `PixtralProcessor` resizes an image to fit its `longest_edge`, rounds each side up to whole
    `patch_size x spatial_merge_size` cells, and writes one [IMG] per cell with an [IMG_BREAK] ending
    each row (the last one [IMG_END]): `(columns + 1) x rows` positions
    (`_get_num_multimodal_tokens`, 5.0-5.24). Applied to a REFERENCE_PIXELS square, which fits every
    released Pixtral processor's `longest_edge` (1024 to 1540) unresized; tests/test_arch_vision.py
    checks the [IMG] count against a real tower's features."""
    vision = getattr(config, "vision_config", None)
    if getattr(vision, "model_type", None) != "pixtral":
        return None
    patch = getattr(vision, "patch_size", None)
    merge = getattr(config, "spatial_merge_size", None) or 1
    if type(patch) is not int or patch <= 0 or type(merge) is not int or merge <= 0:
        return None
    side = -(-REFERENCE_PIXELS // (patch * merge))  # cells per side, rounded up as the processor rounds
    return (side + 1) * side, (f"a {REFERENCE_PIXELS}x{REFERENCE_PIXELS} image: {side} rows of {side} image tokens "
                               "and a row break; the count grows with the image's area")


def _grid_tokens(vision) -> tuple[int, str] | None:
    """Dynamic resolution with `image_grid_thw` (Qwen2-VL and its descendants): the processor resizes
    the image to multiples of `patch_size x spatial_merge_size`, cuts it into patches (the grid) and
    puts `prod(grid) // spatial_merge_size**2` image tokens into the text. The vision tower cannot run
    on the meta device (it reads the grid's values), so the processor's formula is applied to a
    REFERENCE_PIXELS square; tests/test_arch_vision.py checks it against real tiny towers."""
    patch = getattr(vision, "patch_size", None)
    merge = getattr(vision, "spatial_merge_size", None)
    if type(patch) is not int or patch <= 0 or type(merge) is not int or merge <= 0:
        return None
    side = max(1, round(REFERENCE_PIXELS / (patch * merge))) * merge  # patches per side
    return (side * side) // (merge * merge), (f"a {REFERENCE_PIXELS}x{REFERENCE_PIXELS} image; the count grows with "
                                              "the image's area")


# -- pre-quantized checkpoints: the weights each method converts (scheme parsing: prequant.py) ------------

#: optimum's BLOCK_PATTERNS (optimum/gptq/constants.py): GPTQ converts layers under the first that exists.
GPTQ_BLOCK_PATTERNS = ("transformer.h", "model.decoder.layers", "gpt_neox.layers", "model.layers",
                       "model.language_model.layers", "h", "decoder.layers", "layers")


def _quantizer_skip(model, scheme: Scheme, default_skips: bool) -> list[str]:
    from transformers.quantizers.base import HfQuantizer

    skip = HfQuantizer.get_modules_to_not_convert(model, list(scheme.skip) if scheme.skip is not None else None,
                                                  model._keep_in_fp32_modules, add_default_skips=default_skips)
    return list(skip)


def _select_linear(model, scheme: Scheme, *, exact: bool, experts: bool, default_skips: bool) -> dict[str, int]:
    """Linear layers transformers replaces (`exact`: only `type(m) is nn.Linear`), and with `experts` the fused
    `*.experts` modules (fp8's FP8Experts), minus the skip list as the quantizer computes it."""
    from torch import nn
    from transformers.quantizers.quantizers_utils import should_convert_module

    skip = _quantizer_skip(model, scheme, default_skips)
    hidden = model.config.get_text_config(decoder=True).hidden_size
    out: dict[str, int] = {}
    for name, m in model.named_modules():
        if not should_convert_module(name, skip):
            continue
        if experts and name.endswith(".experts"):
            out.update(_expert_weights(name, m, hidden))
        elif (type(m) is nn.Linear) if exact else isinstance(m, nn.Linear):
            out[f"{name}.weight"] = int(m.out_features)
    return out


def _expert_weights(name: str, module, hidden: int) -> dict[str, int]:
    """{parameter name: output rows per expert} of a fused experts module. Most store [E, out, in]; gpt-oss
    stores [E, in, out]: the projection into the experts reads `hidden` inputs, `down_proj` writes `hidden`."""
    out = {}
    for pname, p in module.named_parameters(recurse=False):
        if p.dim() != 3 or not pname.endswith("proj"):
            continue
        a, b = int(p.shape[1]), int(p.shape[2])
        if pname == "down_proj":
            out[f"{name}.{pname}"] = hidden
        else:
            out[f"{name}.{pname}"] = a if b == hidden else b
    return out


def _select_gptq(model, scheme: Scheme) -> dict[str, int]:
    """optimum's GPTQQuantizer.convert_model: exact nn.Linear, Conv1D, Conv2d under the block prefix
    (`block_name_to_quantize`, else the first of BLOCK_PATTERNS present), only `modules_in_block_to_quantize`
    when given. The skip list does not apply: GPTQ never converts what lies outside the blocks."""
    from torch import nn
    from transformers.pytorch_utils import Conv1D

    names = [n for n, _ in model.named_modules()]
    prefixes = scheme.blocks or next(((p,) for p in GPTQ_BLOCK_PATTERNS if any(n.startswith(p) for n in names)), ())
    out: dict[str, int] = {}
    for name, m in model.named_modules():
        if not any(name.startswith(p) for p in prefixes):
            continue
        if scheme.in_blocks and not any(name.endswith(k) for k in scheme.in_blocks):
            continue
        if type(m) is nn.Linear:
            out[f"{name}.weight"] = int(m.out_features)
        elif isinstance(m, Conv1D):
            out[f"{name}.weight"] = int(m.weight.shape[1])
        elif isinstance(m, nn.Conv2d):
            out[f"{name}.weight"] = int(m.out_channels)
    return out


def _select_bnb(model, scheme: Scheme) -> dict[str, int]:
    return bnb_replaced_modules(model, scheme.skip)[0]


def _select_mxfp4(model, scheme: Scheme) -> dict[str, int]:
    """replace_with_mxfp4_linear: the experts of every GptOssMLP whose `<name>.experts` is not skipped."""
    from transformers.quantizers.quantizers_utils import should_convert_module

    skip = _quantizer_skip(model, scheme, default_skips=False)
    hidden = model.config.get_text_config(decoder=True).hidden_size
    out: dict[str, int] = {}
    for name, m in model.named_modules():
        if type(m).__name__ == "GptOssMLP" and should_convert_module(f"{name}.experts", skip):
            out.update(_expert_weights(f"{name}.experts", m.experts, hidden))
    return out


def _select_ct(model, scheme: Scheme) -> dict[str, int]:
    """compressed-tensors' is_match: a target or ignore entry matches a module by exact name, by `re:` regex on
    the name, or by the name of a class in the module's MRO. Linear modules only (what gets a packed weight)."""
    from torch import nn

    def hit(name: str, m, entries) -> bool:
        return any((e.startswith("re:") and re.match(e[3:], name)) or e == name
                   or any(c.__name__ == e for c in type(m).__mro__) for e in entries)

    targets = [t for g in scheme.groups for t in g.targets]
    ignore = list(scheme.skip or ())
    return {f"{name}.weight": int(m.out_features) for name, m in model.named_modules()
            if isinstance(m, nn.Linear) and hit(name, m, targets) and not hit(name, m, ignore)}


#: Which weights each pre-quantized method converts on the built model (output rows each), as its transformers
#: quantizer selects them; the keys are `fitplan.model.prequant.PARSERS`'.
CONVERTS: dict[str, Any] = {
    "gptq": _select_gptq,
    "awq": lambda m, s: _select_linear(m, s, exact=False, experts=False, default_skips=True),
    "fp8": lambda m, s: _select_linear(m, s, exact=True, experts=True, default_skips=False),
    "fbgemm_fp8": lambda m, s: _select_linear(m, s, exact=False, experts=False, default_skips=False),
    "compressed-tensors": _select_ct,
    "bitsandbytes": _select_bnb,
    "mxfp4": _select_mxfp4,
}


def mark_converted(model, quantization_config: dict, tensors: tuple[TensorInfo, ...],
                   stored_bytes: int | None) -> tuple[TensorInfo, ...]:
    """`tensors` with the weights the method converts marked `quantizable` (and their output rows). A method
    fitplan does not know can only be sized from stored headers: without them it is refused."""
    scheme = scheme_of(quantization_config)
    select = CONVERTS.get(scheme.method)
    if select is None:
        if stored_bytes is None:
            raise UnsupportedModelError(
                f"pre-quantized with {scheme.method!r:.30}, whose layout fitplan does not know, and its safetensors "
                f"headers are not available; plan it from a local folder or a Hub repo with safetensors files",
                model_type=None)
        return tensors
    converted = select(model, scheme)
    return tuple(replace(t, quantizable=True, out_features=converted[t.name]) if t.name in converted else t
                 for t in tensors)


# -- learned absolute positions ----------------------------------------------------------------------------

def absolute_position_limit(model, max_positions: int | None) -> int | None:
    """The longest sequence the built model can index when its text side looks positions up in a
    learned table (an `nn.Embedding` other than the input embeddings whose rows, less the offset the
    table's own class declares, as OPT's and BioGPT's do, are the config's position count: GPT-2's
    `wpe`, GPT-Neo, GPT-BigCode, OPT); None for rotary, ALiBi and other positions that extend. Read
    off the model transformers built, so no list of model types is kept here."""
    import torch

    if not max_positions:
        return None
    tokens = model.get_input_embeddings()
    for module in model.modules():
        if isinstance(module, torch.nn.Embedding) and module is not tokens:
            offset = getattr(module, "offset", 0)
            if isinstance(offset, int) and module.num_embeddings - offset == max_positions:
                return max_positions
    return None


# -- the inventory: the steps above, one after another ------------------------------------------------------

def inventory(cfg: dict, *, model_id: str, auto_class: str | None, trust_remote_code: bool,
              stored_bytes: int | None, stored_parameters: int | None):
    """The `Inventory` of a checked config.json dict (`fitplan.model.build.build_inventory` checks it first), read
    off the model transformers builds for it on the meta device."""
    from ..versions import lib_versions
    from .inventory import HubKernel, Inventory

    import torch

    build_dtype = torch.bfloat16
    # The transformers steps, one after another: the meta build, then what it holds.
    built = build(cfg, auto_class, build_dtype, trust_remote_code)
    model, config, cls, auto_class = built.model, built.config, built.cls, built.auto_class
    text = model.config.get_text_config(decoder=True)
    scratch, scan = prefill_scratch(model)
    method = quant_method(model)
    # A pre-quantized checkpoint's stored count tells the same where it stores each converted weight as one element
    # (fp8, int8): the meta build is the float model either way (`build_meta_model`). Packed ones: `stores_each_weight`.
    counted = not method or stores_each_weight(scheme_of(cfg["quantization_config"]))
    apart = tied_apart(model, stored_parameters) if built.whole and counted else []
    held = tensors(model, build_dtype, apart)
    packed, subclassed = ({}, []) if method else bnb_replaced_modules(model)
    refuse_unsized(model)
    hidden = size_field(text, "hidden_size")
    inter = (size_field(text, "intermediate_size", required=False) or size_field(text, "ffn_dim", required=False)
             or size_field(text, "n_inner", required=False) or 4 * hidden)
    ckpt_dtype = cfg.get("dtype") or cfg.get("torch_dtype")
    top_k = size_field(text, "num_experts_per_tok", required=False) or 0
    max_positions = getattr(text, "max_position_embeddings", None) or getattr(text, "n_positions", None)
    expert_inter = (size_field(text, "moe_intermediate_size", required=False) or inter) if top_k else 0
    layers = size_field(text, "num_hidden_layers")
    heads = size_field(text, "num_attention_heads", required=False) or 0
    vocab = size_field(text, "vocab_size")
    kv_heads = size_field(text, "num_key_value_heads", required=False) or 0
    position_limit = absolute_position_limit(model, max_positions)
    flash = bool(getattr(type(model), "_supports_flash_attn", False)) and kernels_installed(FLASH_ATTENTION_KERNELS)
    image_tokens, image_note = (image_tokens_per_image(model, config) if auto_class == "image-text-to-text"
                                else (None, None))
    found = hub_kernels(model)
    kernel_rows = None if found is None else tuple(HubKernel(*k) for k in found)
    # Then what leaves this module for pure helpers: the cache a generate() would use, read from probe forwards
    # (cachelayout.py turns what it held into a layout), and the weights a pre-quantized method converts.
    kv_note = None
    math_sdpa = False
    try:
        kv_layers, math_sdpa = kv_layers_from_cache(model, build_dtype)
    except (LibraryChangedError, UnsupportedModelError):
        raise
    except Exception as exc:  # a forward the meta device cannot run
        kv_layers, math_sdpa, kv_note = kv_layers_fallback(model, text, exc, build_dtype)
    if method:  # pre-quantized: sized as its method's loader holds it (fitplan.model.prequant), not re-quantized
        held = mark_converted(model, cfg["quantization_config"], held, stored_bytes)
    else:
        held = tuple(replace(t, quantizable=True, out_features=packed[t.name]) if t.name in packed else t
                     for t in held)
    notes = [kv_note]
    if scan:
        kernels = "fla" if "delta" in scan else " and ".join(SSM_KERNELS)
        notes.append(f"without {kernels} installed, transformers {version()} runs {scan} on its torch path, "
                     f"which holds {scratch:,} bytes per token of each sequence at once during the prompt: "
                     f"planned; installing {kernels} makes it linear in the state, not in this")
    notes.append(image_note)
    if apart:
        notes.append(f"this config ties {', '.join(apart)} to the input embeddings, but the checkpoint stores "
                     f"{stored_parameters:,} parameters, the count with them apart, and transformers "
                     f"{version()} loads such a pair untied: counted twice")
    if subclassed and not packed:
        notes.append(f"bitsandbytes quantizes none of this model's linear layers ({type(model).__name__} "
                     f"uses subclasses of nn.Linear, which transformers {version()} leaves as they are): "
                     "int8 and 4-bit hold what 16-bit holds")
    return Inventory(
        model_id=model_id,
        model_type=config.model_type,
        architecture=cls.__name__,
        parameters=sum(t.numel for t in held if not t.buffer),
        tensors=held,
        kv_layers=kv_layers,
        hidden_size=hidden,
        intermediate_size=inter,
        num_layers=layers,
        num_attention_heads=heads,
        vocab_size=vocab,
        max_positions=max_positions,
        position_limit=position_limit,
        experts_per_token=top_k,
        expert_intermediate_size=expert_inter,
        attn_implementation="sdpa-math" if math_sdpa else str(
            getattr(model.config, "_attn_implementation", None) or "sdpa"),
        checkpoint_dtype=str(ckpt_dtype) if ckpt_dtype else None,
        prequantized=method,
        stored_bytes=stored_bytes,
        quantization=cfg["quantization_config"] if method else None,
        auto_class=auto_class,
        image_tokens_per_image=image_tokens,
        prefill_scratch_per_token=scratch,
        compile_fullgraph=bool(getattr(type(model), "_can_compile_fullgraph", False)),
        flash_attn=flash,
        num_key_value_heads=kv_heads,
        hub_kernels=kernel_rows,
        notes=tuple(n for n in notes if n),
        versions=lib_versions(),
    )
