"""Named constants of the estimator's non-weight terms, and where each comes from.

Weights need no constant: they are exact from the inventory and bitsandbytes' layout. The terms
below are what a running process holds besides weights; each is a documented formula over these
constants. docs/accuracy.md reports the values measured on real GPUs, and a CI test checks that
the two agree, so the code and the document cannot drift apart.
"""
from __future__ import annotations

GiB = 1 << 30

#: NVML-visible memory a process holds once CUDA and torch's kernels are loaded, before any
#: tensor: 1.08 GiB measured on an H100 80GB (torch 2.11, cu130; shared/FINDINGS.md).
CUDA_CONTEXT_BYTES = int(1.08 * GiB)

#: The caching allocator reserves more than it hands out: segments are rounded up and freed
#: blocks are kept for reuse. Reserved peak ran 5-15% above allocated peak during generation
#: (FINDINGS); the reserve is charged on the dynamic part (KV cache and activations), since
#: weights are allocated once and pack their segments tightly.
ALLOCATOR_RESERVE_FRACTION = 0.15
#: Fixed part of the reserve: cuBLAS/cuBLASLt workspaces and the allocator's 2 MiB small-block pool.
ALLOCATOR_RESERVE_FIXED_BYTES = 64 << 20

#: Each allocation is rounded up to this many bytes by the CUDA caching allocator.
CUDA_ALLOCATION_ALIGNMENT = 512

#: Activation peak during prefill, per token of the batch, in units of one compute-dtype element:
#: ACT_HIDDEN_COPIES * hidden + ACT_MLP_COPIES * intermediate + the q/k/v projections. Copies
#: alive at the peak: residual stream, normed input, attention output; gate, up and their product.
ACT_HIDDEN_COPIES = 4
ACT_MLP_COPIES = 3

#: Eager attention materialises scores and softmax for one layer at a time (fp32 softmax upcast):
#: batch * heads * q_len * kv_len * (compute bytes + 4) per layer at the peak.
EAGER_SCORE_EXTRA_BYTES = 4

#: generate() keeps fp32 logits of the last position for each sequence, plus the processed copy.
LOGITS_COPIES = 2
