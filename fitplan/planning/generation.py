"""How to generate: the cache, compile and attention setup a plan loads with, and what it holds.

Pure: an `Inventory` (with the library versions it was built with), a precision, the workload and
where the model is placed in; a `Generation` out. The choice follows what transformers itself does
with a generation config (transformers 5.17 and 5.24 read; 5.0 checked too):

- `cache_implementation="static"` makes `generate()` allocate a `StaticCache` of `max_cache_len`
  positions for the call's batch, a full-attention layer `max_cache_len` long and a sliding-window
  layer `min(max_cache_len, window)` long (the sliding-window and hybrid forms are the same class:
  transformers reads the layer types off the config; "sliding_window" and "hybrid" are deprecated
  names of it). `generation_config.max_cache_len` sizes it for the planned context (5.17 and later;
  5.0 sizes it to each call, so a plan's context would not bound it there).
- On CUDA, with such a cache, `generate()` compiles the decode step itself
  (`torch.compile(mode="reduce-overhead")`: CUDA graphs), unless the quantizer says it cannot be
  compiled (bitsandbytes' 4-bit and 8-bit do), the model is offloaded, or `disable_compile` is set.
  Without compile a static cache decodes slower than the dynamic one (shared/FINDINGS.md: nf4).
- Attention: SDPA where transformers picks it, eager where the model needs it (the inventory says
  which, read off the built model); flash-attention 2 when the package is installed, the model
  supports it and every GPU is Ampere or newer.

A setup is chosen only where its speed was measured faster than plain `generate()`
(calibration.COMPILED_DECODE_OVERHEAD_S_PER_LAYER holds the measured kinds); everything else
generates as plain transformers does.
"""
from __future__ import annotations

from dataclasses import dataclass

from .. import calibration as C
from ..versions import parse as parse_version
from ..vocab.precision import Precision

#: The first transformers whose `GenerationConfig` takes `max_cache_len` that fitplan checked (5.17 and
#: 5.24 have it, 5.0 has not); below it a static cache is sized per call, so it is not chosen.
STATIC_MIN_TRANSFORMERS = (5, 17)
#: What `generate()` compiles on its own with a static cache (transformers' `CompileConfig()` defaults).
AUTO_COMPILE = {"by": "generate", "mode": "reduce-overhead", "fullgraph": False, "dynamic": None}
#: Flash-attention 2 needs Ampere (compute capability 8.0) or newer and a 16-bit compute dtype.
FLASH_MIN_CC = (8, 0)


@dataclass(frozen=True)
class Generation:
    """The generation setup of one plan row. `compile` is None or how the forward is compiled;
    `max_cache_len`/`batch` are what a static cache is allocated for (None for a dynamic cache)."""

    cache_implementation: str  # "dynamic" | "static"
    compile: dict | None
    attn_implementation: str
    why: str
    max_cache_len: int | None = None
    batch: int | None = None

    @property
    def static(self) -> bool:
        return self.cache_implementation == "static"

    @property
    def key(self) -> str:
        """Which measured decode overhead applies: "compiled" (static cache, compiled forward) or "plain"."""
        return "compiled" if self.static and self.compile else "plain"

    def generation_config(self) -> dict:
        """What `fitplan.load()` sets on `model.generation_config` (an empty dict: transformers' defaults)."""
        if not self.static:
            return {}
        return {"cache_implementation": "static", "max_cache_len": self.max_cache_len}

    def to_dict(self) -> dict:
        return {"cache_implementation": self.cache_implementation, "compile": self.compile,
                "attn_implementation": self.attn_implementation, "max_cache_len": self.max_cache_len,
                "batch": self.batch, "why": self.why}


def _attention(inv, gpus, compute_dtype: str) -> tuple[str, str]:
    """(attn_implementation, why) for the inventory's model on `gpus`."""
    default = inv.attn_implementation
    if default == "sdpa" and inv.flash_attn and gpus and compute_dtype in ("bfloat16", "float16") and all(
            g.compute_capability >= FLASH_MIN_CC for g in gpus):
        return "flash_attention_2", "flash-attention 2 is installed, the model supports it and every GPU is Ampere or newer"
    if default in ("eager", "sdpa-math"):
        return ("eager" if default == "eager" else "sdpa"), (
            f"transformers {inv.versions.get('transformers')} runs this model with "
            f"{'eager attention' if default == 'eager' else 'SDPA math (scores held)'}: it needs it")
    return "sdpa", "SDPA, transformers' default for this model"


def plain(inv, reason: str, gpus=(), compute_dtype: str = "bfloat16") -> Generation:
    attn, attn_why = _attention(inv, gpus, compute_dtype)
    return Generation("dynamic", None, attn, f"{reason}; {attn_why}")


def choose(inv, precision: Precision, work, *, gpus=(), placement: str = "one-gpu", fast: bool = True,
           compute_dtype: str = "bfloat16") -> Generation:
    """The fastest setup known to work for `inv` at `precision` on `gpus`, placed as `placement`
    ("one-gpu", "split", "offload", "cpu"; "no-room": one GPU that holds it only without the static
    setup's workspace; "no-fit": it fits nowhere here, so it is sized as plain generate());
    `fast=False`: plain transformers."""
    if not fast:
        return plain(inv, "fast=False: plain transformers generate() with its dynamic cache", gpus, compute_dtype)
    if placement == "cpu" or not gpus:
        return plain(inv, "no GPU: transformers compiles generation on CUDA only, and a static cache alone is no "
                          "faster", gpus, compute_dtype)
    if placement == "no-room":
        return plain(inv, "the static cache and its compiled decode's workspace do not fit with the weights on one "
                          "GPU, plain generate() does", gpus, compute_dtype)
    if placement == "no-fit":
        return plain(inv, "does not fit here: sized as plain generate(), the least it would hold", gpus,
                     compute_dtype)
    if placement == "offload":
        return plain(inv, "offloaded layers: transformers does not compile a model with CPU offload", gpus, compute_dtype)
    if placement == "split":
        return plain(inv, "split over GPUs: a compiled static-cache decode was not measured there", gpus, compute_dtype)
    if precision.quantized or inv.prequantized:
        what = inv.prequantized or ("bitsandbytes LLM.int8()" if precision.bits == 8 else "bitsandbytes 4-bit")
        return plain(inv, f"{what} cannot be compiled by transformers (its quantizer says so), and a static cache "
                          "without compile decoded slower than the dynamic one (nf4: 37 vs 56 tokens/s, H200)",
                     gpus, compute_dtype)
    tf = parse_version(inv.versions.get("transformers") or "0")
    if tf < STATIC_MIN_TRANSFORMERS:
        return plain(inv, f"transformers {inv.versions.get('transformers')} sizes a static cache to each call (no "
                          "generation_config.max_cache_len), so the plan's context would not bound it", gpus, compute_dtype)
    if any(k.state_elements or k.state_fixed_bytes for k in inv.kv_layers) or not inv.kv_layers:
        return plain(inv, "recurrent state layers: transformers builds their own cache, not a static one", gpus, compute_dtype)
    if not inv.compile_fullgraph:
        return plain(inv, f"{inv.architecture} does not declare a compilable forward (_can_compile_fullgraph)",
                     gpus, compute_dtype)
    kind = "float"
    if kind not in C.COMPILED_DECODE_OVERHEAD_S_PER_LAYER:
        return plain(inv, "a compiled static-cache decode was never measured for these weights", gpus, compute_dtype)
    attn, attn_why = _attention(inv, gpus, compute_dtype)
    if attn == "eager" or attn == "flash_attention_2":
        return plain(inv, f"a compiled static-cache decode with {attn} was not measured", gpus, compute_dtype)
    sliding = any(k.window for k in inv.kv_layers)
    form = " (sliding-window layers keep min(context, window) positions)" if sliding else ""
    return Generation("static", dict(AUTO_COMPILE), attn,
                      f"static cache{form} sized for {work.context} tokens x {work.batch}, allocated at the first "
                      f"generate(); transformers {inv.versions.get('transformers')} compiles its decode step "
                      "(torch.compile, reduce-overhead: CUDA graphs), measured 4.8-4.9x plain generate() for bf16 "
                      f"(Qwen3-8B shape, H200); {attn_why}", work.context, work.batch)
