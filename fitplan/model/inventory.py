"""The model's tensor inventory, as transformers itself would build and quantize it.

Data only: `Inventory` and its parts are frozen, JSON-round-trippable, and import no torch, so a
cached inventory can be estimated without paying for torch's import. `inspect.py` builds them.
"""
from __future__ import annotations

import re

from dataclasses import asdict, dataclass, field
from math import prod


def dtype_name(dtype) -> str:
    """A torch dtype as the inventory writes it: `torch.bfloat16` -> "bfloat16"."""
    return str(dtype).removeprefix("torch.")


#: Bump when the meaning of a field changes, so stale on-disk caches are rebuilt, not misread.
SCHEMA_VERSION = 16  # 9: transformers 5.0-5.3 read KV from the meta forward; 10: pre-quantized `quantization`;
# 11: per-sequence state, the Auto class and image tokens; 12: prefill scratch of kernel-less SSM paths;
# 13: `position_limit` (learned absolute position tables); 14: how it can generate (compile_fullgraph,
# flash_attn, num_key_value_heads); 15: the Hub kernels transformers 5.25+ fetches (`hub_kernels`);
# 16: a pre-quantized checkpoint storing a tied lm_head apart keeps it (entries cached before lack it)


#: A decoder layer index inside a tensor name.
_LAYER_INDEX = re.compile(r"\.(\d+)\.")


@dataclass(frozen=True)
class TensorInfo:
    """One parameter or buffer of the loaded model (tied copies already removed).

    `dtype` is None when the tensor follows the load dtype (what `dtype=` in `from_pretrained`
    sets), else the dtype it keeps whatever is asked (e.g. float32 rotary `inv_freq`).
    `quantizable`: transformers' bitsandbytes quantizer replaces the owning module with a
    `Linear4bit`/`Linear8bitLt`, so this weight is packed. `keep_fp32`: "fp16" when the model's
    `_keep_in_fp32_modules` upcast it under fp16 loads, "always" for `_keep_in_fp32_modules_strict`.
    `out_features` is set on quantizable weights: int8 keeps one fp32 scale per output row, and a
    GPT-2 `Conv1D` stores its weight transposed, so the shape alone does not say which axis that is.
    """

    name: str
    shape: tuple[int, ...]
    dtype: str | None = None
    quantizable: bool = False
    keep_fp32: str | None = None
    buffer: bool = False
    out_features: int | None = None

    @property
    def numel(self) -> int:
        return prod(self.shape)

    @property
    def layer(self) -> int | None:
        """The decoder layer index in its name (`model.layers.12.mlp...` -> 12), None outside layers."""
        m = _LAYER_INDEX.search(self.name)
        return int(m.group(1)) if m else None


@dataclass(frozen=True)
class KVLayer:
    """What one decoder layer adds to its cache, per token and per sequence.

    `elements_per_token` counts K and V together (kv_heads * (k_head_dim + v_head_dim)), plus any
    other per-token entry the cache keeps in the load dtype (DeepSeek-V3.2 / GLM-5 indexer keys,
    DeepSeek-V4 compressed entries). `window` is set for sliding/chunked layers: the cache keeps at
    most `window - 1` tokens between steps, but right after prefill it still holds a view of the
    whole prompt. `fixed_bytes_per_token` is per-token data in a dtype of its own (int64 positions).
    `state_elements` (load dtype) and `state_fixed_bytes` (its own dtype, e.g. fp32) are what a
    recurrent layer keeps per sequence whatever the context: Mamba's SSM and convolution states,
    linear attention's recurrent state, a short convolution's window, RWKV's state.
    """

    elements_per_token: int
    window: int | None = None
    fixed_bytes_per_token: int = 0
    state_elements: int = 0
    state_fixed_bytes: int = 0

    def state_bytes(self, element_size: int) -> int:
        """Bytes this layer keeps per sequence, whatever the context, at `element_size` bytes per
        load-dtype element."""
        return self.state_elements * element_size + self.state_fixed_bytes


@dataclass(frozen=True)
class HubKernel:
    """One Hub kernel repository transformers' `kernelize` fetches for this model on `device` ("cuda", or
    "cpu" where a mapping names one), from the installed transformers' own mapping (`hf.hub_kernels`):
    the layer name it replaces, the repository and its ref ("v2", or a revision), and the compute
    capabilities (major*10+minor) it is limited to, None when any card takes it."""

    device: str
    layer: str
    repo_id: str
    ref: str
    min_cc: int | None = None
    max_cc: int | None = None

    def applies(self, device: str, cc: tuple[int, int] | None) -> bool:
        """Whether kernelize fetches it for a model on `device` whose first GPU has compute capability `cc`."""
        if device != self.device:
            return False
        value = None if cc is None else cc[0] * 10 + cc[1]
        return value is None or ((self.min_cc is None or value >= self.min_cc)
                                 and (self.max_cc is None or value <= self.max_cc))


@dataclass(frozen=True)
class Inventory:
    """Everything the estimator needs to know about a model, gathered once per config.

    `auto_class` is the transformers Auto class the inventory is for, by its `fitplan.load()` name:
    "causal-lm" (`AutoModelForCausalLM`: for a combined text+vision config, the language model
    alone) or "image-text-to-text" (`AutoModelForImageTextToText`: vision tower, projector and
    language model). `image_tokens_per_image` (image-text-to-text only) is how many positions of
    the context one image takes at the vision tower's native resolution, None when fitplan cannot
    tell (see docs/models.md); a request with N images needs N times that on top of its text.
    `max_positions` is what the config says the model was trained for; `position_limit` is set only
    when the built model looks positions up in a learned table (GPT-2's `wpe`, OPT's offset table),
    so that a longer sequence cannot run at all (`IndexError` at generate), not just run worse.
    """

    model_id: str
    model_type: str
    architecture: str
    parameters: int
    tensors: tuple[TensorInfo, ...]
    kv_layers: tuple[KVLayer, ...]
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_attention_heads: int
    vocab_size: int
    attn_implementation: str
    checkpoint_dtype: str | None
    max_positions: int | None = None
    position_limit: int | None = None  # rows of a learned absolute position table: no position past it exists
    experts_per_token: int = 0
    expert_intermediate_size: int = 0
    prequantized: str | None = None
    stored_bytes: int | None = None
    quantization: dict | None = None  # a pre-quantized checkpoint's quantization_config (fitplan.model.prequant)
    auto_class: str = "causal-lm"
    image_tokens_per_image: int | None = None
    prefill_scratch_per_token: int = 0  # torch path of SSM / linear-attention layers (hf.prefill_scratch)
    # How it can generate (fitplan.planning.generation): the model class declares a compilable forward
    # (`_can_compile_fullgraph`), supports flash-attention 2 with the package installed, and its KV heads.
    compile_fullgraph: bool = False
    flash_attn: bool = False
    num_key_value_heads: int = 0
    #: Hub kernels from_pretrained's default `use_kernels=True` fetches (transformers 5.25+); None: the
    #: installed transformers kernelizes nothing by default ("not applicable").
    hub_kernels: tuple[HubKernel, ...] | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)
    versions: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["schema"] = SCHEMA_VERSION
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Inventory":
        d = dict(d)
        if d.pop("schema", None) != SCHEMA_VERSION:
            raise ValueError("inventory schema changed")
        d["tensors"] = tuple(
            TensorInfo(**{**t, "shape": tuple(t["shape"])}) for t in d["tensors"]
        )
        d["kv_layers"] = tuple(KVLayer(**k) for k in d["kv_layers"])
        d["notes"] = tuple(d.get("notes", ()))
        if d.get("hub_kernels") is not None:
            d["hub_kernels"] = tuple(HubKernel(**k) for k in d["hub_kernels"])
        return cls(**d)

    def state_bytes_per_sequence(self, element_size: int) -> int:
        """Recurrent and convolution state one sequence keeps whatever its length (0 for pure attention)."""
        return sum(k.state_bytes(element_size) for k in self.kv_layers)

    @property
    def quantizable_parameters(self) -> int:
        return sum(t.numel for t in self.tensors if t.quantizable)
