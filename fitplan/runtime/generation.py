"""Apply a plan's generation setup to a loaded model: its generation config, the planned-shape guard
and the optional warm-up (the first compile) before `fitplan.load()` returns.

The setup itself is chosen in `fitplan.planning.generation` (pure). What this module sets is public
transformers API: `model.generation_config.cache_implementation` and `.max_cache_len`, read back
after setting, since a transformers that does not know `max_cache_len` would drop it silently and
size the static cache to each call instead of the plan.
"""
from __future__ import annotations

import functools
import time

from ..errors import LibraryChangedError, PlannedShapeError, ref
from ..planning.generation import Generation


def apply(model, gen: Generation, *, context: int, batch: int) -> None:
    """Set `gen` on `model`: a static cache of `context` tokens for `batch` sequences, and a guard that
    refuses generate() calls past them. A dynamic setup leaves transformers' defaults untouched."""
    if not gen.static:
        return
    import transformers

    cfg = model.generation_config
    known = cfg.__class__()  # a GenerationConfig of this transformers: does it have the field at all?
    for key, value in gen.generation_config().items():
        setattr(cfg, key, value)
    if not hasattr(known, "max_cache_len") or cfg.max_cache_len != context or cfg.cache_implementation != "static":
        raise LibraryChangedError(library="transformers", version=transformers.__version__,
                                  what="its GenerationConfig kept no max_cache_len, so a static cache would be sized "
                                       "per call, not for the plan; load with fast=False")
    guard(model, context=context, batch=batch)


def _input_shape(args, kwargs) -> tuple[int, int] | None:
    """(batch, prompt tokens) of a generate() call, from its first argument (`inputs`, positional or by name),
    input_ids or inputs_embeds."""
    x = args[0] if args else kwargs.get("inputs", kwargs.get("input_ids"))
    if x is None:
        x = kwargs.get("input_ids")
    if x is None:
        x = kwargs.get("inputs_embeds")
    shape = getattr(x, "shape", None)
    if shape is None or len(shape) < 2:
        return None
    return int(shape[0]), int(shape[1])


def _new_tokens(model, prompt: int, kwargs) -> int | None:
    """How long the call may run, in total tokens: max_new_tokens wins over max_length, as in generate()."""
    cfg = kwargs.get("generation_config") or model.generation_config
    new = kwargs.get("max_new_tokens", getattr(cfg, "max_new_tokens", None))
    if new is not None:
        return prompt + int(new)
    length = kwargs.get("max_length", getattr(cfg, "max_length", None))
    return int(length) if length is not None else None


def guard_positions(model, *, limit: int, model_id: str) -> None:
    """Wrap `model.generate` so a call past a learned absolute position table (`Inventory.position_limit`: GPT-2,
    OPT, ...) fails before it runs, in one line, instead of an IndexError inside the embedding lookup once the
    sequence reaches row `limit`. Any cache: no position past the table exists."""
    guard(model, context=limit, batch=None, positions=model_id)


def guard(model, *, context: int, batch: int | None, positions: str | None = None) -> None:
    """Wrap `model.generate` so a call that would run past the planned context, or with more sequences
    than the planned batch, fails before anything is allocated, with one line saying what to do. The
    static cache is allocated for exactly `context` x `batch` (transformers would otherwise grow it and
    compile again, past the plan's memory). `positions` (the model's name): `context` is its learned
    absolute position table's length instead, and `batch` None (any batch runs)."""
    original = model.generate

    @functools.wraps(original)
    def generate(*args, **kwargs):
        shape = _input_shape(args, kwargs)
        if shape is not None:
            rows, prompt = shape
            rows *= max(int(kwargs.get("num_return_sequences", 1) or 1), int(kwargs.get("num_beams", 1) or 1))
            total = _new_tokens(model, prompt, kwargs)
            if total is not None and total > context:
                past = (f"{context} learned absolute positions of {positions}: no position past them exists (the "
                        f"embedding lookup would fail with an IndexError); shorten it to {context} tokens or fewer"
                        if positions else
                        f"{context} the model was planned and its static cache allocated for; shorten it, or load "
                        f"with {ref('context', total)} (or {ref('fast', False)} for a dynamic cache)")
                raise PlannedShapeError(
                    f"this generate() call runs to {total} tokens ({prompt} prompt + {total - prompt} new), past the "
                    f"{past}", tokens=total, context=context, batch=rows,
                    planned_batch=rows if batch is None else batch, option="context")
            if batch is not None and rows > batch:
                raise PlannedShapeError(
                    f"this generate() call runs {rows} sequences, more than the planned {ref('batch', batch)} its "
                    f"static cache was allocated for; split the batch, or load with {ref('batch', rows)}",
                    tokens=total, context=context, batch=rows, planned_batch=batch, option="batch")
        return original(*args, **kwargs)

    model.generate = generate


def warmup(model, *, batch: int, vocab_size: int) -> float:
    """One short generate() at the planned batch, so the first compile (and CUDA graph capture) happens
    now, not at the user's first call; seconds it took. The static cache it allocates is the planned one
    (max_cache_len), so later calls of the planned shape reuse the compiled graphs."""
    import torch

    device = next(model.parameters()).device
    ids = torch.randint(min(10, vocab_size - 1), min(vocab_size, 30000), (batch, 8), device=device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    with torch.inference_mode():
        # decode steps compile and record CUDA graphs on their first runs: a few of them warm it all up
        model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=4, min_new_tokens=4,
                       do_sample=False, pad_token_id=0)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0
