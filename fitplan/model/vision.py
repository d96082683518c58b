"""How many positions of the context one image takes in a vision-language model.

A request's images become image tokens in the language model's context (the processor expands one
`<image>` into as many placeholders as the vision tower and projector emit features), so they add
to the KV cache and the activations like text. The count is read from transformers itself: the
model's own `get_image_features` runs on the meta device for one image, and the features it returns
are counted. Inputs per family convention:

- fixed resolution (LLaVA, PaliGemma, InternVL, Janus, ...): one `num_channels x image_size x
  image_size` image, the vision tower's native size;
- `image_sizes` (LLaVA-NeXT, Mistral 3, LightOnOCR): the same image with its size, so the count is
  the base resolution's; larger images are tiled and take more (see docs/models.md);
- dynamic resolution with `image_grid_thw` (Qwen2-VL to Qwen3.5, GLM-4V, ...): the processor's
  own count for a `REFERENCE_PIXELS` square (`_grid_tokens`); tokens grow with the image's area.

Where that probe cannot run, a count the config states (`mm_tokens_per_image`, `image_seq_length`,
`num_image_tokens`, `num_query_tokens`) is used; otherwise the count is unknown and the plan says
so. Models with a fixed-size cross-attention to the image (Mllama) take no image tokens in the
context, but the probe cannot tell those apart; their note says so.
"""
from __future__ import annotations

import inspect

#: Side in pixels of the image a dynamic-resolution model's count is given for.
REFERENCE_PIXELS = 1024
#: Config fields (on the top-level config) that state the image tokens outright.
_COUNT_FIELDS = ("mm_tokens_per_image", "image_seq_length", "num_image_tokens", "num_query_tokens")


def image_tokens_per_image(model, config) -> tuple[int | None, str]:
    """(tokens one image adds to the context, a note for the plan saying how it was found)."""
    import torch

    with torch.no_grad():
        found = _pixtral_tokens(config) or _probe(model, config)
    if found is not None:
        tokens, how = found
        return tokens, f"one image adds {tokens} tokens to the context ({how}); the images option counts them"
    for field in _COUNT_FIELDS:
        value = getattr(config, field, None)
        if type(value) is int and value > 0:
            return value, (f"one image adds {value} tokens to the context (config '{field}'); the images option "
                           "counts them")
    return None, ("fitplan cannot tell how many context tokens an image takes on this model: add them to the "
                  "context yourself (see docs/models.md)")


def _features_fn(model):
    fn = getattr(model, "get_image_features", None)
    if fn is None:
        fn = getattr(getattr(model, "model", None), "get_image_features", None)
    return fn if callable(fn) else None


def _text_hidden(config) -> int | None:
    text = config.get_text_config(decoder=True)
    value = getattr(text, "hidden_size", None)
    return value if type(value) is int and value > 0 else None


def _count(out, hidden: int) -> int | None:
    """Image tokens in what `get_image_features` returned for one image: the rows of the projected
    features (last dimension the language model's hidden size)."""
    import torch

    candidates = []
    if isinstance(out, torch.Tensor) or isinstance(out, (list, tuple)):
        candidates.append(out)
    else:
        for field in ("pooler_output", "image_embeds", "last_hidden_state"):
            value = getattr(out, field, None)
            if value is not None:
                candidates.append(value)
    for value in candidates:
        tensors = list(value) if isinstance(value, (list, tuple)) else [value]
        if tensors and all(isinstance(t, torch.Tensor) and t.dim() >= 2 and t.shape[-1] == hidden for t in tensors):
            return sum(t.numel() // hidden for t in tensors)
    return None


def _probe(model, config) -> tuple[int, str] | None:
    import torch

    fn = _features_fn(model)
    vision = getattr(config, "vision_config", None)
    hidden = _text_hidden(config)
    if fn is None or vision is None or hidden is None:
        return None
    params = inspect.signature(fn).parameters
    channels = getattr(vision, "num_channels", None) or getattr(vision, "in_channels", None) or 3
    dtype = next(model.parameters()).dtype
    size = getattr(vision, "image_size", None)
    if isinstance(size, (list, tuple)) and len(size) == 2 and size[0] == size[1]:
        size = size[0]
    attempts = []
    if "image_grid_thw" in params:
        return _grid_tokens(vision)
    if type(size) is int and size > 0:
        image = torch.zeros((1, channels, size, size), dtype=dtype, device="meta")
        base = f"one {size}x{size} image, the vision tower's native size"
        if "image_sizes" in params:
            kwargs = dict(pixel_values=image, image_sizes=torch.tensor([[size, size]], dtype=torch.long))
            attempts.append((kwargs, base + "; larger images are tiled and take more"))
        elif "pixel_attention_mask" in params:
            kwargs = dict(pixel_values=image[:, None], pixel_attention_mask=torch.ones((1, 1, size, size),
                                                                                       dtype=torch.bool))
            attempts.append((kwargs, base + "; larger images are split and take more"))
        else:
            attempts.append((dict(pixel_values=image), base))
    for kwargs, how in attempts:
        try:
            out = fn(**kwargs)
        except Exception:  # noqa: BLE001 - a vision tower the meta device cannot run: the config may say
            continue
        tokens = _count(out, hidden)
        if tokens:
            return tokens, how
    return None


def _pixtral_tokens(config) -> tuple[int, str] | None:
    """Pixtral vision towers (Mistral 3: Mistral Small 3.1/3.2, Magistral; Pixtral-12B through LLaVA):
    `PixtralProcessor` resizes an image to fit its `longest_edge`, rounds each side up to whole
    `patch_size x spatial_merge_size` cells, and writes one [IMG] per cell with an [IMG_BREAK] ending
    each row (the last one [IMG_END]): `(columns + 1) x rows` positions
    (`_get_num_multimodal_tokens`, 5.0-5.24). Applied to a REFERENCE_PIXELS square, which fits every
    released Pixtral processor's `longest_edge` (1024 to 1540) unresized; tests/test_arch_vision.py
    checks the [IMG] count against a real tower's features."""
    vision = getattr(config, "vision_config", None)
    if getattr(vision, "model_type", None) != "pixtral":
        return None
    patch = getattr(vision, "patch_size", None)
    merge = getattr(config, "spatial_merge_size", None) or 1
    if type(patch) is not int or patch <= 0 or type(merge) is not int or merge <= 0:
        return None
    side = -(-REFERENCE_PIXELS // (patch * merge))  # cells per side, rounded up as the processor rounds
    return (side + 1) * side, (f"a {REFERENCE_PIXELS}x{REFERENCE_PIXELS} image: {side} rows of {side} image tokens "
                               "and a row break; the count grows with the image's area")


def _grid_tokens(vision) -> tuple[int, str] | None:
    """Dynamic resolution with `image_grid_thw` (Qwen2-VL and its descendants): the processor resizes
    the image to multiples of `patch_size x spatial_merge_size`, cuts it into patches (the grid) and
    puts `prod(grid) // spatial_merge_size**2` image tokens into the text. The vision tower cannot run
    on the meta device (it reads the grid's values), so the processor's formula is applied to a
    REFERENCE_PIXELS square; tests/test_arch_vision.py checks it against real tiny towers."""
    patch = getattr(vision, "patch_size", None)
    merge = getattr(vision, "spatial_merge_size", None)
    if type(patch) is not int or patch <= 0 or type(merge) is not int or merge <= 0:
        return None
    side = max(1, round(REFERENCE_PIXELS / (patch * merge))) * merge  # patches per side
    return (side * side) // (merge * merge), (f"a {REFERENCE_PIXELS}x{REFERENCE_PIXELS} image; the count grows with "
                                              "the image's area")
