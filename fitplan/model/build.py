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
from .inventory import AUTO_CLASSES, HubKernel, Inventory, TensorInfo, dtype_name
from . import cacheprobe, fields, hf, vision
from .prequant import mark_converted
from .source import decode_special_floats
from ..versions import lib_versions

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
        raise InputError(f"config.json is not valid for {model_type!r:.80}: {fields.reason(exc)}") from None


#: `fitplan.load()`'s names for the Auto classes fitplan plans for.


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


def tied_apart(model, stored_parameters: int | None) -> list[str]:
    """The weights transformers ties by this config (lm_head to the input embeddings) that the
    checkpoint stores apart, so that loading keeps them apart: `from_pretrained` (5.0-5.24,
    `PreTrainedModel.tie_weights(missing_keys=...)`) does not tie a pair whose both halves the
    checkpoint holds (Magistral-Small-2509: Mistral3Config ties by default, the checkpoint has its own
    lm_head, 1.3 GB in bf16). Decided by the count the checkpoint stores: closer to the model with
    the tied weights counted twice than once means stored apart. [] when the count is unknown."""
    tied = hf.tied_weight_names(model)
    if not tied or stored_parameters is None:
        return []
    named = list(model.named_parameters(remove_duplicate=False))  # the meta build may or may not have tied them
    once = sum({id(p): p.numel() for n, p in named if n not in tied}.values())
    twice = once + sum(p.numel() for n, p in named if n in tied)
    if abs(stored_parameters - twice) < abs(stored_parameters - once):
        return sorted(tied)
    return []


def _tensors(model, build_dtype, apart: list[str] = ()) -> tuple[TensorInfo, ...]:
    """Every parameter and buffer as the loaded model holds it; a tied weight once, unless it is in
    `apart` (see `tied_apart`)."""
    import torch

    keep_fp16 = hf.pattern_matcher(list(hf.keep_in_fp32_plan(model, torch.float16)))
    keep_always = hf.pattern_matcher(list(hf.keep_in_fp32_plan(model, torch.bfloat16)))
    tied_targets = hf.tied_weight_names(model) - set(apart)

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
        raise hf.changed(f"{type(model).__name__} lists no parameters after tied weights are removed")
    return tuple(out)


def build_inventory(cfg: dict, *, model_id: str, trust_remote_code: bool = False,
                    stored_bytes: int | None = None, auto_class: str | None = None,
                    stored_parameters: int | None = None) -> Inventory:
    """The inventory of `cfg` (a config.json dict) as `auto_class` would load it ("causal-lm",
    "image-text-to-text"; None: the class the checkpoint is meant for, see `default_auto_class`).
    Raises `FitplanError`s for configs it cannot plan."""
    if auto_class == "seq2seq-lm":
        raise UnsupportedModelError("fitplan does not plan encoder-decoder models (seq2seq-lm): their encoder "
                                    "output and cross-attention cache are not sized; plan a decoder-only model")
    if auto_class is not None and auto_class not in AUTO_CLASSES:
        raise InputError(f"auto_class must be one of {', '.join(AUTO_CLASSES)}, got {auto_class!r:.40}")
    fields.check_config_fields(cfg)
    with _quiet():
        import torch

        build_dtype = torch.bfloat16
        config = _config_object(cfg, trust_remote_code)
        default = default_auto_class(config)
        whole = auto_class in (None, default)  # the model the checkpoint stores, all of it
        auto_class = auto_class or default
        cls, build_config = _model_class(config, auto_class)
        try:
            model = hf.build_meta_model(cls, build_config, build_dtype)
        except LibraryChangedError:
            raise
        except Exception as exc:
            raise UnsupportedModelError(
                f"transformers {hf.version()} could not build {cls.__name__} from this config: {fields.reason(exc)}"
            ) from None
        text = model.config.get_text_config(decoder=True)
        notes: list[str] = []
        math_sdpa = False
        cacheprobe.refuse_unsized(model)
        try:
            kv_layers, math_sdpa = cacheprobe.kv_layers_from_cache(model, build_dtype)
        except (LibraryChangedError, UnsupportedModelError):
            raise
        except Exception as exc:  # a forward the meta device cannot run
            kv_layers, math_sdpa, note = cacheprobe.kv_layers_fallback(model, text, exc, build_dtype)
            notes.append(note)
        scratch, scan = hf.prefill_scratch(model)
        if scan:
            kernels = "fla" if "delta" in scan else " and ".join(hf.SSM_KERNELS)
            notes.append(f"without {kernels} installed, transformers {hf.version()} runs {scan} on its torch path, "
                         f"which holds {scratch:,} bytes per token of each sequence at once during the prompt: "
                         f"planned; installing {kernels} makes it linear in the state, not in this")
        found = hf.hub_kernels(model)
        hub_kernels = None if found is None else tuple(HubKernel(*k) for k in found)
        image_tokens = None
        if auto_class == "image-text-to-text":
            image_tokens, note = vision.image_tokens_per_image(model, config)
            notes.append(note)
        prequant = getattr(model.config, "quantization_config", None)
        method = None
        if prequant is not None:
            method = prequant.get("quant_method") if isinstance(prequant, dict) else getattr(prequant, "quant_method", None)
            method = str(getattr(method, "value", method))
        apart = tied_apart(model, stored_parameters) if whole and not method else []
        if apart:
            notes.append(f"this config ties {', '.join(apart)} to the input embeddings, but the checkpoint stores "
                         f"{stored_parameters:,} parameters, the count with them apart, and transformers "
                         f"{hf.version()} loads such a pair untied: counted twice")
        tensors = _tensors(model, build_dtype, apart)
        if method:  # pre-quantized: sized as its method's loader holds it (fitplan.model.prequant), not re-quantized
            tensors = mark_converted(model, cfg["quantization_config"], tensors, stored_bytes)
        else:
            packed, subclassed = hf.bnb_replaced_modules(model)
            if subclassed and not packed:
                notes.append(f"bitsandbytes quantizes none of this model's linear layers ({type(model).__name__} "
                             f"uses subclasses of nn.Linear, which transformers {hf.version()} leaves as they are): "
                             "int8 and 4-bit hold what 16-bit holds")
            tensors = tuple(
                replace(t, quantizable=True, out_features=packed[t.name]) if t.name in packed else t
                for t in tensors
            )
        hidden = fields.size_field(text, "hidden_size")
        inter = (fields.size_field(text, "intermediate_size", required=False) or fields.size_field(text, "ffn_dim", required=False)
                 or fields.size_field(text, "n_inner", required=False) or 4 * hidden)
        ckpt_dtype = cfg.get("dtype") or cfg.get("torch_dtype")
        top_k = fields.size_field(text, "num_experts_per_tok", required=False) or 0
        expert_inter = (fields.size_field(text, "moe_intermediate_size", required=False) or inter) if top_k else 0
        return Inventory(
            model_id=model_id,
            model_type=config.model_type,
            architecture=cls.__name__,
            parameters=sum(t.numel for t in tensors if not t.buffer),
            tensors=tensors,
            kv_layers=kv_layers,
            hidden_size=hidden,
            intermediate_size=inter,
            num_layers=fields.size_field(text, "num_hidden_layers"),
            num_attention_heads=fields.size_field(text, "num_attention_heads", required=False) or 0,
            vocab_size=fields.size_field(text, "vocab_size"),
            max_positions=getattr(text, "max_position_embeddings", None) or getattr(text, "n_positions", None),
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
            hub_kernels=hub_kernels,
            notes=tuple(n for n in notes if n),
            versions=lib_versions(),
        )
