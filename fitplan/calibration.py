"""Named constants of the estimator's non-weight terms, and where each comes from.

Weights need no constant: they are exact from the inventory and bitsandbytes' layout. The terms
below are what a running process holds besides weights; each is a documented formula over these
constants. docs/accuracy.md reports the values measured on real GPUs, and a CI test checks that
the two agree, so the code and the document cannot drift apart.
"""
from __future__ import annotations

from .vocab.units import GiB

#: NVML-visible memory a process holds once CUDA is up and cuBLAS has run one product, before
#: any model tensor: 0.70 GiB measured on an H100 80GB (torch 2.11+cu130, driver 580; see
#: docs/accuracy.md; shared/FINDINGS.md reports 1.08 GiB for a similar setup measured another
#: way). Rounded up to 0.75 GiB for other drivers and cards.
CUDA_CONTEXT_BYTES = int(0.75 * GiB)
#: The same, as shared/FINDINGS.md measured it on an H100 (the context and cuBLAS after one product): what the
#: serving-engine mirrors use, since they are checked against the engines' own logs, not kept on the safe side.
CUDA_CONTEXT_MEASURED_BYTES = 739 << 20

# -- serving engines (fitplan/engines/; docs/engines.md, checked against tests/data/engine_logs.yaml) -------------

#: Non-torch memory the profile run adds (cuBLAS/cuBLASLt workspaces, attention-kernel workspaces); NCCL's
#: buffers are allocated before the snapshot at this version. Checked against the "non-torch forward increase
#: memory" vLLM 0.19.0's debug log prints (tests/data/engine_logs.yaml): 0.24-0.27 GiB at TP 1 on an H100, so this
#: is about 0.1 GiB short there; 0.07 GiB on pipeline-only ranks; 2.06-2.21 GiB under TP on Hopper, where 0.19
#: also allocates FlashInfer's all-reduce fusion workspace, which this mirror does not count (docs/engines.md).
VLLM_NON_TORCH_BYTES = 150 << 20
#: vLLM 0.19.0's "non-torch forward increase memory", as its debug log prints it for every rank ("Memory profiling
#: takes ..."; tests/data/engine_logs.yaml, the llm-d-planner sweep of 59 logs on H100 80GB SXM). Not a formula of
#: the source: what CUDA libraries and the communicators allocate inside the profiling window. The largest value
#: logged for each layout is taken, so that a plan does not promise more KV memory than the log gives:
#: one rank alone (TP 1, PP 1): 0.24-0.27 GiB over 39 logs (three Granite 3.x logs say 0.46 GiB; Granite is not in the
#: catalogue, and the cause was not found);
VLLM_019_NON_TORCH_SINGLE_BYTES = int(0.27 * GiB)
#: ... pipeline-parallel ranks without tensor parallelism: 0.07 GiB on every stage (Llama-3.1-8B, PP 2 and PP 4);
VLLM_019_NON_TORCH_PIPELINE_BYTES = int(0.07 * GiB)
#: ... under tensor parallelism on an NVLink/NVSwitch board: 2.06-2.21 GiB per rank over 15 logs at TP 2 and TP 4
#: (dense, MoE, fp8, W8A8; the same on every rank of a log). 0.19 builds the FlashInfer all-reduce + RMSNorm fusion
#: workspace (compilation/passes/fusion/allreduce_rms_fusion.py) and NCCL's communicator buffers there; SGLang
#: logs the same order for its distributed init on such boards (`SGLANG_DIST_INIT_NVLINK_BYTES`). On PCIe cards
#: under TP no log splits this term; the single-rank figure is taken (the L40S case stays unmatched, 8% over).
VLLM_019_NON_TORCH_TP_NVLINK_BYTES = int(2.21 * GiB)
#: SGLang: what torch.distributed's initialisation takes per rank before the weights load ("Init torch distributed
#: ends. mem usage=..." prints it without the CUDA context: model_runner.py `init_torch_distributed` reads the free
#: memory before and after it, the context already made). On NVLink/NVSwitch boards under TP, NCCL's NVLink buffers
#: and the custom all-reduce's: 2.01 GB per rank logged at TP 8 (sgl-project/sglang#11716).
SGLANG_DIST_INIT_NVLINK_BYTES = int(2.01 * GiB)
#: ... and everywhere else (PCIe cards, where SGLang turns its custom all-reduce off past two GPUs, and pipeline-only
#: ranks): NCCL's own buffers, 0.13 GB per rank at TP 4 over PCIe (4 x L4, the QwQ-32B case of
#: tests/data/engine_logs.yaml, which therefore does not check this term independently) and 0.16 GB on PP ranks
#: (sgl-project/sglang#12362).
SGLANG_DIST_INIT_OTHER_BYTES = int(0.13 * GiB)

#: The caching allocator reserves more than it hands out. Two sources, and the larger one counts
#: (generation reuses the holes a load leaves): a share of the dynamic part (KV cache and
#: activations), and the fragmented segments the load leaves (LOAD_FRAGMENTATION below).
#: Fitted on the H100 cases of docs/accuracy.md so that no total falls below its NVML peak.
ALLOCATOR_RESERVE_FRACTION = 0.36
#: Reserved-but-free memory a load leaves, as a share of the weights it loaded, by how the
#: weights get there: plain float copies, 4-bit quantization on the GPU, LLM.int8()
#: quantization (a bf16 copy per layer, then int8 + scales: 18% of Llama-3.1-8B's weights),
#: and MoE experts stored as fused 3-D tensors (6.8% of OLMoE-1B-7B's).
LOAD_FRAGMENTATION = {"float": 0.01, "4bit": 0.06, "int8": 0.22, "fused_experts": 0.08}
#: Fixed part of the reserve: cuBLAS/cuBLASLt workspaces and the allocator's 2 MiB small-block pool.
ALLOCATOR_RESERVE_FIXED_BYTES = 64 << 20

#: The reserve above is that of torch's default allocator ("caching", hardware.machine.ALLOCATORS);
#: the one below that of expandable segments, which `fitplan.load()` sets up.
#: With expandable segments the allocator maps 2 MiB pages into one growing virtual segment per
#: stream and, when an allocation would fail, unmaps the free pages inside it before retrying, so the
#: holes a load leaves and the blocks generation frees are given back under pressure instead of
#: staying reserved. What it holds beyond its allocated peak at headroom 0 is then a small share of
#: the dynamic memory (measured on an H200; docs/accuracy.md, "Expandable segments"): 0.5-18% over 23 rows
#: (18% with a compiled static cache's graph pool). The share also absorbs the estimate's small misses of the
#: allocated peak; 0.09 is the smallest that keeps all 23 rows at or above their NVML peaks (0.07 left three
#: rows 0.03-0.9% under).
EXPANDABLE_RESERVE_FRACTION = 0.09
#: Fixed part of that reserve: cuBLAS workspaces, the small-block pool and the page rounding of the
#: segments, measured on the same H200 runs.
EXPANDABLE_RESERVE_FIXED_BYTES = 64 << 20

#: Each allocation is rounded up to this many bytes by the CUDA caching allocator.
CUDA_ALLOCATION_ALIGNMENT = 512

#: Activation peak during prefill, per token of the batch, in units of one compute-dtype element:
#: ACT_HIDDEN_COPIES * hidden + ACT_MLP_COPIES * intermediate + the q/k/v projections. Copies
#: alive at the peak: residual stream, normed input, attention output; gate, up and their product.
ACT_HIDDEN_COPIES = 4
ACT_MLP_COPIES = 3

#: Eager attention materialises one layer's batch * heads * q_len * kv_len scores several times
#: over (scores, soft-capping, mask, fp32 softmax, cast back): bytes per score element at the
#: peak, fitted on Gemma-2-2B (2048x4 and 8192x1 tokens) together with the reserve share.
EAGER_SCORE_BYTES = 11
#: The same for SDPA's math fallback (scores and softmax, no soft-capping), fitted on Falcon-7B
#: at 2048x4 tokens to its allocated peak (8.5 bytes a score above the other terms; 7 had been
#: fitted together with the default allocator's reserve share, which the expandable plan lacks).
MATH_SDPA_SCORE_BYTES = 9

#: MoE layers dispatch each token to `experts_per_token` experts: per routed token, the gathered
#: hidden state and its expert output (2 x hidden) and the expert MLP's gate, up and product
#: (3 x expert intermediate), in compute-dtype elements. Fits OLMoE-1B-7B's measured peak.
ACT_MOE_HIDDEN_COPIES = 2
ACT_MOE_MLP_COPIES = 3
#: Besides the routed copies, the MoE block holds this many hidden-size copies per token (the
#: router's input and the combined output being accumulated): OLMoE-1B-7B at 16384 tokens allocated
#: 0.19 GiB above the routed terms, on an H100 (4096x4) and an H200 (8192x2) alike.
ACT_MOE_TOKEN_HIDDEN_COPIES = 3

#: LLM.int8() splits outlier columns (|x| > 6, data-dependent) into an fp16 matmul that needs fp16
#: copies of those weight columns: up to this many fp16 copies of the largest packed layer were
#: live at once (Llama-3.1-8B shape, first generation after load).
INT8_OUTLIER_WEIGHT_COPIES = 3.5

#: LLM.int8()'s matmul returns int32 products (4 bytes per output element) and dequantizes them into
#: a fp16 result (2 bytes) while the int32 buffer is still alive: bytes per output element at its
#: peak, on top of the int8 copy of the input (Mistral-7B at 32768 tokens allocated 1.05 GiB more
#: than int32 alone accounts for: one fp16 copy of the gate/up output).
INT8_MATMUL_OUT_BYTES = 6

#: generate() keeps fp32 logits of the last position for each sequence, plus the processed copy.
LOGITS_COPIES = 2

#: Host-to-GPU copy rate for weights offloaded to CPU RAM, which accelerate copies to the GPU at
#: every forward step: PCIe 4.0 x16 carries 31.5 GB/s per direction (16 GT/s x 16 lanes,
#: 128b/130b; PCI-SIG), and host-to-device copies reach about 25 GB/s of it (NVIDIA's
#: bandwidthTest on PCIe 4.0 hosts). A ceiling: copies from pageable memory, as accelerate's are,
#: run slower, and PCIe 3.0 hosts at half of it.
PCIE_BYTES_PER_S = 25e9

#: Decode time per token step that is not memory traffic: the Python generation loop, kernel
#: launches and bitsandbytes' per-call work, in seconds per decoder layer, by kind of weights.
#: Fitted on benchmarks/results/speed*.jsonl (Llama-3.1-8B shape, H100 80GB HBM3, transformers
#: 5.24, bitsandbytes 0.50.2, batch 1 and 8) so that the errors at batch 1 and 8 balance, and
#: checked against FINDINGS' Mistral-7B table (docs/accuracy.md, "Speed"). fp4-dq was not
#: measured and takes nf4-dq's value. Both shapes have 32 layers, so how much of it is per layer
#: and how much per step was not separated.
DECODE_OVERHEAD_S_PER_LAYER = {"float": 0.76e-3, "int8": 4.55e-3, "nf4": 1.06e-3, "fp4": 1.36e-3,
                               "nf4-dq": 1.52e-3, "fp4-dq": 1.52e-3}

#: bitsandbytes' 4-bit matmul over more than one row (a batch above 1 at decode) dequantizes each
#: weight to the compute dtype first: that copy is written and then read by the matmul, on top of
#: the packed bytes. With one row it runs a fused kernel over the packed bytes alone.
DEQUANT_COPIES = 2

#: Prefill scratch of state-space and linear-attention layers on transformers' torch path (no kernel
#: packages), fp32, per token of one sequence (fitplan.model.hf.prefill_scratch), in copies of:
#: - Mamba-2's chunk scan in its "einsum" form (5.24): chunk x heads elements, for the scores, the
#:   decay, their product and the copies einsum and segment_sum make: the count that covers
#:   Falcon-H1, Nemotron-H and Mamba-2 on an H100 with transformers 5.24 (docs/models.md);
MAMBA2_EINSUM_COPIES = 13
#: - Mamba's selective scan (Mamba, Falcon-Mamba, Jamba): intermediate x state elements, for the
#:   discrete A, the discrete B and deltaB*u;
SELECTIVE_SCAN_COPIES = 3
#: - the gated delta rule (Qwen3-Next, Qwen3.5): value-sized elements (num_v_heads x head_v_dim), for
#:   q, k, v, k*beta, v*beta, the decays, the output and the chunked products: the count that covers
#:   Qwen3-Next (8 layers, 8k x 2 tokens) on an H100 with transformers 5.17 and 5.24 (docs/models.md).
GATED_DELTA_COPIES = 20

#: Decode time per token step that is not memory traffic when generate() runs a static cache and
#: compiles the decode step (fitplan.planning.generation: torch.compile reduce-overhead, CUDA
#: graphs), in seconds per decoder layer, by kind of weights. Only kinds measured faster than plain
#: generate() have one: bitsandbytes' quantizers cannot be compiled, and a static cache without
#: compile decoded slower (shared/FINDINGS.md), so no quantized kind is here. Fitted on every compiled
#: row measured on the H200 (benchmarks/results/generation-h200-*.jsonl and FINDINGS: Qwen3-8B, Llama-3.2-1B
#: and Gemma-3-1B shapes, transformers 5.17 and 5.25, torch 2.11, batch 1 and 8) as the value with the
#: smallest largest error: all 11 rows within -23% to +21% (docs/accuracy.md, "Generation setup").
COMPILED_DECODE_OVERHEAD_S_PER_LAYER = {"float": 0.17e-3}

#: Memory a compiled static-cache decode holds besides the cache and the plain activation peak (CUDA
#: graphs' private pool, inductor's buffers): the reserved peak of the static setup less plain
#: generate()'s, Qwen3-8B bf16, prompt 512 + 48 new, H200, transformers 5.17 (+201 MB at batch 1,
#: +361 MB at batch 8, of which estimate.compile_workspace_bytes' K/V repeated to the query heads is 9 and
#: 73 MB): the larger rest, 288 MB, rounded up (benchmarks/results/generation-h200-tf5.17.jsonl).
COMPILE_WORKSPACE_BYTES = 288 << 20
