"""Weights per rank as vLLM and SGLang shard them, from fitplan's exact per-tensor inventory.

Both engines build the same parallel layers (SGLang took them from vLLM): a column-parallel linear keeps
1/TP of its output rows (q/k/v, gate/up, MLA's q_b/kv_b), a row-parallel linear 1/TP of its input columns
(o_proj, down_proj), K/V projections keep `max(1, kv_heads/TP)` heads (replicated past TP = kv_heads), the
vocab-parallel embedding and lm_head keep `pad(vocab, 64)/TP` rows, and replicated layers (norms, routers,
MLA's q_a/kv_a down-projections, row-parallel biases) are whole on every rank. MoE experts without expert
parallelism are tensor-parallel inside each expert (1/TP of every expert). Pipeline stages split the
decoder layers as `vllm.distributed.utils.get_pp_indices` does; the embedding lives on the first stage and
lm_head (and the final norm) on the last.
Sources: vllm/model_executor/layers/linear.py, vocab_parallel_embedding.py (`pad_vocab_size`,
DEFAULT_VOCAB_PADDING_SIZE = 64), vllm/distributed/utils.py (`get_pp_indices`), at the version in
`fitplan.versions.ENGINE_VERSIONS`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from ..model.inventory import Inventory, TensorInfo
from .model import AttentionGeometry

VOCAB_PADDING = 64  # vocab_parallel_embedding.DEFAULT_VOCAB_PADDING_SIZE

_REPLICATED = re.compile(r"(norm|\.gate\.weight$|router|e_score_correction|q_a_proj|kv_a_proj|rotary|inv_freq)")
_ROW = re.compile(r"(o_proj|down_proj|dense_4h_to_h|\.dense\.|out_proj|\.w2\b|c_proj|wo\b)")
_KV = re.compile(r"(k_proj|v_proj)\.")
_VOCAB = re.compile(r"(embed_tokens|lm_head|wte|word_embeddings|embed_in|embed_out|output\.weight$)")


def pad_vocab(vocab: int, tp: int) -> int:
    """Rows of a vocab-parallel embedding on one rank: the vocab padded to 64, split over `tp`."""
    padded = -(-vocab // VOCAB_PADDING) * VOCAB_PADDING
    return -(-padded // tp)


def pp_layers(num_layers: int, pp: int) -> list[range]:
    """Decoder layers per pipeline stage, as vllm.distributed.utils.get_pp_indices splits them: equal parts,
    the remainder given to the stages before the last, one each (the last stage also holds lm_head)."""
    per = num_layers // pp
    parts = [per] * pp
    rem = num_layers % pp
    for i in range(2, rem + 2):
        parts[-i] += 1
    out, start = [], 0
    for n in parts:
        out.append(range(start, start + n))
        start += n
    return out


def _share(t: TensorInfo, nbytes: int, geo: AttentionGeometry, tp: int) -> int:
    """Bytes of tensor `t` (`nbytes` whole) on one of `tp` ranks."""
    if tp == 1:
        return nbytes
    name = t.name
    if _VOCAB.search(name) and len(t.shape) == 2:
        rows = t.shape[0]
        return nbytes * pad_vocab(rows, tp) // rows
    column_bias = name.endswith(".bias") and not _ROW.search(name)
    if t.buffer or (len(t.shape) < 2 and not column_bias) or (len(t.shape) >= 2 and _REPLICATED.search(name)):
        return nbytes
    if _KV.search(name) and not geo.mla:
        return nbytes * geo.kv_heads_per_rank(tp) // geo.kv_heads
    return -(-nbytes // tp)


@dataclass(frozen=True)
class RankWeights:
    """Weights one rank holds: `total` bytes, of which `vocab` is its embedding/lm_head share."""

    total: int
    vocab: int
    layers: int


def rank_weights(inv: Inventory, geo: AttentionGeometry, size, tp: int, pp: int) -> list[RankWeights]:
    """Per pipeline stage (all TP ranks of a stage hold the same bytes), what one rank holds. `size(t)` is the
    whole tensor's bytes at the precision the engine loads (fitplan's layout or a checkpoint's stored layout)."""
    stages = pp_layers(inv.num_layers, pp)
    totals = [0] * pp
    vocab = [0] * pp
    tied_embed = not any(t.name.endswith("lm_head.weight") for t in inv.tensors)
    for t in inv.tensors:
        b = _share(t, size(t), geo, tp)
        idx = t.layer
        if idx is not None and not _VOCAB.search(t.name):
            for s, r in enumerate(stages):
                if idx in r:
                    totals[s] += b
                    break
            continue
        if _VOCAB.search(t.name):
            first = "embed" in t.name or "wte" in t.name or "word_embeddings" in t.name or t.name.endswith("embed_in.weight")
            stage = 0 if first else pp - 1
            totals[stage] += b
            vocab[stage] += b
            if first and tied_embed and pp > 1:  # a tied lm_head is its own copy on the last stage
                totals[-1] += b
                vocab[-1] += b
        elif "norm" in t.name:
            totals[-1] += b  # the final norm sits before lm_head
        else:
            for s in range(pp):  # rotary tables and other buffers outside the layers: every stage
                totals[s] += b
    return [RankWeights(totals[s], vocab[s], len(stages[s])) for s in range(pp)]
