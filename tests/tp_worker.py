"""One rank of `torchrun --nproc-per-node N tests/tp_worker.py CHECKPOINT OUTDIR`, for
tests/test_tensor_parallel.py: loads with `fitplan.load()` (tensor parallel, from torchrun's
environment), counts what this rank holds itself, generates greedily, and writes rank-R.json."""
from __future__ import annotations

import json
import os
import sys

import torch
from torch.distributed.tensor import DTensor

import fitplan


def held(tensors) -> int:
    """Bytes of the local shards, each tensor object once (a tied weight is one parameter)."""
    seen = {}
    for t in tensors:
        local = t.to_local() if isinstance(t, DTensor) else t
        seen[id(t)] = local.numel() * local.element_size()
    return sum(seen.values())


def main(checkpoint: str, outdir: str) -> None:
    rank = int(os.environ["RANK"])
    model = fitplan.load(checkpoint, tokenizer=False, context=64)
    tp = model.fitplan.tensor_parallel
    sharded = sorted(n for n, p in model.named_parameters() if isinstance(p, DTensor) and p.to_local().shape != p.shape)
    out = model.generate(input_ids=torch.tensor([[5, 6, 7, 8]]), max_new_tokens=6, do_sample=False, pad_token_id=0)
    result = {"rank": rank, "world_size": tp.world_size,
              "held_parameters": held(model.parameters()), "held_buffers": held(model.buffers()),
              "planned_parameters": tp.share(rank).parameter_bytes, "planned_buffers": tp.share(rank).buffer_bytes,
              "planned_sharded": sorted(s.name for s in tp.sharded), "sharded": sharded,
              "tokens": out[0].tolist(), "report": str(model.fitplan)}
    with open(os.path.join(outdir, f"rank-{rank}.json"), "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main(*sys.argv[1:3])
