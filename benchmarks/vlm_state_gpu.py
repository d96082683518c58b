"""Vision-language and hybrid/state-space models on a real GPU: fitplan's bf16 plan against the peak.

    python benchmarks/vlm_state_gpu.py run --out FILE [--cases NAME,...] [--timeout 150]
    python benchmarks/vlm_state_gpu.py report FILE...

Each case runs in a fresh process: the model's config (a catalogue entry, or transformers' own
default config of a type, with the overrides below to fit one 80 GB card) is written to a folder,
fitplan plans that folder for this GPU at bf16 with headroom 0 (`images=` for vision-language
models), then transformers builds the model with random weights on the GPU (`from_config`, the Auto
class of the plan) and generates 16 tokens after a prompt of `context - 16` tokens, the images'
placeholder tokens included, with `pixel_values` for each image at the size fitplan's image-token
count is for. The peak is the allocator's reserved peak during generate (stats reset after the
build, so the random init's temporaries are not counted) plus what the process holds outside the
allocator (NVML's use of the device less torch's reserved bytes, measured after the build). A
ratio planned / peak below 1 is an under-estimate: a plan that would OOM at headroom 0.

Results: docs/models.md ("Measured on a GPU"), with the command that produced them.
"""
from __future__ import annotations

import argparse
import inspect
import json
import tempfile
import time
from pathlib import Path

from children import nvml_used, run_child

HERE = Path(__file__).resolve().parent
NEW_TOKENS = 16

#: name, source (catalogue id, or "type:<model_type>" for transformers' default config), overrides of
#: the config (text_config keys under "text_config"), context, batch, images.
CASES = [
    ("gemma3-4b-8k-2img", "google/gemma-3-4b-it", {}, 8192, 1, 2),
    # LLaVA-1.5-7B's text vocabulary (transformers' default of 32000 has no room for the image token)
    ("llava-7b-4kx2-2img", "type:llava", {"text_config": {"vocab_size": 32064}}, 4096, 2, 2),
    # Qwen2-VL-7B's language model (the default config pairs the 72B text sizes with the 7B merger)
    ("qwen2vl-7b-8k-2img", "type:qwen2_vl", {"text_config": {"hidden_size": 3584, "intermediate_size": 18944,
                                                             "num_hidden_layers": 28, "num_attention_heads": 28,
                                                             "num_key_value_heads": 4, "layer_types": None,
                                                             "max_window_layers": 28}}, 8192, 1, 2),
    ("qwen3next-8L-8kx2", "Qwen/Qwen3-Next-80B-A3B-Instruct", {"num_hidden_layers": 8}, 8192, 2, 0),
    ("lfm2-2.7b-16kx2", "type:lfm2", {}, 16384, 2, 0),
    # without mamba_ssm/causal_conv1d (the GPU image has neither), Mamba layers run transformers' torch
    # path; first at the sizes that asked for 32-256 GiB in one tensor on 5.17, then at sizes it fits
    ("falconh1-8.5b-4kx2", "type:falcon_h1", {}, 4096, 2, 0),
    ("nemotronh-2b-8kx4", "type:nemotron_h", {}, 8192, 4, 0),
    ("zamba2-2.5b-8kx2", "type:zamba2", {}, 8192, 2, 0),
    ("mamba2-7.3b-2k", "type:mamba2", {}, 2048, 1, 0),
    ("falconh1-8.5b-1k", "type:falcon_h1", {}, 1024, 1, 0),
    ("nemotronh-2b-4k", "type:nemotron_h", {}, 4096, 1, 0),
    ("zamba2-2.5b-4kx2", "type:zamba2", {}, 4096, 2, 0),
    ("mamba2-7.3b-1k", "type:mamba2", {}, 1024, 1, 0),
    ("falconmamba-default-4k", "type:falcon_mamba", {"hidden_size": 4096, "num_hidden_layers": 64,
                                                     "intermediate_size": 8192, "vocab_size": 65024}, 4096, 1, 0),
]
CASE_BY_NAME = {c[0]: c for c in CASES}


def _config(source: str, overrides: dict):
    from transformers import CONFIG_MAPPING

    if source.startswith("type:"):
        cfg = CONFIG_MAPPING[source[5:]]().to_dict()
    else:
        from fitplan.model.sources import catalogue_entry

        cfg = dict(catalogue_entry(source).config)
    for key, value in overrides.items():
        if isinstance(value, dict):
            cfg[key] = {**cfg.get(key, {}), **value}
        else:
            cfg[key] = value
    return CONFIG_MAPPING[cfg["model_type"]].from_dict(cfg)


def _inputs(model, inv, context: int, batch: int, images: int, device: str = "cuda"):
    """input_ids (random text, each image's placeholders) and the image tensors the model takes."""
    import torch

    cfg = model.config
    text = cfg.get_text_config(decoder=True)
    vocab = text.vocab_size
    n = context - NEW_TOKENS
    ids = torch.randint(10, min(vocab, 30000), (batch, n), device=device)
    special = {getattr(cfg, k, None) for k in ("image_token_id", "image_token_index", "vision_start_token_id",
                                              "vision_end_token_id", "boi_token_index", "eoi_token_index",
                                              "video_token_id")} - {None}
    for token in special:  # random text must not hold an image placeholder by chance
        ids[ids == token] = 11
    extra = {}
    if images:
        per = inv.image_tokens_per_image
        image_id = getattr(cfg, "image_token_id", None) or getattr(cfg, "image_token_index", None)
        pos = 4
        for _ in range(images):
            start = getattr(cfg, "vision_start_token_id", None)
            if start is not None:  # Qwen2-VL finds an image by the token before it
                ids[:, pos] = start
                pos += 1
            ids[:, pos:pos + per] = image_id
            pos += per + 1
            end = getattr(cfg, "vision_end_token_id", None)
            if end is not None:
                ids[:, pos - 1] = end
        vc = cfg.vision_config
        if hasattr(vc, "spatial_merge_size") and hasattr(vc, "temporal_patch_size"):  # Qwen2-VL: patches + grid
            side = int(round(per ** 0.5)) * vc.spatial_merge_size
            patch = vc.patch_size
            extra["pixel_values"] = torch.randn(images * batch * side * side, 3 * vc.temporal_patch_size * patch * patch,
                                                device=device, dtype=torch.bfloat16)
            extra["image_grid_thw"] = torch.tensor([[1, side, side]] * images * batch, device=device)
        else:
            size = vc.image_size
            extra["pixel_values"] = torch.randn(images * batch, 3, size, size, device=device, dtype=torch.bfloat16)
        if "token_type_ids" in inspect.signature(model.forward).parameters:
            extra["token_type_ids"] = (ids == image_id).long()
    return ids, extra


def cmd_child(args) -> None:
    import torch
    import transformers

    import fitplan
    from fitplan.vocab.classes import AUTO_CLASSES
    from fitplan.versions import lib_versions

    name, source, overrides, context, batch, images = CASE_BY_NAME[args.case]
    res = {"case": name, "source": source, "overrides": overrides, "context": context, "batch": batch,
           "images": images, "versions": lib_versions()}
    folder = tempfile.mkdtemp()
    config = _config(source, overrides)
    config.save_pretrained(folder)
    t0 = time.perf_counter()
    plan = fitplan.plan(folder, context=context, batch=batch, images=images, precision="bf16", headroom=0)
    res["plan_s"] = round(time.perf_counter() - t0, 1)
    inv = plan.inventory
    est = plan.decision.estimate if plan.decision else next(d.estimate for d in plan.choice.decisions)
    res.update(auto_class=inv.auto_class, architecture=inv.architecture, parameters=inv.parameters,
               image_tokens_per_image=inv.image_tokens_per_image, tokens=plan.workload.context,
               planned=est.to_dict(), fits=plan.fits, notes=plan.notes)
    cls = getattr(transformers, AUTO_CLASSES[inv.auto_class])
    torch.backends.cudnn.enabled = False  # CLIP's patch conv hit CUDNN_STATUS_INTERNAL_ERROR on the image
    torch.cuda.init()
    stage = "build"
    try:
        with torch.device("cuda"):
            model = cls.from_config(config, dtype=torch.bfloat16).eval()
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        res["weights_allocated"] = torch.cuda.memory_allocated()
        res["outside_allocator"] = nvml_used() - torch.cuda.memory_reserved() - args.idle_used
        torch.cuda.reset_peak_memory_stats()
        stage = "generate"
        ids, extra = _inputs(model, inv, context, batch, images)
        t1 = time.perf_counter()
        with torch.inference_mode():
            model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW_TOKENS,
                           min_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=0, **extra)
        torch.cuda.synchronize()
        res["generate_s"] = round(time.perf_counter() - t1, 1)
        res["peak_reserved"] = torch.cuda.max_memory_reserved()
        res["peak_allocated"] = torch.cuda.max_memory_allocated()
        res["peak"] = res["peak_reserved"] + res["outside_allocator"]
        res["ratio"] = round(est.total_bytes / res["peak"], 4)
        res["ran"] = True
    except Exception as exc:  # noqa: BLE001 - recorded, the run goes on with the next case
        res.update(ran=False, stage=stage, error=f"{type(exc).__name__}: {' '.join(str(exc).split())[:400]}")
    print("RESULT " + json.dumps(res, default=str), flush=True)


def cmd_run(args) -> None:
    names = [c[0] for c in CASES] if args.cases == "all" else args.cases.split(",")
    idle = nvml_used()
    for name in names:
        row = run_child([__file__, "child", "--case", name, "--idle-used", str(idle)], {"case": name},
                        timeout=args.timeout, out=args.out)
        print(summary(row), flush=True)


def summary(r: dict) -> str:
    if not r.get("ran"):
        return f"{r['case']:22} did not run: {r.get('error', '')[:200]}"
    g = 1 << 30
    return (f"{r['case']:22} planned {r['planned']['total_bytes'] / g:6.2f} GiB  peak {r['peak'] / g:6.2f} GiB  "
            f"planned/peak {r['ratio']:.3f}  (kv {r['planned']['kv_cache_bytes'] / g:.2f}, "
            f"act {r['planned']['activation_bytes'] / g:.2f} GiB; {r['tokens']} tokens)")


def cmd_report(args) -> None:
    for path in args.files:
        for line in Path(path).read_text().splitlines():
            if line.strip():
                print(summary(json.loads(line)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--out", required=True)
    r.add_argument("--cases", default="all")
    r.add_argument("--timeout", type=float, default=150)
    c = sub.add_parser("child")
    c.add_argument("--case", required=True)
    c.add_argument("--idle-used", type=int, default=0)
    p = sub.add_parser("report")
    p.add_argument("files", nargs="+")
    args = ap.parse_args()
    {"run": cmd_run, "child": cmd_child, "report": cmd_report}[args.cmd](args)


if __name__ == "__main__":
    main()
