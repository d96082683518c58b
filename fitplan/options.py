"""Every option a user can set, declared once: name, type, default, help, flag, profile key, variable.

As peft declares its configs, each option is a dataclass field whose `metadata` carries the rest;
everything else is read off these declarations, never typed again:

- `PlanOptions` (how to plan) and `SourceOptions` (what to plan for: where the model and the
  hardware come from) are the dataclasses the library passes on;
- the `fitplan` command's flags (`fitplan.cli.common.plan_options`);
- the deployment-profile schema and its JSON Schema (`fitplan.profiles.schema`);
- the `FITPLAN_*` environment variables (`env_var`);
- the keyword arguments `fitplan.plan()` and `fitplan.load()` accept.

How a value of each kind is parsed, checked and documented is the kind's (`fitplan.vocab.kinds`),
once for every option of that kind.

Library errors name options with `fitplan.errors.ref(name)`: the API shows `context=`, the CLI
`--context`.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field, fields
from typing import Any

from .errors import OptionError, flag_of, ref, subject
from .vocab.classes import AUTO_CLASSES, why_not_planned
from .vocab.kvcache import KV_CACHE_TYPES
from .vocab.kinds import BadValue, kind
from .vocab.precision import NAMES as PRECISIONS, PREFERENCES
from .versions import ENGINE_MIRRORS, engine_mirror

MAX_CONTEXT = 1 << 24
MAX_BATCH = 1 << 16
MAX_IMAGES = 1 << 10
#: Profile sections that group options, with their documentation.
SECTIONS = {"workload": "What one generation needs.", "constraints": "What the chosen plan must respect.",
            "serving": "The serving engine's own settings, by its own names (engine vllm or sglang)."}
#: What `engine` may say: transformers (fitplan.load(), one process) or a serving engine (fitplan.engines).
ENGINES = ("transformers", "vllm", "sglang")
#: `--kv-cache-dtype` and `--quantization` values the engine plans size (fitplan.engines.common).
KV_CACHE_DTYPES = ("auto", "bfloat16", "float16", "fp8", "fp8_e4m3", "fp8_e5m2")
ENGINE_QUANTIZATIONS = ("fp8",)
#: The engine releases fitplan mirrors, as option help says them.
_MIRRORED = "; ".join(f"{name}: {', '.join(releases)}" for name, releases in ENGINE_MIRRORS.items())
MAX_RANKS = 1024


def option(default: Any, help: str, *, kind: str, profile: tuple[str, ...] | None = None,
           env: str | None = "", choices: tuple[str, ...] = (), minimum: int | None = None,
           maximum: int | None = None, default_text: str | None = None, stored_rows: bool = False):
    """A dataclass field carrying its declaration. `kind`: a name of `fitplan.vocab.kinds.KINDS` (int |
    enum | precision | headroom | bool | flag | string | path), which parses, checks and documents the
    value. `profile`: the key path in a deployment profile (None: not in profiles). `env`: the variable
    ("" for FITPLAN_<NAME>, None for none). `stored_rows`: a precision that may also name a
    pre-quantized checkpoint's stored row."""
    return field(default=default, metadata={
        "help": help, "kind": kind, "profile": profile, "env": env, "choices": choices,
        "minimum": minimum, "maximum": maximum, "stored_rows": stored_rows,
        "default_text": default_text if default_text is not None else ("none" if default is None else str(default)).lower(),
    })


def check_option(name: str, value: Any) -> Any:
    """`value` of option `name`, typed by its kind, or an `OptionError` naming the option."""
    meta = fields_by_name()[name].metadata
    try:
        return kind(meta["kind"]).check(value, meta)
    except BadValue as bad:
        why = why_not_planned(value) if name == "auto_class" else ""
        raise OptionError(bad.after(subject(name)) + why, option=name) from None


def check_keys(given, allowed: tuple[str, ...], what: str = "option") -> None:
    """The one check that every keyword is an option: `unknown option contxt; options are ...`."""
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        raise OptionError(f"unknown {what} {', '.join(unknown)}; {what}s are {', '.join(allowed)}", option=unknown[0])


class _Checked:
    """Options whose every field is checked and typed by its kind when the object is made."""

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None and value is not f.default:
                object.__setattr__(self, f.name, check_option(f.name, value))

    @classmethod
    def from_values(cls, **values):
        """From loosely typed values (keyword arguments, CLI strings); None means the default."""
        check_keys(values, tuple(f.name for f in fields(cls)))
        return cls(**{k: v for k, v in values.items() if v is not None})


@dataclass(frozen=True)
class PlanOptions(_Checked):
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
                                   choices=PRECISIONS, stored_rows=True, profile=("constraints", "precision"),
                                   default_text="none (choose)")
    min_precision: str | None = option(None, "Never go below this precision (" + " > ".join(PRECISIONS) + ").",
                                       kind="precision", choices=PRECISIONS,
                                       profile=("constraints", "min_precision"))
    prefer: str = option("quality", "What to favour among precisions that fit.", kind="enum", choices=PREFERENCES,
                         profile=("constraints", "prefer"))
    headroom: float | int = option(0.10, "Memory left unplanned on each GPU (and RAM): a share of its total ('10%') or a size ('1.5GiB').",
                                   kind="headroom", profile=("constraints", "headroom"), default_text="10%")
    offload: bool = option(False, "Allow CPU offload when nothing fits on the GPUs (slow).", kind="bool",
                           profile=("constraints", "offload"))
    kv_type: str = option("f16", "KV cache type of the llama.cpp (GGUF) runs planned: f16, or q8_0 / q4_0 (quantized, "
                                 "about half / a quarter of the bytes).", kind="enum", choices=KV_CACHE_TYPES,
                          profile=("workload", "kv_type"))
    engine: str = option("transformers", "What runs the model: transformers (fitplan.load(), one process) or a serving "
                                         "engine, vllm or sglang, planned per rank with tensor/pipeline parallelism.",
                         kind="enum", choices=ENGINES, profile=("engine",))
    engine_version: str | None = option(None, "The release of the engine you run (e.g. 0.19.0): the plan follows the "
                                              "newest release fitplan mirrors at or below it (" + _MIRRORED + ").",
                                        kind="string", profile=("serving", "engine_version"),
                                        default_text="the newest mirrored")
    concurrency: int | None = option(None, "Sequences at the full context the engine must hold at once (engine "
                                           "plans; default 1).", kind="int", profile=("workload", "concurrency"),
                                     minimum=1, maximum=MAX_BATCH)
    tensor_parallel_size: int | None = option(None, "Engine tensor parallel size (vLLM --tensor-parallel-size, "
                                                    "SGLang --tp).", kind="int", minimum=1, maximum=MAX_RANKS,
                                              profile=("serving", "tensor_parallel_size"), default_text="chosen")
    pipeline_parallel_size: int | None = option(None, "Engine pipeline parallel size (vLLM --pipeline-parallel-size, "
                                                      "SGLang --pp-size).", kind="int", minimum=1, maximum=MAX_RANKS,
                                                profile=("serving", "pipeline_parallel_size"), default_text="chosen")
    gpu_memory_utilization: float | None = option(None, "Share of each GPU the engine may use (vLLM "
                                                        "--gpu-memory-utilization, SGLang --mem-fraction-static).",
                                                  kind="fraction", profile=("serving", "gpu_memory_utilization"),
                                                  default_text="the engine's")
    kv_cache_dtype: str | None = option(None, "Engine KV cache dtype (--kv-cache-dtype).", kind="enum",
                                        choices=KV_CACHE_DTYPES, profile=("serving", "kv_cache_dtype"),
                                        default_text="chosen")
    quantization: str | None = option(None, "Engine online quantization of a float checkpoint (--quantization).",
                                      kind="enum", choices=ENGINE_QUANTIZATIONS, profile=("serving", "quantization"),
                                      default_text="chosen")
    max_num_seqs: int | None = option(None, "Engine --max-num-seqs.", kind="int", minimum=1, maximum=MAX_BATCH,
                                      profile=("serving", "max_num_seqs"), default_text="the engine's")
    max_num_batched_tokens: int | None = option(None, "Engine --max-num-batched-tokens (SGLang "
                                                      "--chunked-prefill-size).", kind="int", minimum=1,
                                                maximum=MAX_CONTEXT, profile=("serving", "max_num_batched_tokens"),
                                                default_text="the engine's")
    enforce_eager: bool = option(False, "Engine --enforce-eager (no CUDA graphs).", kind="bool",
                                 profile=("serving", "enforce_eager"))

    def __post_init__(self):
        super().__post_init__()
        engine_only = [n for n in ENGINE_KEYS if getattr(self, n) not in (None, False)]
        if self.engine == "transformers" and engine_only:
            raise OptionError(f"{subject(engine_only[0])} is a serving-engine setting; set {ref('engine')} to vllm or "
                              "sglang to plan for an engine", option=engine_only[0])
        if self.engine_version is not None and self.engine != "transformers":
            engine_release(self.engine, self.engine_version)
    fast: bool = option(True, "Generate with the fastest setup measured to work here (static cache, compiled "
                              "decode, attention kernel; see the plan's generation); false: plain transformers.",
                        kind="bool", profile=("constraints", "fast"))


@dataclass(frozen=True)
class SourceOptions(_Checked):
    """What to plan for: where the model's files come from and which hardware."""

    revision: str | None = option(None, "Hub branch, tag or commit to plan (and load).", kind="string",
                                  profile=("revision",), default_text="main")
    token: str | None = option(None, "Hub token for gated or private repos.", kind="string", env="HF_TOKEN")
    offline: bool = option(False, "Never contact the Hub (also HF_HUB_OFFLINE=1).", kind="flag", env=None)
    gpu: str | None = option(None, "Plan for catalogue GPUs instead of this machine: rtx4090, 2xa100-80gb.",
                             kind="string")
    hardware: Any = option(None, "Plan for GPUs described in a YAML file.", kind="path", env=None)


@functools.cache
def fields_by_name() -> dict:
    return {f.name: f for cls in (PlanOptions, SourceOptions) for f in fields(cls)}


PLAN_KEYS: tuple[str, ...] = tuple(f.name for f in fields(PlanOptions))
#: The options only a serving-engine plan reads.
ENGINE_KEYS: tuple[str, ...] = ("engine_version", "concurrency", "tensor_parallel_size", "pipeline_parallel_size",
                                "gpu_memory_utilization", "kv_cache_dtype", "quantization", "max_num_seqs",
                                "max_num_batched_tokens", "enforce_eager")
SOURCE_KEYS: tuple[str, ...] = tuple(f.name for f in fields(SourceOptions))
#: Every keyword `fitplan.plan()`, `fitplan.load()` and the CLI take for planning.
OPTION_KEYS: tuple[str, ...] = PLAN_KEYS + SOURCE_KEYS


def engine_release(engine: str, runs: str | None) -> str:
    """The mirrored release a plan for `engine` follows when the user runs `runs` (`fitplan.versions.engine_mirror`),
    or an `OptionError` naming `engine_version`."""
    try:
        return engine_mirror(engine, runs)
    except ValueError as bad:
        raise OptionError(f"{subject('engine_version')}: {bad}", option="engine_version") from None


def env_var(name: str) -> str | None:
    """The environment variable for option `name` (`FITPLAN_CONTEXT`), or None."""
    env = fields_by_name()[name].metadata["env"]
    return f"FITPLAN_{name.upper()}" if env == "" else env


def flag(name: str) -> str:
    """The CLI flag of option `name`: `min_precision` -> `--min-precision`."""
    return flag_of(name)
