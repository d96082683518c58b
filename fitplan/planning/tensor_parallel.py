"""transformers' tensor parallelism, per rank: the bytes each rank of `torchrun --nproc-per-node N`
holds when `from_pretrained` loads with the model's own TP plan (`tp_plan="auto"` or its
`DistributedConfig`).

Pure: the rules come in as data, read off the installed transformers by `fitplan.model.hf.
tensor_parallel_rules` (one `(style, rule)` per parameter: the plan's style name and how that style
shards it on that release); this module applies them to the inventory's shapes and dtypes. What
the releases do (see the table in `fitplan/model/hf.py` and docs/engines.md):

- a "shard" rule splits one dimension as torch's `Shard` does (and 5.0's `get_tensor_shard`):
  `ceil(n / N)` per rank, the last ranks fewer, possibly none; "shard_even" the same where the
  release cannot run an uneven split (5.0's forward fails on one, 5.17 refuses gathered column-parallel
  outputs): refused here first;
- a "strided" rule (packed gate/up projections) splits each of its `split` blocks the same way;
  fitplan plans it only where every block divides evenly;
- "replicate": every rank holds the whole tensor (norms, biases of row-parallel layers, what the
  plan does not name, and buffers).

Refusals come as `TensorParallelError`, before anything is loaded: bitsandbytes precisions
(transformers' TP plans shard float weights), attention heads the ranks cannot split evenly.
"""
from __future__ import annotations

from dataclasses import dataclass
from math import ceil

from ..errors import TensorParallelError, ref
from ..model.inventory import Inventory, TensorInfo
from .layout import float_dtype_for
from ..vocab.precision import DTYPE_BYTES, get

#: Linear layers whose output rows are attention heads: splitting them mid-head breaks attention.
_HEAD_PROJECTIONS = ("q_proj", "k_proj", "v_proj")
#: Rules that split one dimension in torch's chunks ("shard_even": the release refuses uneven ones).
_SHARD = ("shard", "shard_even")


@dataclass(frozen=True)
class RankShare:
    """What one rank holds: its parameters (its shards and the replicated ones) and the buffers."""

    rank: int
    parameter_bytes: int
    buffer_bytes: int

    @property
    def weights_bytes(self) -> int:
        return self.parameter_bytes + self.buffer_bytes


@dataclass(frozen=True)
class ShardedTensor:
    """A parameter the plan splits: its style in transformers' plan, the dimension, its full length."""

    name: str
    style: str
    dim: int
    length: int
    split: int = 1  # blocks of a packed (strided) split


@dataclass(frozen=True)
class TensorParallelPlan:
    """Per-rank bytes of a tensor-parallel load over `world_size` ranks at `load_dtype`."""

    world_size: int
    load_dtype: str
    transformers: str
    ranks: tuple[RankShare, ...]
    sharded: tuple[ShardedTensor, ...]
    replicated_parameter_bytes: int

    def share(self, rank: int) -> RankShare:
        return self.ranks[rank]

    def to_dict(self) -> dict:
        return {"world_size": self.world_size, "load_dtype": self.load_dtype, "transformers": self.transformers,
                "per_rank": [{"rank": r.rank, "parameter_bytes": r.parameter_bytes, "buffer_bytes": r.buffer_bytes,
                              "weights_bytes": r.weights_bytes} for r in self.ranks],
                "sharded": [{"name": s.name, "style": s.style, "dim": s.dim, "length": s.length}
                            for s in self.sharded],
                "replicated_parameter_bytes": self.replicated_parameter_bytes}


def local_length(n: int, world_size: int, rank: int) -> int:
    """Rows of an `n`-long dimension that `rank` holds: torch's `Shard` (chunks of `ceil(n / N)`)."""
    chunk = ceil(n / world_size)
    return max(0, min(chunk, n - rank * chunk))


def refuse_precision(precision: str | None, prequantized: str | None, world_size: int) -> None:
    """bitsandbytes precisions and pre-quantized checkpoints have no TP plan here: refused first."""
    if prequantized:
        raise TensorParallelError(world_size=world_size, reason=f"the checkpoint is pre-quantized ({prequantized}), "
                                  "which fitplan does not plan sharded", fix="load a float checkpoint of the model")
    p = get(precision) if precision else None
    if p is not None and p.quantized:
        raise TensorParallelError(
            world_size=world_size, precision=precision,
            reason=f"{precision} is a bitsandbytes precision, and transformers' tensor-parallel plans shard float "
                   "weights only",
            fix=f"pass {ref('precision', 'bf16')} (or fp16) and enough ranks, or run without torchrun for {precision}")


def _check_heads(inv: Inventory, rules: dict, world_size: int) -> None:
    """Column-parallel q/k/v projections split by heads; a split inside a head would be wrong."""
    rows = {}
    for t in inv.tensors:
        owner, _, leaf = t.name.rpartition(".")
        proj = owner.rpartition(".")[2]
        style, rule = rules.get(t.name, (None, ("replicate",)))
        if leaf == "weight" and proj in _HEAD_PROJECTIONS and rule[0] in _SHARD and rule[1] == 0 and len(t.shape) == 2:
            rows.setdefault(proj, t.shape[0])
    if "q_proj" not in rows or not inv.num_attention_heads:
        return
    head_dim = rows["q_proj"] // inv.num_attention_heads
    for proj, n in rows.items():
        heads = n // head_dim if head_dim else 0
        if heads % world_size:
            kind = "attention" if proj == "q_proj" else "key/value"
            raise TensorParallelError(
                world_size=world_size, heads=heads,
                reason=f"{inv.model_id} has {heads} {kind} heads, which {world_size} ranks cannot split evenly",
                fix=f"run a number of ranks that divides {heads} (--nproc-per-node)")


def _rank_elements(t: TensorInfo, rule: tuple, world_size: int, rank: int) -> int:
    if rule[0] == "replicate":
        return t.numel
    dim = rule[1]
    n = t.shape[dim]
    rest = t.numel // n if n else 0
    if rule[0] in _SHARD:
        return local_length(n, world_size, rank) * rest
    return (n // world_size) * rest  # even only: checked in `plan_tensor_parallel`


def plan_tensor_parallel(inv: Inventory, rules: dict[str, tuple[str | None, tuple]], world_size: int,
                         load_dtype: str, *, precision: str | None = None, transformers: str = "") -> TensorParallelPlan:
    """Bytes per rank for `inv` loaded at `load_dtype` over `world_size` ranks with `rules` (from
    `hf.tensor_parallel_rules`). Every parameter of the inventory must have a rule: a missing one
    means the model transformers will load is not the one planned."""
    if world_size < 2:
        raise ValueError("tensor parallel needs at least 2 ranks")
    refuse_precision(precision, inv.prequantized, world_size)
    _check_heads(inv, rules, world_size)
    params = [t for t in inv.tensors if not t.buffer]
    missing = [t.name for t in params if t.name not in rules]
    if missing:
        raise TensorParallelError(world_size=world_size, reason=f"the model transformers builds has no parameter "
                                  f"{missing[0]!r} of the plan's inventory", fix="report this with the model id")
    sharded, replicated = [], 0
    per_rank = [0] * world_size
    for t in params:
        style, rule = rules[t.name]
        size = DTYPE_BYTES[float_dtype_for(t, load_dtype)]
        if rule[0] == "replicate":
            replicated += t.numel * size
        else:
            n = t.shape[rule[1]]
            split = rule[2] if rule[0] == "strided" else 1
            if rule[0] == "shard_even" and n % world_size:
                raise TensorParallelError(
                    world_size=world_size, reason=f"{t.name} is {n} long where it is split, and transformers "
                    f"{transformers} runs that split only when {world_size} ranks divide it evenly",
                    fix=f"run a number of ranks that divides {n}")
            if rule[0] == "strided" and n % (split * world_size):
                raise TensorParallelError(
                    world_size=world_size, reason=f"{t.name} packs {split} projections of {n // split} rows, "
                    f"which {world_size} ranks do not split evenly", fix="run a number of ranks that divides them")
            sharded.append(ShardedTensor(t.name, style, rule[1], n, split))
        for r in range(world_size):
            per_rank[r] += _rank_elements(t, rule, world_size, r) * size
    buffers = sum(t.numel * DTYPE_BYTES[float_dtype_for(t, load_dtype)] for t in inv.tensors if t.buffer)
    ranks = tuple(RankShare(r, per_rank[r], buffers) for r in range(world_size))
    return TensorParallelPlan(world_size, load_dtype, transformers, ranks, tuple(sharded), replicated)
