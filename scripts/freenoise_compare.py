"""Long videos on the same weights: videodiff's sliding windows against diffusers' FreeNoise (issue 16).

The built-in shapes model, 64 frames, windows of 16 overlapping by 4, dpm++ 12 steps, guidance 4, from pure
noise on both sides (``motion_prior 0``: diffusers has no motion prior). diffusers runs ``AnimateDiffPipeline``
with ``enable_free_noise(context_length=16, context_stride=12)`` (its default pyramid weights and shuffled
noise), once as is (the temporal layers windowed, the spatial layers over all frames) and once with
``enable_free_noise_split_inference`` (the spatial layers split too). Each run is its own process (peak RSS
is per process). Scored with the shapes detector::

    python scripts/freenoise_compare.py --seeds 1 2 3 --frames 64
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

WINDOW, OVERLAP, STEPS, GUIDANCE = 16, 4, 12, 4.0


def render(side: str, prompt: str, frames: int, seed: int) -> tuple[np.ndarray, float]:
    import torch

    from videodiff import load_pipeline
    from videodiff.weights.hub import BUILTIN_MODEL

    if side == "videodiff":
        pipe = load_pipeline(device="cpu")
        start = time.perf_counter()
        out = pipe(prompt, num_frames=frames, seed=seed, window=WINDOW, overlap=OVERLAP, steps=STEPS,
                   guidance=GUIDANCE, motion_prior=0.0)
        return np.asarray(out.frames), time.perf_counter() - start
    from diffusers import DPMSolverMultistepScheduler

    from videodiff.schedulers import make_scheduler
    from videodiff.tiny import diffusers_reference

    config = dict(DPMSolverMultistepScheduler.load_config(BUILTIN_MODEL / "scheduler"))
    pipe = diffusers_reference(BUILTIN_MODEL, BUILTIN_MODEL / "motion_adapter", make_scheduler("dpm++", config))
    pipe.enable_free_noise(context_length=WINDOW, context_stride=WINDOW - OVERLAP)
    if side == "diffusers-split":
        pipe.enable_free_noise_split_inference(spatial_split_size=256, temporal_split_size=WINDOW)
    start = time.perf_counter()
    out = pipe(prompt, num_frames=frames, height=64, width=64, num_inference_steps=STEPS, guidance_scale=GUIDANCE,
               generator=torch.Generator().manual_seed(seed), output_type="np")
    frames_np = (np.clip(out.frames[0], 0, 1) * 255).round().astype(np.uint8)
    return frames_np, time.perf_counter() - start


def score(frames: np.ndarray) -> dict:
    from long_checks import changes, objects_per_frame, seam_ratio, stretch_report

    from videodiff.shapes.evaluate import detect

    starts = list(range(0, max(len(frames) - WINDOW, 0) + 1, WINDOW - OVERLAP))
    if starts[-1] + WINDOW < len(frames):
        starts.append(len(frames) - WINDOW)
    windows = [list(range(s, s + WINDOW)) for s in starts]
    whole = detect(frames)
    summary = whole.summary()
    return {
        "presence": summary["present_fraction"],
        "colour": summary["color"],
        "shape": summary["shape"],
        "steady": summary["steady"],
        "directions": [s.get("direction") for s in stretch_report(frames)],
        "seam_ratio": round(seam_ratio(frames, windows), 2),
        "flicker": round(float(changes(frames).mean()), 2),
        "max_objects": int(objects_per_frame(frames).max()),
    }


def child(side: str, prompt: str, frames: int, seed: int) -> None:
    video, seconds = render(side, prompt, frames, seed)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps({"side": side, "seed": seed, "render_s": round(seconds, 1),
                                  "peak_rss_mib": round(peak), **score(video)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--frames", type=int, default=64)
    parser.add_argument("--prompt", default="a red circle moving right")
    parser.add_argument("--sides", nargs="+", default=["videodiff", "diffusers", "diffusers-split"])
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        side, prompt, frames, seed = args.child
        child(side, prompt, int(frames), int(seed))
        return
    for seed in args.seeds:
        for side in args.sides:
            done = subprocess.run([sys.executable, __file__, "--child", side, args.prompt, str(args.frames), str(seed)],
                                  capture_output=True, text=True)
            line = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")]
            print(line[0][7:] if line else json.dumps({"side": side, "seed": seed, "error": done.stderr[-800:]}),
                  flush=True)


if __name__ == "__main__":
    main()
