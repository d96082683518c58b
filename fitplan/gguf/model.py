"""A GGUF model as the planner sees it: its tensors (names, ggml shapes, types) and hyperparameters.

`GGUFModel` is built two ways and planned the same way:

* from a real file's header (`header.py`, `hub.py`): `origin` "local" or "hub", sizes exact;
* from a transformers `Inventory` and a file type (`estimate.py`): `origin` "estimate", what
  `llama-quantize` would write.

Frozen data with derived sizes; no I/O.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from functools import cached_property

from gguf import GGMLQuantizationType

from .ggml_types import tensor_bytes

#: gguf's GGUF_DEFAULT_ALIGNMENT: every tensor's data starts at a multiple of it unless
#: `general.alignment` says otherwise.
DEFAULT_ALIGNMENT = 32

_BLOCK = re.compile(r"^blk\.(\d+)\.")


@dataclass(frozen=True)
class GGUFTensor:
    """One tensor of a GGUF file. `shape` is in ggml order (ne0 first: the row length), as GGUF
    stores it; a transformers weight of shape (out, in) is (in, out) here. `ggml_type` is the
    `GGMLQuantizationType` value."""

    name: str
    shape: tuple[int, ...]
    ggml_type: int

    @property
    def type_name(self) -> str:
        return GGMLQuantizationType(self.ggml_type).name

    @cached_property
    def nbytes(self) -> int:  # read by every sum over a file's tensors: computed once
        return tensor_bytes(self.ggml_type, self.shape)  # GGML_QUANT_SIZES takes the id as the enum

    @property
    def layer(self) -> int | None:
        """The repeating block (`blk.N.`) this tensor belongs to; None for token_embd, output, norms."""
        m = _BLOCK.match(self.name)
        return int(m.group(1)) if m else None


@dataclass(frozen=True)
class GGUFModel:
    """What llama.cpp needs to know to load and run a GGUF model, and where it came from.

    Sizes: `header_bytes` is where tensor data starts (metadata + tensor infos + padding; for an
    estimate, fitplan's estimate of it); `file_bytes` the whole file (the real size for a file,
    header + padded tensor data for an estimate). `n_head_kv` has one entry per layer (GGUF allows a
    per-layer array). `swa_layers` marks the layers that use sliding-window attention of
    `sliding_window` tokens (llama.cpp's per-architecture pattern; all False when none).
    """

    name: str
    origin: str
    architecture: str
    file_type: str | None
    tensors: tuple[GGUFTensor, ...]
    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: tuple[int, ...]
    head_dim_k: int
    head_dim_v: int
    n_vocab: int
    context_length: int | None
    header_bytes: int
    file_bytes: int
    alignment: int = DEFAULT_ALIGNMENT
    n_ff: int = 0
    sliding_window: int | None = None
    swa_layers: tuple[bool, ...] = ()
    n_expert: int = 0
    n_expert_used: int = 0
    path: str | None = None
    repo_id: str | None = None
    files: tuple[str, ...] = ()
    notes: tuple[str, ...] = field(default_factory=tuple)

    # -- sizes ------------------------------------------------------------------------------------
    @property
    def weights_bytes(self) -> int:
        """Sum of the tensors' exact sizes (ggml_nbytes), without the alignment padding between them."""
        return sum(t.nbytes for t in self.tensors)

    @property
    def data_bytes(self) -> int:
        """The tensor data section as written: each tensor padded to `alignment`."""
        a = self.alignment
        return sum(-(-t.nbytes // a) * a for t in self.tensors)

    def layer_bytes(self) -> tuple[int, ...]:
        """Bytes of each repeating block `blk.N.*`, N = 0 .. n_layer-1 (what `-ngl` moves to the GPU)."""
        out = [0] * self.n_layer
        for t in self.tensors:
            i = t.layer
            if i is not None and 0 <= i < self.n_layer:
                out[i] += t.nbytes
        return tuple(out)

    def tensor(self, name: str) -> GGUFTensor | None:
        return next((t for t in self.tensors if t.name == name), None)

    @property
    def output_bytes(self) -> int:
        """The output layer llama.cpp offloads with the last `-ngl` step: `output.weight` (or the tied
        `token_embd.weight` when there is none) plus `output_norm`."""
        out = self.tensor("output.weight") or self.tensor("token_embd.weight")
        norm = self.tensor("output_norm.weight")
        return (out.nbytes if out else 0) + (norm.nbytes if norm else 0)

    @property
    def tied_embeddings(self) -> bool:
        return self.tensor("output.weight") is None

    @property
    def n_gqa(self) -> int:
        """n_head / n_head_kv as llama.cpp's `hparams.n_gqa()` (layer 0), used by the quantizer's rules."""
        kv = self.n_head_kv[0] if self.n_head_kv else self.n_head
        return self.n_head // kv if kv else 0

    def type_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for t in self.tensors:
            counts[t.type_name] = counts.get(t.type_name, 0) + 1
        return counts

    def to_dict(self, *, with_tensors: bool = False) -> dict:
        d = asdict(self)
        if not with_tensors:
            d.pop("tensors")
            d["tensor_count"] = len(self.tensors)
            d["type_counts"] = self.type_counts()
        d["weights_bytes"] = self.weights_bytes
        return d
