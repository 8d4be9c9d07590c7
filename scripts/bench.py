#!/usr/bin/env python
"""Side-by-side benchmark: videodiff against diffusers' AnimateDiffPipeline on identical weights.

Same random weights, initial noise and scheduler for both; the outputs are compared
(they must match within the parity tolerance) and the timings printed. The first call
is included in the timing: no warm-up is hidden.

    python scripts/bench.py --preset tiny
    python scripts/bench.py --preset cpu-small --repeat 2   # SD1.5 layout at widths (64,128,256,256), 256x256
    python scripts/bench.py --preset gpu-sd15               # full SD1.5 + v2 motion modules, 512x512, fp16, CUDA
    python scripts/bench.py --preset cpu-small-lightning    # cpu-small sampled as AnimateDiff-Lightning: 4 euler
                                                            # steps, trailing spacing, guidance 1
    python scripts/bench.py --preset cpu-small-lcm          # cpu-small sampled as AnimateLCM: 4 lcm steps, guidance 2

A preset's ``sampler`` (scheduler, spacing) and ``guidance`` are given to each side its own way: videodiff's
settings, and diffusers' scheduler configured as the model cards do (``EulerDiscreteScheduler.from_config(...,
timestep_spacing="trailing", beta_schedule="linear")``, ``LCMScheduler.from_config(..., beta_schedule="linear")``).
Random weights: these presets measure speed, not what a distilled model would draw.

    python scripts/bench.py --preset cpu-small --feature-cache 2 3 5   # also videodiff's --cache N (DeepCache)
    python scripts/bench.py --preset cpu-small --repeat 3 --renders 2   # 3 processes per side, alternating, each
                                                                   # loading once and rendering twice

``--feature-cache N...`` also runs videodiff with feature caching (``--cache N``: the deep U-Net
blocks on every N-th step only) in fresh processes of their own, after each uncached pair, and
reports their times, speed-up over uncached videodiff and pixel difference from it (diffusers has
no DeepCache for ``UNetMotionModel``: the comparison is against our own uncached path).

Each side runs in a fresh process. Peak memory: ``max_memory_allocated`` on GPU; on CPU
a sampling thread's highest RSS above the process's RSS before the render. On GPU the
U-Net and VAE FLOPs (counted once with torch's FlopCounterMode) give the fraction of the
device's peak reached (``--peak-tflops``, default 989 for H100/H200 dense fp16/bf16).

Half-precision tolerance: fp16/bf16 outputs of two implementations that order their sums
differently drift apart over 25 steps; ``--tolerance`` (default 2/255 in fp32, 8/255 in
half precision) bounds the largest pixel difference, and the mean difference is reported.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

# SD1.5's attention layout: CLIP ViT-L context, 8 heads in spatial and temporal attention
SD15_ATTENTION = dict(cross_attention_dim=768, attention_head_dim=8, motion_heads=8)

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
):
    from videodiff.tiny import diffusers_reference

    loading = time.perf_counter()
    pipe = diffusers_reference(model, motion, scheduler).to(device, DTYPES[dtype])
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
):
    from videodiff import load_pipeline

    loading = time.perf_counter()
    pipe = load_pipeline(str(model), str(motion), device=device, dtype=dtype)
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


class PeakMemory:
    """Peak memory of the code inside: ``max_memory_allocated`` on GPU, else the highest RSS a sampling
    thread sees above the RSS before (a process's own peak RSS cannot be reset)."""

    def __init__(self, device: str) -> None:
        self.device, self.peak = device, 0

    def __enter__(self) -> PeakMemory:
        if self.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
            return self
        import threading

        import psutil

        proc = psutil.Process()
        self.base, self._stop = proc.memory_info().rss, threading.Event()

        def sample() -> None:
            while not self._stop.wait(0.01):
                self.peak = max(self.peak, proc.memory_info().rss - self.base)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.startswith("cuda"):
            self.peak = torch.cuda.max_memory_allocated()
        else:
            self._stop.set()
            self._thread.join()


def count_flops(model: Path, motion: Path, render: dict, device: str, dtype: str, batch: int = 2) -> dict:
    """FLOPs of one U-Net call (``batch`` 2: guided) and of the VAE decode of all frames (torch's FlopCounterMode)."""
    from torch.utils.flop_counter import FlopCounterMode

    from videodiff import load_pipeline

    pipe = load_pipeline(str(model), str(motion), device=device, dtype=dtype)
    f, h, w = render["num_frames"], render["height"], render["width"]
    latents = torch.randn(pipe.latent_shape(f, h, w), device=device, dtype=pipe.dtype)
    context = pipe.encode("a red circle moving right")
    with torch.no_grad():
        with FlopCounterMode(display=False) as unet_count:
            pipe.unet(torch.cat([latents] * batch), torch.tensor(500, device=device), torch.cat([context] * batch))
        with FlopCounterMode(display=False) as vae_count:
            from videodiff import vae

            vae.decode(pipe.vae, latents, chunk=f)
    return {"unet_tflop_per_step": unet_count.get_total_flops() / 1e12, "vae_tflop": vae_count.get_total_flops() / 1e12}


def measure(side: str, args, model: Path, motion: Path, render: dict) -> dict:
    """One pipeline's frames, timings and peak memory, in this process."""
    from diffusers import DDIMScheduler

    # import both libraries' code first: module imports are not the pipelines' working memory
    import videodiff.pipelines  # noqa: F401
    import videodiff.weights.models  # noqa: F401
    import videodiff.weights.motion_formats  # noqa: F401
    from videodiff.schedulers import make_scheduler
    from videodiff.tiny import diffusers_reference  # noqa: F401

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
            )
    return {
        "frames": frames,
        "s_per_step": per_step(marks, start),
        "total_s": totals[0],
        "repeat_s": np.array(totals[1:]),
        "load_s": load_s,
        "peak_bytes": memory.peak,
    }


def in_subprocess(side: str, args) -> dict:
    """Run one side in a fresh process: no warm caches or allocations shared with the other side."""
    import subprocess
    import sys

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "side.npz"
        cmd = [
            sys.executable,
            __file__,
            "--preset",
            args.preset,
            "--seed",
            str(args.seed),
            "--guidance",
            str(args.guidance),
            "--cache",
            str(args.cache),
            "--device",
            args.device,
            "--dtype",
            args.dtype,
            "--only",
            side,
            "--side-out",
            str(out),
        ]
        if args.steps:
            cmd += ["--steps", str(args.steps)]
        if args.diffusers_tuned:
            cmd += ["--diffusers-tuned"]
        if args.frames:
            cmd += ["--frames", str(args.frames)]
        if args.cache_every > 1:
            cmd += ["--cache-every", str(args.cache_every)]
        if args.renders > 1:
            cmd += ["--renders", str(args.renders)]
        env = dict(os.environ)
        if args.live_memory:  # glibc returns every freed block of 128 KiB or more at once: RSS follows live tensors
            env["MALLOC_MMAP_THRESHOLD_"] = "131072"
            env["VIDEODIFF_HEAP"] = "system"  # videodiff's own heap policy would override it
        subprocess.run(cmd, check=True, env=env)
        data = np.load(out)
        return {k: data[k] if k in ("frames", "repeat_s") else float(data[k]) for k in data.files}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    parser.add_argument("--steps", type=int, help="override the preset's denoising steps")
    parser.add_argument("--frames", type=int, help="override the preset's frame count")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--guidance", type=float, help="default: the preset's, else 7.5")
    parser.add_argument("--repeat", type=int, default=1, help="alternate the two sides this many times each")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "videodiff-bench")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--device", help="cpu or cuda (default: the preset's)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), help="default: the preset's (fp32 on CPU)")
    parser.add_argument("--tolerance", type=int, help="largest allowed pixel difference (default 2, 8 in fp16/bf16)")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="the GPU's dense fp16/bf16 peak")
    parser.add_argument(
        "--live-memory",
        action="store_true",
        help="CPU: fix glibc's mmap threshold at 128 KiB in both sides, so the RSS peak is the live tensors' peak "
        "rather than what the allocator kept from freed blocks",
    )
    parser.add_argument(
        "--diffusers-tuned",
        action="store_true",
        help="CPU: give diffusers videodiff's heap policy (videodiff.heap) and VAE chunk too, "
        "so the comparison shows what the rest of videodiff gains",
    )
    parser.add_argument(
        "--lossy-dtype",
        choices=sorted(DTYPES),
        help="also run videodiff once in this dtype (e.g. bf16 on a CPU with AVX512-BF16): its time and how far "
        "its frames move from diffusers' (reported, not checked against the tolerance)",
    )
    parser.add_argument(
        "--feature-cache",
        type=int,
        nargs="+",
        default=[],
        metavar="N",
        help="also run videodiff with --cache N (feature caching) for each N: times, speed-up and pixel difference "
        "against uncached videodiff",
    )
    parser.add_argument("--cache-every", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument(
        "--renders",
        type=int,
        default=1,
        help="renders per process: the first is timed as usual, the later ones (same pipeline, same process) "
        "are reported as repeat_s, and the pipeline's load time as load_s",
    )
    parser.add_argument("--only", choices=["diffusers", "videodiff"], help=argparse.SUPPRESS)
    parser.add_argument("--side-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    dlog.set_verbosity_error(), tlog.set_verbosity_error(), dlog.disable_progress_bar(), tlog.disable_progress_bar()
    render = dict(PRESETS[args.preset]["render"])
    if args.steps:
        render["num_inference_steps"] = args.steps
    if args.frames:
        render["num_frames"] = args.frames
    if args.guidance is None:
        args.guidance = PRESETS[args.preset].get("guidance", 7.5)
    args.device = args.device or PRESETS[args.preset].get("device", "cpu")
    args.dtype = args.dtype or PRESETS[args.preset].get("dtype", "fp32")
    tolerance = args.tolerance if args.tolerance is not None else (2 if args.dtype == "fp32" else 8)
    model, motion = build(args.preset, args.cache / args.preset)
    if args.only:  # a child process: measure one side and hand the result back
        result = measure(args.only, args, model, motion, render)
        np.savez(args.side_out, **result)
        return

    runs = {"diffusers": [], "videodiff": []}
    cached = {n: [] for n in args.feature_cache}
    for i in range(args.repeat):  # alternate which side starts, so drift on the machine hits both
        for side in ("diffusers", "videodiff") if i % 2 == 0 else ("videodiff", "diffusers"):
            runs[side].append(in_subprocess(side, args))
        for n in args.feature_cache if i % 2 == 0 else args.feature_cache[::-1]:
            cached[n].append(in_subprocess("videodiff", argparse.Namespace(**{**vars(args), "cache_every": n})))
    delta = np.abs(runs["videodiff"][0]["frames"].astype(int) - runs["diffusers"][0]["frames"].astype(int))
    diff = int(delta.max())
    best = {side: min(r["s_per_step"] for r in rs) for side, rs in runs.items()}
    results = {
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
    }
    for side in ("diffusers", "videodiff"):
        results[f"{side}_s_per_step"] = [round(r["s_per_step"], 3) for r in runs[side]]
        results[f"{side}_total_s"] = [round(r["total_s"], 2) for r in runs[side]]
        results[f"{side}_peak_mib"] = [round(r["peak_bytes"] / 2**20) for r in runs[side]]
        results[f"{side}_load_s"] = [round(r["load_s"], 2) for r in runs[side]]
        if args.renders > 1:
            results[f"{side}_repeat_s"] = [[round(float(x), 2) for x in r["repeat_s"]] for r in runs[side]]
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
    if args.lossy_dtype:  # an opt-in lower precision: how much faster, and how far its frames move
        lossy = in_subprocess("videodiff", argparse.Namespace(**{**vars(args), "dtype": args.lossy_dtype}))
        moved = np.abs(lossy["frames"].astype(int) - runs["diffusers"][0]["frames"].astype(int))
        results[f"videodiff_{args.lossy_dtype}"] = {
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
        steps = render["num_inference_steps"]
        for side in ("diffusers", "videodiff"):
            seconds = min(r["total_s"] for r in runs[side])
            work = flops["unet_tflop_per_step"] * steps + flops["vae_tflop"]
            results[f"{side}_fraction_of_peak"] = round(work / seconds / args.peak_tflops, 3)
        results.update({k: round(v, 2) for k, v in flops.items()})
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    if diff > tolerance:
        raise SystemExit(f"outputs differ by {diff}/255 (tolerance {tolerance}/255)")


if __name__ == "__main__":
    main()
