"""Every option a user can set, declared once: name, type, default, help, flag, profile key, variable.

As peft declares its configs, each option is a dataclass field whose `metadata` carries the rest;
everything else is read off these declarations, never typed again:

- `PlanOptions` (how to plan) and `SourceOptions` (what to plan for: where the model and the
  hardware come from) are the dataclasses the library passes on;
- the `fitplan` command's flags (`fitplan.cli.common.plan_options`);
- the deployment-profile schema and its JSON Schema (`fitplan.profiles.schema`);
- the `FITPLAN_*` environment variables (`env_var`);
- the keyword arguments `fitplan.plan()` and `fitplan.load()` accept.

Library errors name options with `fitplan.errors.ref(name)`: the API shows `context=`, the CLI
`--context`.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from .errors import InputError, flag_of, ref
from .model import prequant
from .model.inventory import AUTO_CLASSES
from .planning import precision
from .planning.precision import NAMES as PRECISIONS
from .units import parse_fraction_or_bytes

#: What `prefer` may say: the orders are in `fitplan.planning.policy`.
PREFERENCES = ("quality", "memory", "speed")
MAX_CONTEXT = 1 << 24
MAX_BATCH = 1 << 16
MAX_IMAGES = 1 << 10
#: Profile sections that group options, with their documentation.
SECTIONS = {"workload": "What one generation needs.", "constraints": "What the chosen plan must respect."}


def option(default: Any, help: str, *, kind: str, profile: tuple[str, ...] | None = None,
           env: str | None = "", choices: tuple[str, ...] = (), minimum: int | None = None,
           maximum: int | None = None, default_text: str | None = None):
    """A dataclass field carrying its declaration. `kind`: int | enum | precision (an enum that also
    takes a pre-quantized checkpoint's stored row) | headroom | bool | flag | string | path. `profile`: the key path in a deployment profile (None: not in profiles). `env`: the variable
    ("" for FITPLAN_<NAME>, None for none)."""
    return field(default=default, metadata={
        "help": help, "kind": kind, "profile": profile, "env": env, "choices": choices,
        "minimum": minimum, "maximum": maximum,
        "default_text": default_text if default_text is not None else ("none" if default is None else str(default)).lower(),
    })


def parse_headroom(value) -> float | int:
    """`10%` or `0.1` -> 0.1 (share of each GPU's memory); `1.5GiB` -> bytes."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, float):
        if 0 <= value < 1:
            return value
        raise InputError(f"headroom: a plain number is a share and must be below 1 (e.g. 0.1), got {value}; "
                         "write sizes with a unit, e.g. '1.5GiB'")
    frac, nbytes = parse_fraction_or_bytes(value, what="headroom")
    if frac is not None:
        return frac
    if nbytes is None:
        raise InputError("headroom: write a share like '10%' or a size like '1.5GiB'")
    return nbytes


@dataclass(frozen=True)
class PlanOptions:
    """How to plan: the workload and the constraints on the choice."""

    context: int = option(4096, "Longest sequence in tokens, prompt plus generated.", kind="int",
                          profile=("workload", "context"), minimum=1, maximum=MAX_CONTEXT)
    batch: int = option(1, "Sequences generated at once.", kind="int", profile=("workload", "batch"),
                        minimum=1, maximum=MAX_BATCH)
    images: int = option(0, "Images per sequence (vision-language models): each adds the tokens one image takes "
                            "to the context.", kind="int", profile=("workload", "images"), minimum=0,
                         maximum=MAX_IMAGES)
    auto_class: str | None = option(None, "The transformers Auto class to plan and load: causal-lm (the language "
                                          "model alone) or image-text-to-text (a vision-language model whole).",
                                    kind="enum", choices=tuple(AUTO_CLASSES), profile=("auto_class",),
                                    default_text="the checkpoint's")
    precision: str | None = option(None, "Use exactly this precision instead of choosing (for a pre-quantized "
                                   "checkpoint, its stored row, e.g. gptq-int4).", kind="precision",
                                   choices=PRECISIONS, profile=("constraints", "precision"),
                                   default_text="none (choose)")
    min_precision: str | None = option(None, "Never go below this precision (" + " > ".join(PRECISIONS) + ").",
                                       kind="enum", choices=PRECISIONS, profile=("constraints", "min_precision"))
    prefer: str = option("quality", "What to favour among precisions that fit.", kind="enum", choices=PREFERENCES,
                         profile=("constraints", "prefer"))
    headroom: float | int = option(0.10, "Memory left unplanned per GPU: a share ('10%') or a size ('1.5GiB').",
                                   kind="headroom", profile=("constraints", "headroom"), default_text="10%")
    offload: bool = option(False, "Allow CPU offload when nothing fits on the GPUs (slow).", kind="bool",
                           profile=("constraints", "offload"))
    fast: bool = option(True, "Generate with the fastest setup measured to work here (static cache, compiled "
                              "decode, attention kernel; see the plan's generation); false: plain transformers.",
                        kind="bool", profile=("constraints", "fast"))

    def __post_init__(self):
        for name in ("context", "batch", "images"):
            v, meta = getattr(self, name), fields_by_name()[name].metadata
            if isinstance(v, bool) or not isinstance(v, int) or v < meta["minimum"]:
                what = {"context": "a positive number of tokens", "batch": "a positive whole number",
                        "images": "a whole number, 0 or more"}[name]
                raise InputError(f"{name} must be {what}, got {v!r}")
        if self.context > MAX_CONTEXT or self.batch > MAX_BATCH or self.images > MAX_IMAGES:
            raise InputError("context, batch or images is absurdly large (limits: 16M tokens, 65536 sequences, "
                             f"{MAX_IMAGES} images)")
        if self.auto_class is not None and self.auto_class not in AUTO_CLASSES:
            why = (" (encoder-decoder models are not planned: their encoder output and cross-attention cache are "
                   "not sized)" if "seq2seq" in str(self.auto_class) else "")
            raise InputError(f"{ref('auto_class')} must be one of {', '.join(AUTO_CLASSES)}, got "
                             f"{self.auto_class!r:.40}{why}", option="auto_class")
        for name in ("precision", "min_precision"):
            v = getattr(self, name)
            if v is None or (name == "precision" and prequant.is_label(v)):
                continue
            try:
                precision.get(v)  # one message for every bad precision
            except InputError as err:
                raise InputError(f"{ref(name, repr(v))}: {err.message}", option=name) from None
        if self.prefer not in PREFERENCES:
            raise InputError(f"prefer must be one of {', '.join(PREFERENCES)}, got {self.prefer!r}")
        h = self.headroom
        if isinstance(h, bool) or not isinstance(h, (int, float)) or h < 0 or (isinstance(h, float) and h >= 1):
            raise InputError(f"headroom must be a share below 1 (e.g. 0.1) or bytes, got {h!r}")

    @classmethod
    def from_values(cls, **values) -> "PlanOptions":
        """From loosely typed values (keyword arguments, CLI strings); None means the default.
        Names are matched case-insensitively for enums; headroom is parsed from '10%' or '1.5GiB'."""
        unknown = set(values) - set(PLAN_KEYS)
        if unknown:
            raise InputError(f"unknown option {', '.join(sorted(unknown))}; options are {', '.join(PLAN_KEYS)}")
        kw = {}
        for f in fields(cls):
            v = values.get(f.name)
            if v is None:
                continue
            if f.metadata["kind"] in ("enum", "precision") and isinstance(v, str):
                v = v.lower()
            elif f.metadata["kind"] == "headroom":
                v = parse_headroom(v)
            elif f.metadata["kind"] == "bool":
                v = bool(v)
            kw[f.name] = v
        return cls(**kw)

    def workload(self, inv):
        """The workload on the model `inv`: the text context, plus the tokens `images` images take
        (`Inventory.image_tokens_per_image`), `batch` sequences. Images on a model that takes none, or
        whose tokens per image fitplan cannot tell, are refused with what to do instead."""
        from .planning.estimate import Workload

        if not self.images:
            return Workload(self.context, self.batch)
        if inv.auto_class != "image-text-to-text":
            raise InputError(f"{ref('images')}: {inv.model_id} is planned as {AUTO_CLASSES[inv.auto_class]}, which "
                             "takes no images; plan it as image-text-to-text or drop the images", option="images")
        per_image = inv.image_tokens_per_image
        if not per_image:
            raise InputError(f"{ref('images')}: fitplan cannot tell how many tokens an image takes on {inv.model_id} "
                             f"(docs/models.md); add them to {ref('context')} instead", option="images")
        return Workload(self.context + self.images * per_image, self.batch)


@dataclass(frozen=True)
class SourceOptions:
    """What to plan for: where the model's files come from and which hardware."""

    revision: str | None = option(None, "Hub branch, tag or commit to plan (and load).", kind="string",
                                  profile=("revision",), default_text="main")
    token: str | None = option(None, "Hub token for gated or private repos.", kind="string", env="HF_TOKEN")
    offline: bool = option(False, "Never contact the Hub (also HF_HUB_OFFLINE=1).", kind="flag", env=None)
    gpu: str | None = option(None, "Plan for catalogue GPUs instead of this machine: rtx4090, 2xa100-80gb.",
                             kind="string")
    hardware: Any = option(None, "Plan for GPUs described in a YAML file.", kind="path", env=None)


def fields_by_name() -> dict:
    return {f.name: f for cls in (PlanOptions, SourceOptions) for f in fields(cls)}


PLAN_KEYS: tuple[str, ...] = tuple(f.name for f in fields(PlanOptions))
SOURCE_KEYS: tuple[str, ...] = tuple(f.name for f in fields(SourceOptions))
#: Every keyword `fitplan.plan()`, `fitplan.load()` and the CLI take for planning.
OPTION_KEYS: tuple[str, ...] = PLAN_KEYS + SOURCE_KEYS


def env_var(name: str) -> str | None:
    """The environment variable for option `name` (`FITPLAN_CONTEXT`), or None."""
    env = fields_by_name()[name].metadata["env"]
    return f"FITPLAN_{name.upper()}" if env == "" else env


def flag(name: str) -> str:
    """The CLI flag of option `name`: `min_precision` -> `--min-precision`."""
    return flag_of(name)
