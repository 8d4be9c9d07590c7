"""videodiff against diffusers' ``AnimateDiffPipeline`` on identical weights (``videodiff bench diffusers``).

Same random weights, initial noise and scheduler for both; the outputs are compared (they must match within
the parity tolerance) and the timings reported. The first call is included in the timing: no warm-up is hidden.

A preset's ``sampler`` (scheduler, spacing) and ``guidance`` are given to each side its own way: videodiff's
settings, and diffusers' scheduler configured as the model cards do (``EulerDiscreteScheduler.from_config(...,
timestep_spacing="trailing", beta_schedule="linear")``, ``LCMScheduler.from_config(..., beta_schedule="linear")``).
Random weights: these presets measure speed, not what a distilled model would draw.

``feature_cache`` also runs videodiff with feature caching (``cache=N``: the deep U-Net blocks on every N-th
step only) in fresh processes of their own, after each uncached pair, and reports their times, speed-up over
uncached videodiff and pixel difference from it (diffusers has no DeepCache for ``UNetMotionModel``: the
comparison is against our own uncached path).

Each side runs in a fresh process (``python -m videodiff.bench.parity``). Peak memory:
``max_memory_allocated`` on GPU; on CPU a sampling thread's highest RSS above the process's RSS before the
render. On GPU the U-Net and VAE FLOPs (counted once with torch's FlopCounterMode) give the fraction of the
device's peak reached (``peak_tflops``, default 989 for H100/H200 dense fp16/bf16).

Half-precision tolerance: fp16/bf16 outputs of two implementations that order their sums differently drift
apart over 25 steps; ``tolerance`` (default 2/255 in fp32, 8/255 in half precision) bounds the largest pixel
difference, and the mean difference is reported.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from videodiff.bench import BENCH_CACHE
from videodiff.bench.measure import PeakMemory, count_flops

# SD1.5's attention layout: CLIP ViT-L context, 8 heads in spatial and temporal attention
SD15_ATTENTION = dict(cross_attention_dim=768, attention_head_dim=8, motion_heads=8)

VARIANTS_GPU = ("diffusers-compile", "diffusers-xformers", "videodiff-xformers")  # gpu-sd15's further sides

PRESETS = {
    # name: model layout, render settings
    "tiny": dict(
        model=dict(block_out_channels=(32, 64), vae_channels=(32, 64), cross_attention_dim=32),
        render=dict(num_frames=16, height=64, width=64, num_inference_steps=10),
    ),
    "cpu-small": dict(
        model=dict(block_out_channels=(64, 128, 256, 256), vae_channels=(64, 128, 256, 256), **SD15_ATTENTION),
        render=dict(num_frames=16, height=256, width=256, num_inference_steps=10),
    ),
    # few-step sampling (issue 18) on tiny's and cpu-small's random weights ("models": whose folder): speed only
    "tiny-lightning": dict(
        models="tiny",
        render=dict(num_frames=16, height=64, width=64, num_inference_steps=4),
        sampler=dict(scheduler="euler", timestep_spacing="trailing"),
        guidance=1.0,
    ),
    "tiny-lcm": dict(
        models="tiny",
        render=dict(num_frames=16, height=64, width=64, num_inference_steps=4),
        sampler=dict(scheduler="lcm"),
        guidance=2.0,
    ),
    "cpu-small-lightning": dict(
        models="cpu-small",
        render=dict(num_frames=16, height=256, width=256, num_inference_steps=4),
        sampler=dict(scheduler="euler", timestep_spacing="trailing"),
        guidance=1.0,
    ),
    "cpu-small-lcm": dict(
        models="cpu-small",
        render=dict(num_frames=16, height=256, width=256, num_inference_steps=4),
        sampler=dict(scheduler="lcm"),
        guidance=2.0,
    ),
    "gpu-sd15": dict(
        model=dict(
            block_out_channels=(320, 640, 1280, 1280),
            vae_channels=(128, 256, 512, 512),
            text_layers=12,
            **SD15_ATTENTION,
        ),
        render=dict(num_frames=16, height=512, width=512, num_inference_steps=25),
        device="cuda",
        dtype="fp16",
        variants=VARIANTS_GPU,
    ),
}


def build(preset: str, folder: Path) -> tuple[Path, Path]:
    from videodiff.tiny import build_tiny_model, build_tiny_motion_adapter

    preset = PRESETS[preset].get("models", preset)  # a sampling preset on another preset's weights
    cfg = PRESETS[preset]["model"]
    folder = folder.parent / preset
    model, motion = folder / "model", folder / "motion"
    if not (model / "model_index.json").exists():
        build_tiny_model(model, **cfg)
        build_tiny_motion_adapter(
            motion, block_out_channels=cfg["block_out_channels"], motion_heads=cfg.get("motion_heads", 4)
        )
    return model, motion


DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def run_diffusers(
    model: Path,
    motion: Path,
    scheduler,
    render: dict,
    seed: int,
    guidance: float,
    device: str = "cpu",
    dtype: str = "fp32",
    tuned: bool = False,
    renders: int = 1,
    variant: str = "",
):
    from videodiff.tiny import diffusers_reference

    loading = time.perf_counter()
    pipe = diffusers_reference(model, motion, scheduler).to(device, DTYPES[dtype])
    if "xformers" in variant:
        pipe.enable_xformers_memory_efficient_attention()
    if "compile" in variant:  # as diffusers' docs show it; compiled on the first call (timed)
        pipe.unet = torch.compile(pipe.unet)
    load_s = time.perf_counter() - loading
    extra = {}
    if tuned and device == "cpu":  # videodiff's CPU heap policy and VAE chunk, given to diffusers too
        from videodiff import heap, vae

        heap.keep_freed()
        extra["decode_chunk_size"] = vae.default_chunk(device)
    marks = []

    def on_step(p, i, t, kwargs):
        sync(device)
        marks.append(time.perf_counter())
        return {}

    def once():
        return pipe(
            "a red circle moving right",
            guidance_scale=guidance,
            generator=torch.Generator("cpu").manual_seed(seed),
            output_type="np",
            callback_on_step_end=on_step,
            **render,
            **extra,
        ).frames[0]

    frames, *timings = timed_renders(once, renders, marks)
    return ((frames * 255).round().astype(np.uint8), *timings, load_s)


def diffusers_scheduler(sampler: dict, config: dict):
    """The scheduler diffusers' users configure for ``sampler`` (a preset's), as the model cards write it."""
    from diffusers import DDIMScheduler, EulerDiscreteScheduler, LCMScheduler

    from videodiff.schedulers import make_scheduler

    name, spacing = sampler.get("scheduler", "ddim"), sampler.get("timestep_spacing", "linspace")
    if name == "euler":  # AnimateDiff-Lightning's card
        return EulerDiscreteScheduler.from_config(config, timestep_spacing=spacing, beta_schedule="linear")
    if name == "lcm":  # AnimateLCM's card
        return LCMScheduler.from_config(config, beta_schedule="linear")
    return make_scheduler(name, dict(DDIMScheduler.from_config(config).config), spacing)


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} cpus, torch {torch.__version__} threads {torch.get_num_threads()}"


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run_videodiff(
    model: Path,
    motion: Path,
    render: dict,
    seed: int,
    guidance: float,
    device: str = "cpu",
    dtype: str = "fp32",
    sampler: dict | None = None,
    cache: int = 1,
    renders: int = 1,
    variant: str = "",
):
    from videodiff.pipelines import load_pipeline

    loading = time.perf_counter()
    pipe = load_pipeline(str(model), str(motion), device=device, dtype=dtype)
    if "xformers" in variant:
        pipe.unet.set_attention_backend("xformers")
    load_s = time.perf_counter() - loading
    marks = []

    def timed(*args):  # after every scheduler step, as diffusers' callback_on_step_end
        sync(device)
        marks.append(time.perf_counter())

    def once():
        return pipe(
            "a red circle moving right",
            guidance_scale=guidance,
            seed=seed,
            on_step=timed,
            cache=cache,
            **render,
            **(sampler or {}),
        ).frames

    return (*timed_renders(once, renders, marks), load_s)


def timed_renders(once, renders: int, marks: list[float]):
    """``renders`` calls of ``once`` in this process: the first one's frames, step marks and start (the render
    timed per step), and every render's seconds."""
    totals, first = [], None
    for _ in range(renders):
        marks.clear()
        start = time.perf_counter()
        frames = once()
        totals.append(time.perf_counter() - start)
        if first is None:
            first = (frames, list(marks), start)
    return first[0], totals, first[1], first[2]


def per_step(marks: list[float], start: float) -> float:
    return (marks[-1] - start) / len(marks) if marks else float("nan")


def measure(side: str, args, model: Path, motion: Path, render: dict) -> dict:
    """One pipeline's frames, timings and peak memory, in this process."""
    from diffusers import DDIMScheduler

    # import both libraries' code first: module imports are not the pipelines' working memory
    import videodiff.pipelines  # noqa: F401
    import videodiff.weights.models  # noqa: F401
    import videodiff.weights.motion_formats  # noqa: F401
    from videodiff.schedulers import make_scheduler
    from videodiff.tiny import diffusers_reference  # noqa: F401

    side, _, variant = side.partition("-")  # "diffusers-compile": diffusers with a variant (VARIANTS)
    with PeakMemory(args.device) as memory:
        if side == "diffusers":
            sampler = PRESETS[args.preset].get("sampler")
            config = dict(DDIMScheduler.load_config(model / "scheduler"))
            scheduler = diffusers_scheduler(sampler, config) if sampler else make_scheduler("ddim", config)
            frames, totals, marks, start, load_s = run_diffusers(
                model,
                motion,
                scheduler,
                render,
                args.seed,
                args.guidance,
                args.device,
                args.dtype,
                args.diffusers_tuned,
                args.renders,
                variant,
            )
        else:
            frames, totals, marks, start, load_s = run_videodiff(
                model,
                motion,
                render,
                args.seed,
                args.guidance,
                args.device,
                args.dtype,
                PRESETS[args.preset].get("sampler"),
                args.cache_every,
                args.renders,
                variant,
            )
    return {
        "frames": frames,
        "s_per_step": per_step(marks, start),
        "total_s": totals[0],
        "repeat_s": np.array(totals[1:]),
        "load_s": load_s,
        "peak_bytes": memory.peak,
    }


def in_subprocess(side: str, args: argparse.Namespace) -> dict:
    """Run one side in a fresh process: no warm caches or allocations shared with the other side."""
    import subprocess

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "side.npz"
        given = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
        cmd = [sys.executable, "-m", "videodiff.bench.parity", side, str(out), json.dumps(given)]
        env = dict(os.environ)
        if args.live_memory:  # glibc returns every freed block of 128 KiB or more at once: RSS follows live tensors
            env["MALLOC_MMAP_THRESHOLD_"] = "131072"
            env["VIDEODIFF_HEAP"] = "system"  # videodiff's own heap policy would override it
        subprocess.run(cmd, check=True, env=env)
        data = np.load(out)
        return {k: data[k] if k in ("frames", "repeat_s") else float(data[k]) for k in data.files}


def quiet_libraries() -> None:
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    dlog.set_verbosity_error(), tlog.set_verbosity_error(), dlog.disable_progress_bar(), tlog.disable_progress_bar()


def render_of(args: argparse.Namespace) -> dict:
    """The preset's render settings with ``steps`` and ``frames`` overrides."""
    render = dict(PRESETS[args.preset]["render"])
    if args.steps:
        render["num_inference_steps"] = args.steps
    if args.frames:
        render["num_frames"] = args.frames
    return render


def run_parity(
    preset: str = "tiny",
    steps: int | None = None,
    frames: int | None = None,
    seed: int = 0,
    guidance: float | None = None,
    repeat: int = 1,
    cache: Path = BENCH_CACHE,
    device: str | None = None,
    dtype: str | None = None,
    peak_tflops: float = 989.0,
    live_memory: bool = False,
    diffusers_tuned: bool = False,
    lossy_dtype: str | None = None,
    feature_cache: tuple[int, ...] = (),
    renders: int = 1,
    variants: tuple[str, ...] | None = None,
) -> dict[str, Any]:
    """Both sides ``repeat`` times each (alternating which starts), each in a fresh process; the results.

    ``variants`` (names from :data:`VARIANTS`; None: the preset's) run as further sides in the same rotation; those
    that cannot run here (xformers not installed, or not on CUDA) are listed under ``"skipped_variants"``.

    ``results["max_pixel_diff"]`` is to be checked against :func:`tolerance_of` by the caller.
    """
    args = argparse.Namespace(
        preset=preset,
        steps=steps,
        frames=frames,
        seed=seed,
        guidance=PRESETS[preset].get("guidance", 7.5) if guidance is None else guidance,
        repeat=repeat,
        cache=Path(cache),
        device=device or PRESETS[preset].get("device", "cpu"),
        dtype=dtype or PRESETS[preset].get("dtype", "fp32"),
        live_memory=live_memory,
        diffusers_tuned=diffusers_tuned,
        cache_every=1,
        renders=renders,
    )
    quiet_libraries()
    render = render_of(args)
    model, motion = build(args.preset, args.cache / args.preset)
    wanted = PRESETS[preset].get("variants", ()) if variants is None else variants
    usable, skipped = runnable_variants(wanted, args.device)
    sides = ("diffusers", "videodiff", *usable)
    runs: dict[str, list[dict]] = {side: [] for side in sides}
    cached: dict[int, list[dict]] = {n: [] for n in feature_cache}
    for i in range(args.repeat):  # alternate the order, so drift on the machine hits every side
        for side in sides if i % 2 == 0 else sides[::-1]:
            runs[side].append(in_subprocess(side, args))
        for n in feature_cache if i % 2 == 0 else feature_cache[::-1]:
            cached[n].append(in_subprocess("videodiff", argparse.Namespace(**{**vars(args), "cache_every": n})))
    delta = np.abs(runs["videodiff"][0]["frames"].astype(int) - runs["diffusers"][0]["frames"].astype(int))
    diff = int(delta.max())
    best = {side: min(r["s_per_step"] for r in rs) for side, rs in runs.items()}
    results: dict[str, Any] = {
        "preset": args.preset,
        "render": render,
        "guidance": args.guidance,
        "repeat": args.repeat,
        "device": args.device,
        "dtype": args.dtype,
        "machine": torch.cuda.get_device_name() if args.device.startswith("cuda") else machine(),
        "each side in a fresh process, first call included": True,
        "diffusers_tuned": args.diffusers_tuned,
        "sampler": PRESETS[args.preset].get("sampler", {"scheduler": "ddim"}),
        "sides": list(sides),
        "skipped_variants": skipped,
    }
    for side in sides:
        results[f"{side}_s_per_step"] = [round(r["s_per_step"], 3) for r in runs[side]]
        results[f"{side}_total_s"] = [round(r["total_s"], 2) for r in runs[side]]
        results[f"{side}_peak_mib"] = [round(r["peak_bytes"] / 2**20) for r in runs[side]]
        results[f"{side}_load_s"] = [round(r["load_s"], 2) for r in runs[side]]
        results[f"{side}_total_median_s"] = round(float(np.median([r["total_s"] for r in runs[side]])), 2)
        if args.renders > 1:
            results[f"{side}_repeat_s"] = [[round(float(x), 2) for x in r["repeat_s"]] for r in runs[side]]
            repeated = [x for r in runs[side] for x in r["repeat_s"]]
            results[f"{side}_repeat_median_s"] = round(float(np.median(repeated)), 2)
        moved = np.abs(runs[side][0]["frames"].astype(int) - runs["diffusers"][0]["frames"].astype(int))
        results[f"{side}_max_pixel_diff"] = int(moved.max())
    results["speedup_per_step_best_of_runs"] = round(best["diffusers"] / best["videodiff"], 3)
    fastest = {side: min(r["total_s"] for r in rs) for side, rs in runs.items()}
    results["speedup_end_to_end_best_of_runs"] = round(fastest["diffusers"] / fastest["videodiff"], 3)
    results["max_pixel_diff"], results["mean_pixel_diff"] = diff, round(float(delta.mean()), 4)
    uncached = min(r["total_s"] for r in runs["videodiff"])
    for n, rs in cached.items():  # feature caching: against uncached videodiff, in the same process layout
        moved = np.abs(rs[0]["frames"].astype(int) - runs["videodiff"][0]["frames"].astype(int))
        results[f"videodiff_cache_{n}"] = {
            "s_per_step": [round(r["s_per_step"], 3) for r in rs],
            "total_s": [round(r["total_s"], 2) for r in rs],
            "peak_mib": [round(r["peak_bytes"] / 2**20) for r in rs],
            "speedup_end_to_end_over_uncached_best_of_runs": round(uncached / min(r["total_s"] for r in rs), 3),
            "pixel_diff_from_uncached": {"max": int(moved.max()), "mean": round(float(moved.mean()), 3)},
        }
    if lossy_dtype:  # an opt-in lower precision: how much faster, and how far its frames move
        lossy = in_subprocess("videodiff", argparse.Namespace(**{**vars(args), "dtype": lossy_dtype}))
        moved = np.abs(lossy["frames"].astype(int) - runs["diffusers"][0]["frames"].astype(int))
        results[f"videodiff_{lossy_dtype}"] = {
            "s_per_step": round(lossy["s_per_step"], 3),
            "total_s": round(lossy["total_s"], 2),
            "peak_mib": round(lossy["peak_bytes"] / 2**20),
            "speedup_end_to_end_over_diffusers": round(fastest["diffusers"] / lossy["total_s"], 3),
            "pixel_diff_from_diffusers": {
                "max": int(moved.max()),
                "mean": round(float(moved.mean()), 3),
                "p99": float(np.percentile(moved, 99)),
            },
        }
    if args.device.startswith("cuda"):
        flops = count_flops(model, motion, render, args.device, args.dtype, 2 if args.guidance > 1 else 1)
        steps_run = render["num_inference_steps"]
        for side in sides:
            seconds = min(r["total_s"] for r in runs[side])
            work = flops["unet_tflop_per_step"] * steps_run + flops["vae_tflop"]
            results[f"{side}_fraction_of_peak"] = round(work / seconds / peak_tflops, 3)
        results.update({k: round(v, 2) for k, v in flops.items()})
    return results


# further sides: a library with a variant. diffusers' own speed-ups as its docs show them (torch.compile of the
# U-Net; xformers' attention), and videodiff with xformers' attention.
VARIANTS = ("diffusers-compile", "diffusers-xformers", "videodiff-xformers")


def runnable_variants(names: tuple[str, ...], device: str) -> tuple[tuple[str, ...], dict[str, str]]:
    """The variants among ``names`` that can run on ``device`` here, and why each other one cannot."""
    import importlib.util

    usable, skipped = [], {}
    for name in names:
        if name not in VARIANTS:
            raise ValueError(f"unknown variant {name!r}; choose from {', '.join(VARIANTS)}")
        if "xformers" in name and not device.startswith("cuda"):
            skipped[name] = "xformers runs on CUDA only"
        elif "xformers" in name and importlib.util.find_spec("xformers") is None:
            skipped[name] = "xformers is not installed"
        else:
            usable.append(name)
    return tuple(usable), skipped


def tolerance_of(dtype: str, tolerance: int | None = None) -> int:
    """The largest allowed pixel difference: ``tolerance`` if given, else 2 in fp32 and 8 in half precision."""
    return tolerance if tolerance is not None else (2 if dtype == "fp32" else 8)


def side_main(argv: list[str]) -> None:
    """A child process: measure one side (``argv``: side, output .npz, the options as JSON) and save it."""
    side, out, given = argv
    args = argparse.Namespace(**json.loads(given))
    args.cache = Path(args.cache)
    quiet_libraries()
    render = render_of(args)
    model, motion = build(args.preset, args.cache / args.preset)
    np.savez(out, **measure(side, args, model, motion, render))


if __name__ == "__main__":
    side_main(sys.argv[1:])
