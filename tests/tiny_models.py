"""Tiny random-weight models of the architecture families fitplan must get right.

Dims are multiples of 64 (bitsandbytes' 4-bit CPU kernels need it at generate time). Each config
is a real transformers config class, so building, saving and loading go through the real code.
"""
from __future__ import annotations

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


def forbid_from_pretrained(monkeypatch, cls, why: str) -> None:
    """Make `cls.from_pretrained` fail the test with `why`: for checks that must come before any load."""
    def must_not_load(*args, **kwargs):
        raise AssertionError(why)

    monkeypatch.setattr(cls, "from_pretrained", must_not_load)
