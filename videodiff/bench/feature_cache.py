"""Feature caching (``cache=N``) on the built-in shapes model: render seconds per N, interleaved in one process.

One model load and one warm-up render, then ``rounds`` rounds; each round renders every prompt once at
every N (the order of the Ns reversed every other round, so drift on a shared machine hits them all).
Reports the median render time per N (loading excluded: the model is loaded once), its speed-up over the
first N, and the mean absolute frame difference from the first N's videos (0-255).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

PROMPTS = ("a red circle moving right", "a blue square moving up", "a green triangle moving left")


def run_cache_bench(
    every: Sequence[int], rounds: int = 3, seed: int = 0, dtypes: Sequence[str] = (), motion_module: str | None = None
) -> dict[str, Any]:
    """Time every N in ``every`` (1: uncached) on the built-in model, and the uncached render in each of
    ``dtypes`` (e.g. ``bf16``: a second load in that dtype, in the same rotation), with the built-in model's own
    motion modules or ``motion_module`` (``shapes-teacher``); the results as a dict."""
    from videodiff.pipelines import load_pipeline

    pipe = load_pipeline(None, motion_module, device="cpu")
    lossy = {dtype: load_pipeline(None, motion_module, device="cpu", dtype=dtype) for dtype in dtypes}
    for each in (pipe, *lossy.values()):  # a warm-up per loaded model: oneDNN's kernels, the heap
        each(PROMPTS[0], seed=seed)
    variants: list[tuple[str, Any, dict[str, Any]]] = [(f"cache_{n}", pipe, {"cache": n}) for n in every]
    variants += [(f"dtype_{dtype}", each, {}) for dtype, each in lossy.items()]
    seconds: dict[str, list[float]] = {label: [] for label, _, _ in variants}
    frames = {}
    for r in range(rounds):
        for label, each, kw in variants if r % 2 == 0 else variants[::-1]:
            for prompt in PROMPTS:
                start = time.perf_counter()
                out = each(prompt, seed=seed, **kw).frames
                seconds[label].append(time.perf_counter() - start)
                frames[label, prompt] = out
    base = variants[0][0]
    results: dict[str, Any] = {"renders_per_variant": rounds * len(PROMPTS), "prompts": PROMPTS, "seed": seed}
    for label, _, _ in variants:
        median = statistics.median(seconds[label])
        diff = np.mean([np.abs(frames[label, p].astype(int) - frames[base, p]).mean() for p in PROMPTS])
        results[label] = {
            "median_s": round(median, 3),
            "all_s": [round(s, 2) for s in seconds[label]],
            "speedup": round(statistics.median(seconds[base]) / median, 3),
            "frame_diff_from_first": round(float(diff), 2),
        }
    return results
