#!/usr/bin/env python
"""Side-by-side benchmark: videodiff against diffusers' AnimateDiffPipeline on identical weights.

Same random weights, initial noise and scheduler for both; the outputs are compared
(they must match within the parity tolerance) and the timings printed. The first call
is included in the timing: no warm-up is hidden.

    python scripts/bench.py --preset tiny
    python scripts/bench.py --preset cpu-small          # SD1.5 layout at widths (64,128,256,256), 256x256
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

PRESETS = {
    # name: model layout, render settings
    "tiny": dict(
        model=dict(block_out_channels=(32, 64), vae_channels=(32, 64), cross_attention_dim=32),
        render=dict(num_frames=16, height=64, width=64, num_inference_steps=10),
    ),
    "cpu-small": dict(
        model=dict(
            block_out_channels=(64, 128, 256, 256),
            vae_channels=(64, 128, 256, 256),
            cross_attention_dim=768,
            attention_head_dim=8,
            motion_heads=8,
        ),
        render=dict(num_frames=16, height=256, width=256, num_inference_steps=10),
    ),
}


def build(preset: str, folder: Path) -> tuple[Path, Path]:
    from videodiff.tiny import build_tiny_model, build_tiny_motion_adapter

    cfg = PRESETS[preset]["model"]
    model, motion = folder / "model", folder / "motion"
    if not (model / "model_index.json").exists():
        build_tiny_model(model, **cfg)
        build_tiny_motion_adapter(
            motion, block_out_channels=cfg["block_out_channels"], motion_heads=cfg.get("motion_heads", 4)
        )
    return model, motion


def run_diffusers(model: Path, motion: Path, scheduler, render: dict, seed: int, guidance: float):
    from videodiff.tiny import diffusers_reference

    pipe = diffusers_reference(model, motion, scheduler)
    marks = []
    start = time.perf_counter()

    def on_step(p, i, t, kwargs):
        marks.append(time.perf_counter())
        return {}

    out = pipe(
        "a red circle moving right",
        guidance_scale=guidance,
        generator=torch.Generator("cpu").manual_seed(seed),
        output_type="np",
        callback_on_step_end=on_step,
        **render,
    ).frames[0]
    total = time.perf_counter() - start
    return (out * 255).round().astype(np.uint8), total, marks, start


def run_videodiff(model: Path, motion: Path, render: dict, seed: int, guidance: float):
    from videodiff import load_pipeline, sampling

    pipe = load_pipeline(str(model), str(motion), device="cpu")
    marks = []
    real = sampling.guided

    def timed(*args):  # called once per step, after the U-Net
        marks.append(time.perf_counter())
        return real(*args)

    sampling.guided = timed
    try:
        start = time.perf_counter()
        result = pipe("a red circle moving right", guidance_scale=guidance, seed=seed, **render)
        total = time.perf_counter() - start
    finally:
        sampling.guided = real
    return result.frames, total, marks, start


def per_step(marks: list[float], start: float) -> float:
    return (marks[-1] - start) / len(marks) if marks else float("nan")


def measure(side: str, args, model: Path, motion: Path, render: dict) -> dict:
    """One pipeline's frames and timings, in this process."""
    from diffusers import DDIMScheduler

    from videodiff.schedulers import make_scheduler

    if side == "diffusers":
        scheduler = make_scheduler("ddim", dict(DDIMScheduler.load_config(model / "scheduler")))
        frames, total, marks, start = run_diffusers(model, motion, scheduler, render, args.seed, args.guidance)
    else:
        frames, total, marks, start = run_videodiff(model, motion, render, args.seed, args.guidance)
    return {"frames": frames, "s_per_step": per_step(marks, start), "total_s": total}


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
            "--only",
            side,
            "--side-out",
            str(out),
        ]
        if args.steps:
            cmd += ["--steps", str(args.steps)]
        if args.frames:
            cmd += ["--frames", str(args.frames)]
        subprocess.run(cmd, check=True)
        data = np.load(out)
        return {"frames": data["frames"], "s_per_step": float(data["s_per_step"]), "total_s": float(data["total_s"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    parser.add_argument("--steps", type=int, help="override the preset's denoising steps")
    parser.add_argument("--frames", type=int, help="override the preset's frame count")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--guidance", type=float, default=7.5)
    parser.add_argument("--repeat", type=int, default=1, help="alternate the two sides this many times each")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "videodiff-bench")
    parser.add_argument("--json", type=Path, help="also write the results here")
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
    model, motion = build(args.preset, args.cache / args.preset)
    if args.only:  # a child process: measure one side and hand the result back
        result = measure(args.only, args, model, motion, render)
        np.savez(args.side_out, **result)
        return

    runs = {"diffusers": [], "videodiff": []}
    for i in range(args.repeat):  # alternate which side starts, so drift on the machine hits both
        for side in ("diffusers", "videodiff") if i % 2 == 0 else ("videodiff", "diffusers"):
            runs[side].append(in_subprocess(side, args))
    diff = int(np.abs(runs["videodiff"][0]["frames"].astype(int) - runs["diffusers"][0]["frames"].astype(int)).max())
    best = {side: min(r["s_per_step"] for r in rs) for side, rs in runs.items()}
    results = {
        "preset": args.preset,
        "render": render,
        "guidance": args.guidance,
        "repeat": args.repeat,
        "machine": f"{platform.machine()}, {os.cpu_count()} cpus, torch {torch.__version__} threads "
        f"{torch.get_num_threads()}",
        "each side in a fresh process, first call included": True,
        "diffusers_s_per_step": [round(r["s_per_step"], 3) for r in runs["diffusers"]],
        "videodiff_s_per_step": [round(r["s_per_step"], 3) for r in runs["videodiff"]],
        "diffusers_total_s": [round(r["total_s"], 2) for r in runs["diffusers"]],
        "videodiff_total_s": [round(r["total_s"], 2) for r in runs["videodiff"]],
        "speedup_per_step_best_of_runs": round(best["diffusers"] / best["videodiff"], 3),
        "max_pixel_diff": diff,
    }
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    if diff > 2:
        raise SystemExit(f"outputs differ by {diff}/255 (tolerance 2/255)")


if __name__ == "__main__":
    main()
