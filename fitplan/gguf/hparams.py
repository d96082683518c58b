"""A GGUF header's metadata as the hyperparameters fitplan plans with, each checked where it is read.

`model_of(meta, tensors, ...)` turns the decoded key/value pairs (`header.py`) into a `GGUFModel`.
Every value is checked for its type (a whole number, not a float, string, bool or array where one
number belongs) and its range (bounds below: what real models reach, with a wide margin); a
violation is a `HeaderValueError` naming the file and the key. Pure: no file access.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import FileError, HeaderValueError
from .ggml_types import file_type_name
from .model import GGUFModel, GGUFTensor

#: Sliding-window layer patterns llama.cpp hard-codes per architecture when the file carries no
#: `{arch}.attention.sliding_window_pattern` array (src/llama-model.cpp `hparams.set_swa_pattern(n)`:
#: of every n layers, the first n-1 use the window and the last one is global).
SWA_PATTERNS = {"gemma2": 2, "gemma3": 6, "cohere2": 4}
#: Architectures whose sliding window llama.cpp does not implement: their layers attend to the whole
#: context, so a window in the file does not shrink the KV cache.
SWA_IGNORED = {"llama", "mistral"}

#: Model sizes no real model reaches (the deepest have ~130 layers, the widest a 25,600 hidden size, the
#: most experts 512); a value past them is a corrupt or hostile file, and would cost memory per layer.
MAX_LAYERS = 512
MAX_WIDTH = 1 << 17
MAX_HEADS = 2048
MAX_HEAD_DIM = 1 << 14
MAX_FF = 1 << 20
MAX_VOCAB = 1 << 23
MAX_CONTEXT = 1 << 27
MAX_EXPERTS = 4096


class ArrayLen(int):
    """A long array's length, standing in for the array (only its length is needed)."""


def model_of(meta: dict, tensors: tuple[GGUFTensor, ...], *, where: str, header_bytes: int, alignment: int,
           file_bytes: int) -> GGUFModel:
    arch = meta.get("general.architecture")
    if not isinstance(arch, str) or not arch:
        raise FileError(f"{where} has no general.architecture: it is not a llama.cpp model file; re-convert it",
                        path=where, key="general.architecture")

    def get(key: str, default=None):
        return meta.get(f"{arch}.{key}", default)

    def bad(key: str, v, expected: str):
        shown = f"an array of {int(v):,}" if isinstance(v, ArrayLen) else repr(v)
        return HeaderValueError(f"{where}: {key} = {shown[:60]} is not {expected}; the file is corrupt or not a "
                                "real model, re-download or re-convert it", path=where, key=key, value=shown[:60],
                                expected=expected)

    def whole(full: str, v, lo: int, hi: int) -> int:
        if isinstance(v, bool) or not isinstance(v, int) or isinstance(v, ArrayLen) or not lo <= v <= hi:
            raise bad(full, v, f"a whole number from {lo:,} to {hi:,}")
        return v

    def count(key: str, lo: int, hi: int, default=None, *, per_layer: bool = False):
        """`{arch}.{key}` as a whole number in [lo, hi] (a per-layer list of them: its largest, or with
        `per_layer` the tuple), `default` when absent; anything else is a HeaderValueError."""
        full = f"{arch}.{key}"
        v = meta.get(full)
        if v is None:
            return default
        if isinstance(v, list):
            if not v:
                raise bad(full, v, "a whole number or a non-empty list of them")
            items = tuple(whole(full, x, lo, hi) for x in v)
            return items if per_layer else max(items)
        return whole(full, v, lo, hi)

    n_layer = count("block_count", 1, MAX_LAYERS)
    if isinstance(meta.get(f"{arch}.block_count"), list):
        raise bad(f"{arch}.block_count", meta[f"{arch}.block_count"], "one whole number")
    n_embd = count("embedding_length", 1, MAX_WIDTH)
    n_head = count("attention.head_count", 1, MAX_HEADS)
    if not n_layer or not n_embd or not n_head:
        raise FileError(f"{where} lacks {arch}.block_count, .embedding_length or .attention.head_count: "
                        "fitplan plans decoder models with attention; this file is not one it can plan", path=where)
    kv = count("attention.head_count_kv", 0, MAX_HEADS, n_head, per_layer=True)
    n_head_kv = kv if isinstance(kv, tuple) else (kv,) * n_layer
    if len(n_head_kv) != n_layer:
        raise FileError(f"{where}: {arch}.attention.head_count_kv has {len(n_head_kv)} entries for {n_layer} "
                        "layers; re-convert the file", path=where, key=f"{arch}.attention.head_count_kv")
    head_k = count("attention.key_length", 1, MAX_HEAD_DIM, max(n_embd // n_head, 1))
    head_v = count("attention.value_length", 1, MAX_HEAD_DIM, max(n_embd // n_head, 1))
    tokens = meta.get("tokenizer.ggml.tokens")
    embd = next((t for t in tensors if t.name == "token_embd.weight"), None)
    n_vocab = count("vocab_size", 1, MAX_VOCAB) or (int(tokens) if isinstance(tokens, int) else len(
        tokens if isinstance(tokens, list) else ())) or (
        embd.shape[1] if embd is not None and len(embd.shape) > 1 else 0)
    if n_vocab > MAX_VOCAB:
        raise bad("tokenizer.ggml.tokens", tokens, f"a vocabulary of at most {MAX_VOCAB:,} tokens")
    window = count("attention.sliding_window", 0, MAX_CONTEXT)
    context = count("context_length", 1, MAX_CONTEXT)
    n_ff = count("feed_forward_length", 0, MAX_FF, 0)
    n_expert = count("expert_count", 0, MAX_EXPERTS, 0)
    n_expert_used = count("expert_used_count", 0, max(n_expert, 1) if n_expert else MAX_EXPERTS, 0)
    ftype = meta.get("general.file_type")
    if ftype is not None:
        whole("general.file_type", ftype, 0, 1 << 16)
    pattern = get("attention.sliding_window_pattern")
    notes = []
    if window and isinstance(pattern, list) and len(pattern) == n_layer:
        swa = tuple(bool(x) for x in pattern)
    elif window and arch in SWA_PATTERNS:
        n = SWA_PATTERNS[arch]
        swa = tuple(i % n < n - 1 for i in range(n_layer))
    else:
        swa = (False,) * n_layer
        if window and arch not in SWA_IGNORED:
            notes.append(f"{arch} declares a {window}-token sliding window without a layer pattern fitplan knows: "
                         "planned as full attention (an upper bound)")
    return GGUFModel(
        name=Path(where).name, origin="local", architecture=arch,
        file_type=file_type_name(ftype),
        tensors=tensors, n_layer=n_layer, n_embd=n_embd, n_head=n_head, n_head_kv=n_head_kv,
        head_dim_k=head_k, head_dim_v=head_v, n_vocab=n_vocab, context_length=context,
        header_bytes=header_bytes, file_bytes=file_bytes, alignment=alignment, n_ff=n_ff,
        sliding_window=window if any(swa) else None, swa_layers=swa,
        n_expert=n_expert, n_expert_used=n_expert_used, notes=tuple(notes))


