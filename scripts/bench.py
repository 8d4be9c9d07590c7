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
    from diffusers import AnimateDiffPipeline, AutoencoderKL, MotionAdapter, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    pipe = AnimateDiffPipeline(
        vae=AutoencoderKL.from_pretrained(model / "vae"),
        text_encoder=CLIPTextModel.from_pretrained(model / "text_encoder"),
        tokenizer=CLIPTokenizer.from_pretrained(model / "tokenizer"),
        unet=UNet2DConditionModel.from_pretrained(model / "unet"),
        motion_adapter=MotionAdapter.from_pretrained(motion),
        scheduler=scheduler,
    )
    pipe.set_progress_bar_config(disable=True)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    parser.add_argument("--steps", type=int, help="override the preset's denoising steps")
    parser.add_argument("--frames", type=int, help="override the preset's frame count")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--guidance", type=float, default=7.5)
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "videodiff-bench")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    dlog.set_verbosity_error(), tlog.set_verbosity_error(), dlog.disable_progress_bar(), tlog.disable_progress_bar()
    from videodiff.io.models import ModelParts  # noqa: F401 - import cost outside the timings
    from videodiff.schedulers import make_scheduler

    render = dict(PRESETS[args.preset]["render"])
    if args.steps:
        render["num_inference_steps"] = args.steps
    if args.frames:
        render["num_frames"] = args.frames
    model, motion = build(args.preset, args.cache / args.preset)
    from diffusers import DDIMScheduler

    scheduler = make_scheduler("ddim", dict(DDIMScheduler.load_config(model / "scheduler")))

    ref, ref_total, ref_marks, ref_start = run_diffusers(model, motion, scheduler, render, args.seed, args.guidance)
    ours, our_total, our_marks, our_start = run_videodiff(model, motion, render, args.seed, args.guidance)
    diff = int(np.abs(ours.astype(int) - ref.astype(int)).max())
    results = {
        "preset": args.preset,
        "render": render,
        "guidance": args.guidance,
        "machine": f"{platform.machine()}, {os.cpu_count()} cpus, torch {torch.__version__} threads "
        f"{torch.get_num_threads()}",
        "diffusers_s_per_step": per_step(ref_marks, ref_start),
        "videodiff_s_per_step": per_step(our_marks, our_start),
        "diffusers_total_s": ref_total,
        "videodiff_total_s": our_total,
        "max_pixel_diff": diff,
    }
    results["speedup_per_step"] = results["diffusers_s_per_step"] / results["videodiff_s_per_step"]
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    if diff > 2:
        raise SystemExit(f"outputs differ by {diff}/255 (tolerance 2/255)")


if __name__ == "__main__":
    main()
