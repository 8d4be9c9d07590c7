"""Time and peak memory of one long render, in this process (``videodiff bench long``).

On the built-in shapes model (with ``motion=(0.6, 0)``, its prior), or on a random-weight preset of
:mod:`videodiff.bench.parity` at its size. Reports frames, windows, render seconds (sampling and decode,
model load excluded) and the process's peak RSS (``resource.getrusage``: the whole process, model load
included), after the load and at the end.
"""

from __future__ import annotations

import resource
import time
from pathlib import Path
from typing import Any

from videodiff.bench import BENCH_CACHE


def run_long_bench(
    frames: int = 64,
    seed: int = 1,
    prompt: str = "a red circle moving right",
    window: int | None = None,
    window_layers: str = "unet",
    steps: int | None = None,
    preset: str | None = None,
    cache: Path = BENCH_CACHE,
) -> dict[str, Any]:
    """One render of ``frames`` frames; the record the command prints."""
    from videodiff.pipelines import load_pipeline

    size = {}
    if preset:
        from videodiff.bench.parity import PRESETS, build

        model, motion = build(preset, Path(cache) / preset)
        pipe = load_pipeline(str(model), str(motion), device="cpu")
        render = PRESETS[preset]["render"]
        size = {"height": render["height"], "width": render["width"]}
        steps = steps or render["num_inference_steps"]
    else:
        pipe = load_pipeline(device="cpu")
    loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    motion_prior = {} if preset else {"motion": (0.6, 0)}  # the built-in model's prior; a random model has none
    layers = {"window": window, "window_layers": window_layers}
    pipe(prompt, num_frames=frames, seed=seed, steps=steps, **layers, **size, **motion_prior)
    seconds = time.perf_counter() - start
    plan = pipe.windows_for(pipe.settings(prompt, num_frames=frames, **layers))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    windows = len(plan.indices()) if plan else 1
    record = {
        "model": preset or "built-in",
        **size,
        "frames": frames,
        "windows": windows,
        "window_layers": window_layers,
        "render_s": round(seconds, 1),
    }
    return {**record, "peak_rss_mib_after_load": round(loaded), "peak_rss_mib": round(peak)}
