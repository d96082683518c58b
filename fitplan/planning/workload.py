"""The workload of one plan, computed once from the options and the model and passed on."""
from __future__ import annotations

from dataclasses import dataclass, replace

from ..errors import OptionError, ref
from ..model.inventory import Inventory
from ..options import PlanOptions
from ..vocab.classes import AUTO_CLASSES


@dataclass(frozen=True)
class Workload:
    """One generation: `context` is the longest sequence in tokens (prompt + new tokens, plus the
    tokens its images take), `batch` sequences at once. Made by `workload_of`."""

    context: int
    batch: int
    image_tokens: int = 0  # of `context`: the tokens the images take

    def with_options(self, options: PlanOptions) -> "Workload":
        """The workload `options` ask of the same model (a suggestion's changed context or batch)."""
        return Workload(options.context + self.image_tokens, options.batch, self.image_tokens)


def workload_of(options: PlanOptions, inv: Inventory) -> Workload:
    """The workload on the model `inv`: the text context, plus the tokens `images` images take
    (`Inventory.image_tokens_per_image`), `batch` sequences. Images on a model that takes none, or
    whose tokens per image fitplan cannot tell, are refused with what to do instead."""
    if not options.images:
        return Workload(options.context, options.batch)
    if inv.auto_class != "image-text-to-text":
        raise OptionError(f"{ref('images')}: {inv.model_id} is planned as {AUTO_CLASSES[inv.auto_class]}, which "
                          "takes no images; plan it as image-text-to-text or drop the images", option="images")
    per_image = inv.image_tokens_per_image
    if not per_image:
        raise OptionError(f"{ref('images')}: fitplan cannot tell how many tokens an image takes on {inv.model_id} "
                          f"(docs/models.md); add them to {ref('context')} instead", option="images")
    images = options.images * per_image
    return Workload(options.context + images, options.batch, images)


def planned(options: PlanOptions, inv: Inventory, *, context_given: bool = True
            ) -> tuple[PlanOptions, Workload, str | None]:
    """The options as planned, their workload and a note: a model with learned absolute positions
    (`Inventory.position_limit`) cannot run a longer sequence at all, so a context past it that the user
    asked for is refused with the limit, and the default context is capped at it, with the note. (Rotary
    and ALiBi models run past their trained length: their plan keeps the context and says what that does
    to quality, `Plan.notes`.)"""
    work = workload_of(options, inv)
    limit = inv.position_limit
    if not limit or work.context <= limit:
        return options, work, None
    images = work.image_tokens
    fits = limit - images
    if context_given or fits < 1:
        with_images = f" plus {images} image tokens" if images else ""
        fix = f"use {ref('context', fits)} or less" if fits >= 1 else f"use fewer {ref('images')}"
        raise OptionError(f"{ref('context', options.context)}{with_images} is past the {limit} positions "
                          f"{inv.model_id} has: {inv.architecture} looks positions up in a learned table of {limit} "
                          f"rows, so a longer sequence cannot run; {fix}", option="context")
    note = (f"context {fits} (not the default {options.context}): {inv.model_id} has {limit} learned absolute "
            "positions and cannot run a longer sequence")
    return replace(options, context=fits), replace(work, context=limit), note
