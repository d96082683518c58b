"""The transformers Auto classes fitplan plans and loads, by the names options use."""
from __future__ import annotations

AUTO_CLASSES = {"causal-lm": "AutoModelForCausalLM", "image-text-to-text": "AutoModelForImageTextToText"}


def why_not_planned(value: object) -> str:
    """Why an Auto class that is not one of `AUTO_CLASSES` is refused (empty when no reason is known)."""
    return (" (encoder-decoder models are not planned: their encoder output and cross-attention cache are "
            "not sized)" if "seq2seq" in str(value).lower() else "")
