"""The workload of one plan, computed once from the options and the model and passed on."""
from __future__ import annotations

from dataclasses import dataclass

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
    return Workload(options.context + options.images * per_image, options.batch)
