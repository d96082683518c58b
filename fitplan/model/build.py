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

from dataclasses import replace

from ..errors import LibraryChangedError, OptionError, UnsupportedModelError
from ..vocab.classes import AUTO_CLASSES
from .inventory import HubKernel, Inventory
from . import cacheprobe, fields, hf, vision
from .prequant import mark_converted
from .sources import decode_special_floats
from ..versions import lib_versions

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
        import torch

        build_dtype = torch.bfloat16
        # The transformers steps, one after another: the meta build, then what it holds.
        built = hf.build(cfg, auto_class, build_dtype, trust_remote_code)
        model, config, cls, auto_class = built.model, built.config, built.cls, built.auto_class
        text = model.config.get_text_config(decoder=True)
        scratch, scan = hf.prefill_scratch(model)
        method = hf.quant_method(model)
        apart = hf.tied_apart(model, stored_parameters) if built.whole and not method else []
        tensors = hf.tensors(model, build_dtype, apart)
        packed, subclassed = ({}, []) if method else hf.bnb_replaced_modules(model)
        # The cache a generate() would use, read from probe forwards.
        kv_note = None
        math_sdpa = False
        cacheprobe.refuse_unsized(model)
        try:
            kv_layers, math_sdpa = cacheprobe.kv_layers_from_cache(model, build_dtype)
        except (LibraryChangedError, UnsupportedModelError):
            raise
        except Exception as exc:  # a forward the meta device cannot run
            kv_layers, math_sdpa, kv_note = cacheprobe.kv_layers_fallback(model, text, exc, build_dtype)
        image_tokens, image_note = (vision.image_tokens_per_image(model, config) if auto_class == "image-text-to-text"
                                    else (None, None))
        if method:  # pre-quantized: sized as its method's loader holds it (fitplan.model.prequant), not re-quantized
            tensors = mark_converted(model, cfg["quantization_config"], tensors, stored_bytes)
        else:
            tensors = tuple(replace(t, quantizable=True, out_features=packed[t.name]) if t.name in packed else t
                            for t in tensors)
        notes = [kv_note]
        if scan:
            kernels = "fla" if "delta" in scan else " and ".join(hf.SSM_KERNELS)
            notes.append(f"without {kernels} installed, transformers {hf.version()} runs {scan} on its torch path, "
                         f"which holds {scratch:,} bytes per token of each sequence at once during the prompt: "
                         f"planned; installing {kernels} makes it linear in the state, not in this")
        notes.append(image_note)
        found = hf.hub_kernels(model)
        hub_kernels = None if found is None else tuple(HubKernel(*k) for k in found)
        if apart:
            notes.append(f"this config ties {', '.join(apart)} to the input embeddings, but the checkpoint stores "
                         f"{stored_parameters:,} parameters, the count with them apart, and transformers "
                         f"{hf.version()} loads such a pair untied: counted twice")
        if subclassed and not packed:
            notes.append(f"bitsandbytes quantizes none of this model's linear layers ({type(model).__name__} "
                         f"uses subclasses of nn.Linear, which transformers {hf.version()} leaves as they are): "
                         "int8 and 4-bit hold what 16-bit holds")
        hidden = fields.size_field(text, "hidden_size")
        inter = (fields.size_field(text, "intermediate_size", required=False) or fields.size_field(text, "ffn_dim", required=False)
                 or fields.size_field(text, "n_inner", required=False) or 4 * hidden)
        ckpt_dtype = cfg.get("dtype") or cfg.get("torch_dtype")
        top_k = fields.size_field(text, "num_experts_per_tok", required=False) or 0
        max_positions = getattr(text, "max_position_embeddings", None) or getattr(text, "n_positions", None)
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
            max_positions=max_positions,
            position_limit=absolute_position_limit(model, max_positions),
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
            flash_attn=bool(getattr(type(model), "_supports_flash_attn", False)) and hf.kernels_installed(hf.FLASH_ATTENTION_KERNELS),
            num_key_value_heads=fields.size_field(text, "num_key_value_heads", required=False) or 0,
            hub_kernels=hub_kernels,
            notes=tuple(n for n in notes if n),
            versions=lib_versions(),
        )
