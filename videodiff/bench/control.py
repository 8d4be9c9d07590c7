"""What control costs: renders with one ControlNet against the same renders without, and a controlled long video.

On a bench preset's random weights (:mod:`videodiff.bench.parity`) and a ControlNet built from its U-Net
(:func:`videodiff.tiny.build_tiny_controlnet`): one pipeline load, one warm-up render, then ``rounds`` rounds of
three renders interleaved (uncontrolled, controlled, controlled at ``long_frames`` frames through sliding windows).
Reports the median seconds of each, the controlled/uncontrolled ratio and the seconds per frame of the long render
over the short controlled one's. Loading is excluded.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image


def _bar_maps(folder: Path, frames: int, height: int, width: int) -> Path:
    """A white bar crossing the picture left to right, one PNG per frame."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(frames):
        picture = np.zeros((height, width, 3), np.uint8)
        x = i * (width * 3 // 4) // max(frames - 1, 1)
        picture[height // 3 : 2 * height // 3, x : x + width // 4] = 255
        Image.fromarray(picture).save(folder / f"{i:04d}.png")
    return folder


def run_control_bench(
    preset: str, cache: Path, *, rounds: int = 1, long_frames: int = 64, steps: int | None = None, seed: int = 0
) -> dict[str, Any]:
    from videodiff.bench.parity import PRESETS, build, machine
    from videodiff.pipelines import load_pipeline
    from videodiff.tiny import build_tiny_controlnet

    model, motion = build(preset, cache / preset)
    controlnet = model.parent / "controlnet"
    if not (controlnet / "config.json").exists():
        build_tiny_controlnet(controlnet, model)
    render = dict(PRESETS[PRESETS[preset].get("models", preset)]["render"])
    if steps is not None:
        render["num_inference_steps"] = steps
    frames, height, width = render["num_frames"], render["height"], render["width"]
    maps = _bar_maps(model.parent / f"maps-{long_frames}x{height}x{width}", long_frames, height, width)
    control = [{"controlnet": str(controlnet), "maps": str(maps)}]
    pipe = load_pipeline(str(model), str(motion), device="cpu")
    runs = {
        "uncontrolled": dict(render),
        "controlled": dict(render, controls=control),
        f"controlled_{long_frames}_frames": dict(render, num_frames=long_frames, controls=control),
    }
    pipe("a red circle moving right", seed=seed, **{**render, "num_inference_steps": 1})  # warm-up
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, kwargs in runs.items():
            start = time.perf_counter()
            pipe("a red circle moving right", seed=seed, **kwargs)
            seconds[name].append(time.perf_counter() - start)
    median = {name: statistics.median(s) for name, s in seconds.items()}
    long_name = f"controlled_{long_frames}_frames"
    return {
        "preset": preset,
        "machine": machine(),
        "render": {**render, "guidance": 7.5},
        "rounds": rounds,
        "seconds": {name: [round(s, 2) for s in v] for name, v in seconds.items()},
        "median_s": {name: round(v, 2) for name, v in median.items()},
        "control_cost": round(median["controlled"] / median["uncontrolled"], 3),
        "long_per_frame_over_short": round((median[long_name] / long_frames) / (median["controlled"] / frames), 3),
    }
