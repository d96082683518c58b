"""The plan: what to load, how, where — and the exact `from_pretrained` arguments that realise it.

`fitplan check` prints a `Plan`, `fitplan.load()` follows one, and users can hand
`plan.from_pretrained_kwargs()` to transformers themselves: one object, so they never disagree.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ..vocab import precision as P
from .estimate import Estimate, attention_score_bytes, unquantized_bytes
from .workload import Workload, planned
from ..hardware.machine import Hardware
from ..model.inventory import Inventory
from ..options import PlanOptions
from .placement import Decision
from .policy import Choice, precision_named, weights_fraction_for_accelerate
from .suggest import Suggestion
from ..vocab.units import fmt_bytes
from ..versions import untested_notes

#: transformers' bitsandbytes quantizers multiply `max_memory` by this before placing layers
#: (`Bnb4BitHfQuantizer.adjust_max_memory`); fitplan divides by it so the result is as planned.
BNB_MAX_MEMORY_SCALE = 0.90
#: A note says why quantizing saves little when 4-bit keeps more than this share of 16-bit's bytes.
SAVES_LITTLE = 0.5
#: The decoder layer a tensor belongs to, as a module name (`model.layers.12.mlp.up_proj.weight` ->
#: `model.layers.12`): the unit an offloaded plan's device_map names.
_LAYER_MODULE = re.compile(r"^(.*?\.\d+)\.")
#: The inventory's own note for models whose linear layers bitsandbytes skips (fitplan.model.build);
#: the plan's note on what quantizing saves says it with the cause and the remedy, so it replaces it.
_SUBCLASS_NOTE = "uses subclasses of nn.Linear"


@dataclass(frozen=True)
class Pin:
    """A lock the plan follows (`fitplan lock`): its placement, so every load places the model the same
    way. `needs` is what the lock puts on each device; `max_memory` is in accelerate's units."""

    path: str
    precision: str
    compute_dtype: str
    device_map: Any  # "auto" | "cpu" | (("", index),) | ((module, index or "cpu"), ...) for offload
    max_memory: tuple[tuple[Any, int], ...] | None
    needs: tuple[tuple[Any, int], ...]


@dataclass(frozen=True)
class Plan:
    """What to load, how and where; made by `fitplan.pipeline.make_plan`, never changed after."""

    model_id: str
    revision: str | None
    origin: str
    inventory: Inventory
    hardware: Hardware
    options: PlanOptions
    workload: Workload  # what `options` ask of this model: computed once (`workload.planned`), read everywhere
    choice: Choice
    advice: tuple[Suggestion, ...] = ()  # what would make it fit, when nothing does
    pin: Pin | None = None
    extra_notes: tuple[str, ...] = ()  # notes from the request (e.g. a stale lock beside a profile)
    gguf: Any = None  # llama.cpp rows (fitplan.gguf.GGUFChoice) when no GPU is present or nothing fits
    model_digest: str | None = None  # a local folder's content when planned (fitplan.model.digest)
    engine: Any = None  # the serving-engine deployment (fitplan.engines.choose.EngineChoice) when engine is not transformers
    tp_hint: Any = None  # what vLLM tensor parallelism gives on these GPUs when one GPU is not enough (EngineChoice)
    hub_kernels: Any = None  # fitplan.model.kernels.KernelUse: Hub kernels from_pretrained fetches on the target

    @property
    def fits(self) -> bool:
        return self.choice.chosen is not None

    @property
    def decision(self) -> Decision | None:
        return self.choice.chosen

    @property
    def precision(self) -> str | None:
        return self.decision.precision if self.decision else None

    @property
    def generation(self):
        """How the loaded model generates (fitplan.planning.generation.Generation); None when nothing fits."""
        return self.decision.generation if self.decision else None

    @property
    def compute_dtype(self) -> str:
        """The dtype from_pretrained computes in: the chosen float precision itself (`dtype=`), or the
        compute dtype of bitsandbytes' layers; the policy's compute dtype when nothing fits."""
        return self.decision.estimate.compute_dtype if self.decision else self.choice.compute_dtype

    @property
    def offloaded(self) -> bool:
        return bool(self.decision and self.decision.offload_bytes)

    @property
    def load_dtype(self) -> str:
        """`dtype=` for from_pretrained: the float precision itself, or the compute dtype under bnb."""
        p = precision_named(self.inventory, self.precision) if self.precision else None
        return p.float_dtype if p and p.float_dtype else self.compute_dtype

    def device_map(self):
        """`{"": i}` for one GPU (no accelerate placement needed), "auto" for splits, "cpu" without GPU;
        for offload every module named with its device (see `_offload_map`); a pinned plan's locked map."""
        d = self.decision
        if d is None:
            return None
        if self.pin is not None:
            dm = self.pin.device_map
            return dict(dm) if isinstance(dm, tuple) else dm
        if self.offloaded:
            return self._offload_map()
        devices = [s.device for s in d.placement]
        if devices == ["cpu"]:
            return "cpu"
        if len(devices) == 1:
            return {"": devices[0]}
        return "auto"

    def _offload_map(self) -> dict:
        """Module -> device for an offloaded plan: what sits outside the decoder layers on the first GPU,
        each layer where the placement put it, "cpu" for the offloaded ones.

        Named module by module because transformers leaves a module unquantized only when the
        device_map it is given names it "cpu": with "auto", its bitsandbytes quantizers replace the
        layers before the map is inferred, quantize the offloaded ones in CPU RAM, and accelerate then
        fails to copy their quantization state to the GPU at the first forward (transformers 5.24,
        accelerate 1.15; tests/test_offload.py). Named, the placement is also exactly the plan's.
        """
        d = self.decision
        first = next(s.device for s in d.placement if s.device != "cpu")
        where = {li: s.device for s in d.placement for li in s.layers}
        outside: dict = {}
        layers: dict = {}
        for t in self.inventory.tensors:
            idx = t.layer
            m = _LAYER_MODULE.match(t.name) if idx is not None else None
            if m:
                layers.setdefault(m.group(1), where[idx])
            else:
                outside.setdefault(t.name.rsplit(".", 1)[0], first)
        outside.setdefault("lm_head", first)  # a tied lm_head is no tensor of the inventory, but a module
        return {**outside, **layers}

    def max_memory(self) -> dict | None:
        """Per-device limits for accelerate, in its own accounting, so the split lands as planned.

        Each GPU's limit is what it can give to weights after its CUDA context, activations,
        allocator reserve and the KV cache of its layers; scaled to accelerate's view of weight
        sizes and undoing the quantizer's own 0.9 factor. None for one device, and for offload,
        whose device_map names every module's device (transformers then reads no max_memory).
        """
        d = self.decision
        if d is not None and self.pin is not None:
            if self.pin.max_memory is None:
                return None
            now_cpu = int(self.hardware.cpu_ram_bytes * 0.8)  # the CPU limit below, on this machine's RAM
            return {dev: min(limit, now_cpu) if dev == "cpu" else limit for dev, limit in self.pin.max_memory}
        if d is None or self.offloaded or self.device_map() != "auto":
            return None
        prec = precision_named(self.inventory, d.precision)
        ratio = weights_fraction_for_accelerate(self.inventory, prec, self.compute_dtype)
        scale = ratio / (BNB_MAX_MEMORY_SCALE if prec.quantized else 1.0)
        out: dict = {}
        for s in d.placement:
            room = s.budget_bytes - (s.total_bytes - s.weights_bytes)
            out[s.device] = max(int(room * scale), 0)
        return out

    def quantization_kwargs(self) -> dict | None:
        """BitsAndBytesConfig arguments as plain data (JSON-friendly); None for float precisions and for
        pre-quantized checkpoints (their config.json carries their quantization_config)."""
        p = P.get(self.precision) if self.precision and not self.inventory.prequantized else None
        if p is None or not p.quantized:
            return None
        if p.bits == 8:
            kw = {"load_in_8bit": True}
        else:
            kw = {"load_in_4bit": True, "bnb_4bit_quant_type": p.quant_type,
                  "bnb_4bit_use_double_quant": p.double_quant, "bnb_4bit_compute_dtype": self.compute_dtype}
        if self.offloaded or self._pin_offloads():
            kw["llm_int8_enable_fp32_cpu_offload"] = True
        return kw

    def _pin_offloads(self) -> bool:
        """The locked placement puts something on the CPU: in its device_map or its max_memory."""
        if self.pin is None:
            return False
        dm = self.pin.device_map
        return (isinstance(dm, tuple) and any(dev == "cpu" for _, dev in dm)) or any(
            dev == "cpu" for dev, _ in self.pin.max_memory or ())

    def from_pretrained_kwargs(self) -> dict:
        """Exactly what `<the plan's Auto class>.from_pretrained(plan.model_id, **kwargs)` needs
        (`AUTO_CLASSES[plan.inventory.auto_class]`): `kwargs_as_data()`
        with torch dtypes and a `BitsAndBytesConfig` (made by `fitplan.model.hf`, where transformers is read)."""
        if not self.fits:
            from ..errors import DoesNotFitError

            raise DoesNotFitError(self.summary_line(), model_id=self.model_id)
        from ..model import hf

        return hf.from_pretrained_kwargs(self.kwargs_as_data())

    def kwargs_as_data(self) -> dict | None:
        """The from_pretrained arguments as JSON data (dtype names, the quantization config as a dict, device
        names as strings): the one statement of them; `from_pretrained_kwargs()` realises it."""
        if not self.fits:
            return None
        kw: dict = {"dtype": self.load_dtype, "device_map": self.device_map()}
        q = self.quantization_kwargs()
        if q is None:
            from ..model.kernels import dequantized_method

            # a pre-quantized row loaded dequantized: the method's config with dequantize=True, a loading attribute
            # transformers merges into the checkpoint's own, so it takes the planned path whatever is installed
            method = dequantized_method(self.inventory, self.precision)
            q = {"quant_method": method, "dequantize": True} if method else None
        if q is not None:
            kw["quantization_config"] = q
        mm = self.max_memory()
        if mm is not None:
            kw["max_memory"] = {str(k): v for k, v in mm.items()}
        if self.revision:
            kw["revision"] = self.revision
        return kw

    @property
    def notes(self) -> list[str]:
        """What the inspection, the probe or the workload itself warns about, and why a precision
        saves little where it does."""
        saving = saving_notes(self.inventory, self.choice, self.workload)
        said = any(_CAUSES["skipped linear layers"][0] in n for n in saving)
        inventory = [n for n in self.inventory.notes if not (said and _SUBCLASS_NOTE in n)]
        out = (inventory + list(self.hardware.notes) + list(self.extra_notes)
               + untested_notes(self.inventory.versions) + saving)
        mp = self.inventory.max_positions
        if mp and self.workload.context > mp:
            out.append(f"context {self.workload.context} is longer than the {mp} positions this model was trained "
                       "for; memory is planned as asked, but quality past that point is not what the model card says")
        return out

    def summary_line(self) -> str:
        if self.fits:
            d = self.decision
            return f"{self.model_id}: {d.precision} ({self.compute_dtype} compute) — {d.reason}"
        head = (f"{self.model_id} does not fit {self.hardware.describe()} at context {self.options.context}"
                f"{f' + {self.options.images} images' if self.options.images else ''}, batch {self.options.batch}")
        allowed = [d for d in self.choice.decisions if d.ruled_out is None]
        if not allowed:  # every precision ruled out whatever its size (e.g. the one asked for)
            d = next((d for d in self.choice.decisions if d.precision == self.options.precision),
                     self.choice.decisions[0])
            return f"{head}: {d.precision} cannot be used: {d.ruled_out}"
        if len(allowed) == 1:
            return f"{head}: {allowed[0].precision} {allowed[0].reason}"
        smallest = min(allowed, key=lambda d: d.estimate.total_bytes)
        return f"{head}: the smallest option allowed, {smallest.precision}, {smallest.reason}"

    def suggestions(self, style: str = "api") -> list[str]:
        """What would make it fit, when nothing does, in words: options named as keyword arguments
        (`style="api"`) or flags (`"cli"`). `plan.advice` has the same as data."""
        return [a.render(style) for a in self.advice]

    def __str__(self) -> str:
        return self.summary_line()

    def to_dict(self, style: str = "api") -> dict:
        """The plan as JSON data (docs/json.md); options in messages are named in `style`."""
        d = self.decision
        return {
            "model": {"id": self.model_id, "revision": self.revision, "origin": self.origin,
                      "architecture": self.inventory.architecture, "model_type": self.inventory.model_type,
                      "parameters": self.inventory.parameters,
                      "quantizable_parameters": self.inventory.quantizable_parameters,
                      "prequantized": self.inventory.prequantized, "auto_class": self.inventory.auto_class,
                      "image_tokens_per_image": self.inventory.image_tokens_per_image},
            "workload": {"context": self.options.context, "batch": self.options.batch, "images": self.options.images,
                         "tokens": self.workload.context},
            "hardware": self.hardware.to_dict(),
            "options": {"headroom": self.options.headroom, "offload": self.options.offload, "fast": self.options.fast,
                        "precision": self.options.precision, "min_precision": self.options.min_precision,
                        "prefer": self.options.prefer},
            "compute_dtype": self.compute_dtype,
            "estimates": [{**x.estimate.to_dict(), "fits": x.fits, "reason": x.reason,
                           "chosen": d is not None and x.precision == d.precision,
                           "rejected_because": x.rejected_because, "offload_bytes": x.offload_bytes,
                           "speed": None if x.speed is None else x.speed.to_dict(),
                           "generation": None if x.generation is None else x.generation.to_dict()}
                          for x in self.choice.decisions],
            "plan": None if d is None else {
                "precision": d.precision,
                "compute_dtype": self.compute_dtype,
                "reason": d.reason,
                "devices": [s.to_dict() for s in d.placement],
                "offload_bytes": d.offload_bytes,
                "speed": None if d.speed is None else d.speed.to_dict(),
                "generation": None if d.generation is None else d.generation.to_dict(),
                "max_memory": self.kwargs_as_data().get("max_memory"),
                "from_pretrained_kwargs": self.kwargs_as_data(),
            },
            "rejected": [{"precision": x.precision, "reason": x.rejected_because}
                         for x in self.choice.decisions if d is None or x.precision != d.precision],
            "suggestions": self.suggestions(style),
            "gguf": None if self.gguf is None else self.gguf.to_dict(),
            **({"engine": self.engine.to_dict()} if self.engine is not None else {}),
            **({"tensor_parallel_hint": self.tp_hint.to_dict()} if self.tp_hint is not None else {}),
            "hub_kernels": None if self.hub_kernels is None else self.hub_kernels.to_dict(),
            "versions": dict(self.inventory.versions),
            "notes": self.notes,
        }


def saving_notes(inv: Inventory, choice: Choice, work: Workload) -> list[str]:
    """At most one note per cause of a precision saving little: quantizing where bitsandbytes leaves
    most bytes as they are (fused MoE experts, linear layers it skips, large embeddings), and eager
    attention scores outgrowing the rest at long context."""
    est = {d.precision: d.estimate for d in choice.decisions}
    out = []
    base = est.get("bf16") or est.get("fp16")
    four = [est[p] for p in ("nf4", "nf4-dq", "fp4", "fp4-dq") if p in est]
    if base and four and base.weights_bytes:
        q4 = min(four, key=lambda e: e.weights_bytes)
        kept = q4.weights_bytes / base.weights_bytes
        if kept > SAVES_LITTLE:  # (a pre-quantized checkpoint has its as-stored rows, no 4-bit ones)
            out.append(_quantization_note(inv, base, q4, est.get("int8"), kept))
    ref = choice.chosen.estimate if choice.chosen else min(est.values(), key=lambda e: e.total_bytes)
    scores = attention_score_bytes(inv, work)
    if scores > max(ref.weights_bytes, ref.kv_cache_bytes):
        out.append(f"{inv.architecture} runs eager attention here, which holds one layer's batch x heads x "
                   f"context² scores at the prefill peak: {fmt_bytes(scores)} of the {fmt_bytes(ref.total_bytes)} "
                   f"planned for {ref.precision}, more than its weights; half the context holds a quarter of "
                   "them, and llama.cpp (GGUF) with flash attention holds none")
    return out


#: Why bitsandbytes leaves each kind of tensor as it is (estimate.unquantized_bytes), and what would help.
_CAUSES = {
    "fused experts": ("the experts are fused 3-D parameters, which bitsandbytes does not quantize",
                      "llama.cpp (GGUF) quantizes experts, as do checkpoints pre-quantized with a method "
                      "that packs them"),
    "skipped linear layers": ("the model's linear layers are subclasses of nn.Linear, which transformers' bitsandbytes "
                              "replacement leaves as they are", "llama.cpp (GGUF) quantizes them"),
    "embeddings": ("the embeddings and lm_head stay 16-bit under bitsandbytes",
                   "llama.cpp (GGUF) quantizes them too"),
    "norms and buffers": ("norms, biases and buffers stay at their dtype", "nothing about them"),
}


def _quantization_note(inv: Inventory, base: Estimate, q4: Estimate, int8: Estimate | None, kept: float) -> str:
    kinds = unquantized_bytes(inv)
    kind = max(kinds, key=kinds.get)
    cause, remedy = _CAUSES[kind]
    also = f" (int8: {int8.weights_bytes / base.weights_bytes:.0%})" if int8 else ""
    return (f"4-bit keeps {kept:.0%} of {base.precision}'s weight bytes{also}: {cause} "
            f"({fmt_bytes(kinds[kind])}); {remedy}")


def decide(inv: Inventory, hw: Hardware, options: PlanOptions, *, model_id: str, origin: str,
           revision: str | None = None, pin: Pin | None = None, notes: tuple[str, ...] = (),
           context_given: bool = True, model_digest: str | None = None) -> Plan:
    """The plan for an inventory on some hardware: the workload the options ask of it (a default context capped
    at the model's learned positions, `workload.planned`), the policy's choice and, when nothing fits, what
    would (each suggestion checked by re-running the policy). Pure; `fitplan.pipeline` feeds it."""
    from .policy import choose
    from .suggest import suggestions

    options, work, capped = planned(options, inv, context_given=context_given)
    choice = choose(inv, hw, options, work)
    advice = () if choice.chosen else tuple(suggestions(inv, hw, options, work, choice))
    return Plan(model_id=model_id, revision=revision, origin=origin, inventory=inv, hardware=hw, options=options,
                workload=work, choice=choice, advice=advice, pin=pin if choice.chosen else None,
                extra_notes=notes + ((capped,) if capped else ()), model_digest=model_digest)
