"""Upscaling's memory (``videodiff bench upscale``): peak resident memory of a random-weight Compact upscaler
(Real-ESRGAN's SRVGGNetCompact, PReLU) run tiled over ``frames`` frames of ``size`` x ``size`` pixels.

The step keeps the whole clip's output (uint8, what the writer needs), one frame's float32 accumulator and
weights, and one tile's activations; the report splits the peak into what was resident before the step (torch,
the input frames) and what the step added, beside those three sizes.
"""

from __future__ import annotations

import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


def _peak_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # Linux reports KiB, macOS bytes


def run_upscale_bench(frames: int = 16, size: int = 512, features: int = 64, convs: int = 16, scale: int = 4,
                      tile: int | None = None) -> dict[str, Any]:  # fmt: skip
    """Peak RSS before and after upscaling ``frames`` random frames with a random-weight Compact network."""
    import torch
    from safetensors.torch import save_file

    from videodiff.post.stage import Clip
    from videodiff.post.upscale import OVERLAP, TILE, Upscale
    from videodiff.post.upscalers import Compact

    torch.manual_seed(0)
    clip = Clip(np.random.default_rng(0).integers(0, 256, (frames, size, size, 3), dtype=np.uint8))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "compact.safetensors"
        save_file(Compact(features, convs, scale).state_dict(), str(path))
        step = Upscale(str(path), tile=tile or TILE)
        before = _peak_bytes()
        started = time.perf_counter()
        out = step(clip).frames
        seconds = time.perf_counter() - started
    after = _peak_bytes()
    big = size * scale
    window = (tile or TILE) + 2 * OVERLAP
    return {
        "frames": frames, "size": size, "scale": scale, "features": features, "convs": convs,
        "tile": tile or TILE, "overlap": OVERLAP, "threads": torch.get_num_threads(),
        "output_shape": list(out.shape),
        "peak_rss_before_mib": round(before / 2**20, 1), "peak_rss_after_mib": round(after / 2**20, 1),
        "added_mib": round((after - before) / 2**20, 1),
        "output_mib": round(out.nbytes / 2**20, 1),
        "frame_accumulator_mib": round(big * big * 4 * 4 / 2**20, 1),
        "tile_activation_mib": round(window * window * features * 4 / 2**20, 1),
        "seconds": round(seconds, 1),
    }  # fmt: skip
