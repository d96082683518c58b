"""Tiny random-weight models of the architecture families fitplan must get right.

Dims are multiples of 64 (bitsandbytes' 4-bit CPU kernels need it at generate time). Each config
is a real transformers config class, so building, saving and loading go through the real code.
"""
from __future__ import annotations

from pathlib import Path

FAMILIES = {
    "llama-gqa": ("llama", dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                                num_attention_heads=4, num_key_value_heads=2, vocab_size=512,
                                tie_word_embeddings=False)),
    "qwen2-tied-bias": ("qwen2", dict(hidden_size=128, intermediate_size=320, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, vocab_size=512,
                                      tie_word_embeddings=True)),
    "gemma2-sliding": ("gemma2", dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                                      num_attention_heads=2, num_key_value_heads=1, head_dim=64,
                                      vocab_size=512, sliding_window=64)),
    "phi3-fused": ("phi3", dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                                num_attention_heads=4, num_key_value_heads=4, vocab_size=512,
                                pad_token_id=0, bos_token_id=1, eos_token_id=2)),
    "gpt2-conv1d": ("gpt2", dict(n_embd=128, n_layer=2, n_head=4, vocab_size=512, n_positions=256,
                                 bos_token_id=1, eos_token_id=2)),
    "opt": ("opt", dict(hidden_size=128, ffn_dim=256, num_hidden_layers=2, num_attention_heads=4,
                        vocab_size=512, word_embed_proj_dim=128, max_position_embeddings=256,
                        pad_token_id=1, bos_token_id=2, eos_token_id=2)),
    "falcon": ("falcon", dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
                              vocab_size=512, bos_token_id=1, eos_token_id=2)),
    "mixtral-moe": ("mixtral", dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                                    num_attention_heads=4, num_key_value_heads=2, vocab_size=512,
                                    num_local_experts=4, num_experts_per_tok=2)),
    "olmoe-moe": ("olmoe", dict(hidden_size=128, intermediate_size=128, num_hidden_layers=2,
                                num_attention_heads=4, num_key_value_heads=4, vocab_size=512,
                                num_experts=4, num_experts_per_tok=2, pad_token_id=1,
                                bos_token_id=None, eos_token_id=2)),
}


def config_dict(family: str) -> dict:
    from transformers import CONFIG_MAPPING

    model_type, kwargs = FAMILIES[family]
    return CONFIG_MAPPING[model_type](**kwargs).to_dict()


def save_tiny(family: str, path, dtype="bfloat16", seed: int = 0):
    """Build a random-weight model of `family` and save it as a local checkpoint in `path`."""
    import torch
    from transformers import AutoModelForCausalLM, CONFIG_MAPPING

    torch.manual_seed(seed)
    model_type, kwargs = FAMILIES[family]
    config = CONFIG_MAPPING[model_type](**kwargs)
    model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    model.save_pretrained(path)
    return path


def save_tiny_fp8(path, block: int = 128):
    """A random-weight Llama whose decoder linears are stored in fp8 with one fp32 scale per 128x128 block
    (`weight_scale_inv`, what transformers multiplies back), as DeepSeek-V3 / Qwen3-FP8 ship. Returns the bf16
    weights it was made from."""
    import json

    import torch
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM, LlamaConfig

    path = Path(path)
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, head_dim=64, vocab_size=512, max_position_embeddings=256,
                      tie_word_embeddings=False)
    AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16).save_pretrained(path)
    tensors = load_file(path / "model.safetensors")
    original = {}
    for name in [n for n in tensors if ".layers." in n and n.endswith("_proj.weight")]:
        w = original[name] = tensors[name].float()
        o, i = w.shape
        blocks = w.unflatten(0, (o // block, block)).unflatten(-1, (i // block, block))
        scale = blocks.abs().amax(dim=(1, 3)).clamp(min=1e-12) / 448.0
        tensors[name] = (blocks / scale[:, None, :, None]).flatten(2, 3).flatten(0, 1).to(torch.float8_e4m3fn)
        tensors[name[:-len("weight")] + "weight_scale_inv"] = scale.contiguous()
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((path / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "fp8", "activation_scheme": "dynamic",
                                     "weight_block_size": [block, block], "modules_to_not_convert": ["lm_head"]}
    (path / "config.json").write_text(json.dumps(config))
    return original


def forbid_from_pretrained(monkeypatch, cls, why: str) -> None:
    """Make `cls.from_pretrained` fail the test with `why`: for checks that must come before any load."""
    def must_not_load(*args, **kwargs):
        raise AssertionError(why)

    monkeypatch.setattr(cls, "from_pretrained", must_not_load)
