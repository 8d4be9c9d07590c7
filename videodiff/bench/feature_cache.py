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


def run_cache_bench(every: Sequence[int], rounds: int = 3, seed: int = 0) -> dict[str, Any]:
    """Time every N in ``every`` (1: uncached) on the built-in model; the results as a dict."""
    from videodiff.pipelines import load_pipeline

    pipe = load_pipeline(device="cpu")
    pipe(PROMPTS[0], seed=seed)  # warm-up: the first render pays for oneDNN's kernels and the heap
    seconds: dict[int, list[float]] = {n: [] for n in every}
    frames = {}
    for r in range(rounds):
        for n in every if r % 2 == 0 else every[::-1]:
            for prompt in PROMPTS:
                start = time.perf_counter()
                out = pipe(prompt, seed=seed, cache=n).frames
                seconds[n].append(time.perf_counter() - start)
                frames[n, prompt] = out
    base = every[0]
    results: dict[str, Any] = {"renders_per_n": rounds * len(PROMPTS), "prompts": PROMPTS, "seed": seed}
    for n in every:
        median = statistics.median(seconds[n])
        diff = np.mean([np.abs(frames[n, p].astype(int) - frames[base, p]).mean() for p in PROMPTS])
        results[f"cache_{n}"] = {
            "median_s": round(median, 3),
            "all_s": [round(s, 2) for s in seconds[n]],
            "speedup": round(statistics.median(seconds[base]) / median, 3),
            "frame_diff_from_first": round(float(diff), 2),
        }
    return results
