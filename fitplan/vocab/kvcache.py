"""KV cache types of the llama.cpp (GGUF) runs fitplan plans (`-ctk`/`-ctv`, the `kv_type` option);
quantized ones need flash attention, which the printed commands turn on. Their ggml types are
`fitplan.gguf.ggml_types.KV_TYPES`."""
from __future__ import annotations

KV_CACHE_TYPES = ("f16", "q8_0", "q4_0")
